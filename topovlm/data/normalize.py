"""Answer normalisation for exact-match scoring.

``normalize_answer`` maps a free-form model output and a gold answer to the same
canonical token, so that exact match is ``normalize_answer(pred) == normalize_answer(gold)``:

* lower-case, strip surrounding whitespace and punctuation;
* drop a leading article or filler ("the", "a", "an", "answer:" ...);
* keep only the first word;
* map number words to digits ("three" -> "3", "zero" -> "0") and strip trailing ".0";
* map British/American spelling variants and common synonyms of the benchmark's words
  ("grey" -> "gray", "circles" -> "circle", "yeah" -> "yes").
"""
from __future__ import annotations

import re

__all__ = ["normalize_answer", "NUMBER_WORDS"]

NUMBER_WORDS: dict[str, str] = {
    "zero": "0", "none": "0",
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11",
    "twelve": "12", "thirteen": "13", "fourteen": "14", "fifteen": "15",
    "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "twenty": "20",
}

_SYNONYMS: dict[str, str] = {
    "grey": "gray",
    "colour": "color",
    "circles": "circle",
    "squares": "square",
    "triangles": "triangle",
    "yeah": "yes",
    "yep": "yes",
    "true": "yes",
    "nope": "no",
    "false": "no",
}

_LEADING_FILLERS = ("answer:", "answer", "the", "a", "an", "it", "is", "it's", "its")
_WORD_RE = re.compile(r"[a-z0-9]+(?:[.,][0-9]+)?")


def normalize_answer(text: str) -> str:
    """Return the canonical single-token form of an answer (possibly ``""``)."""
    if text is None:
        return ""
    s = str(text).strip().lower()
    # cut at the first line break: models sometimes continue with an explanation
    s = s.split("\n", 1)[0]
    words = _WORD_RE.findall(s.replace("’", "'").replace("'s", ""))
    # drop leading fillers such as "the answer is", "a", "it is"
    while len(words) > 1 and words[0] in _LEADING_FILLERS:
        words = words[1:]
    if not words:
        return ""
    w = words[0]
    if re.fullmatch(r"[0-9]+[.,]0+", w):
        w = re.split(r"[.,]", w)[0]
    if re.fullmatch(r"[0-9]+", w):
        w = str(int(w))
    w = NUMBER_WORDS.get(w, w)
    w = _SYNONYMS.get(w, w)
    return w
