"""Shapes: a deterministic synthetic visual-QA benchmark.

Every image is a 64x64 RGB picture of a 4x4 grid of 16-pixel cells on a white
background; 2 to 5 cells hold one object each. An object is one of ``COLOURS``
(red, green, blue, yellow) and one of ``SHAPES`` (circle, square, triangle), and no
two objects in an image share both colour and shape, so "the red circle" always names
exactly one object. Each sample asks one question about its image:

============  ==========  ========================================================  =========
category      domain      example (the answer-format instruction is part of it)     answers
============  ==========  ========================================================  =========
colour        non_math    What color is the circle? Answer with one word.           4 colours
shape         non_math    What shape is the red object? Answer with one word.       3 shapes
spatial       non_math    Is the red circle to the left of the blue square?         yes / no
                          Answer yes or no.
count         math        How many red objects are there? Answer with a number.     0 - 5
arithmetic    math        What is the number of circles plus the number of          0 - 5
                          squares? Answer with a number.
============  ==========  ========================================================  =========

Questions are only asked when they are unambiguous: a colour question names a shape
that occurs exactly once, a shape question a colour that occurs exactly once, and a
spatial question two objects that do not share the column (left/right) or the row
(above/below). Subtraction questions never have a negative answer. Answers are single
normalised tokens (see :func:`topovlm.data.normalize.normalize_answer`).

Categories are assigned round-robin (``CATEGORIES`` order), so every prefix of a split
is balanced; counting and arithmetic form the ``math`` domain, the rest ``non_math``.

Chance levels (``CHANCE``): the accuracy of the best constant answer given the
question category (a model that reads the question but not the image), measured on
20,000 generated questions; a domain's chance is the mean over its categories (they
are equally frequent):

* colour 0.26, shape 0.34, spatial 0.52, count 0.23, arithmetic 0.25
* non_math 0.37, math 0.24, overall 0.32

Splits: ``train``, ``calibration`` and ``test`` draw from disjoint sets of scenes (a
scene is assigned to exactly one split by a hash of its content, so no image can occur
in two splits, whatever the sizes and seeds), and each split's random stream is derived
from ``(version, split, seed)``. ``dev``, the development split of the oracle analysis,
draws from the train split's scenes with a stream of its own and leaves out every scene of
the embedded model's training set (``train``, seed 0, its first ``DEFAULT_SIZES["train"]``
questions): no dev image was seen in training, in calibration or in the test. The same arguments give byte-identical images and
texts on every platform (pure-Python ``random`` seeded from SHA-256, PIL drawing
without anti-aliasing).
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

from PIL import Image, ImageDraw

from topovlm.data.types import VQASample

__all__ = [
    "VERSIONS", "DEFAULT_SIZES", "SPLITS", "DOMAINS", "CATEGORIES", "CATEGORY_DOMAIN", "CHANCE",
    "COLOURS", "SHAPES", "GRID", "CELL", "IMAGE_SIZE",
    "ShapeObject", "Scene", "Record",
    "generate_split", "generate_records", "render_scene", "scene_split", "chance_levels",
]

VERSIONS = ("v1",)
# Standard split sizes (the harness's ``dataset.n: null``): the test split is small
# enough to evaluate in well under a minute on 2 CPU cores.
DEFAULT_SIZES = {"train": 20000, "calibration": 512, "test": 400, "dev": 200}
SPLITS = ("train", "calibration", "test", "dev")
#: the scenes a split draws from (``dev``: the train split's, less the training set's scenes)
_TERRITORY = {"dev": "train"}
DOMAINS = ("math", "non_math")
CATEGORIES = ("colour", "shape", "spatial", "count", "arithmetic")
CATEGORY_DOMAIN = {
    "colour": "non_math",
    "shape": "non_math",
    "spatial": "non_math",
    "count": "math",
    "arithmetic": "math",
}
# Best-constant-answer accuracy per category (see the module docstring).
CHANCE: dict[str, float] = {
    "colour": 0.26,
    "shape": 0.34,
    "spatial": 0.52,
    "count": 0.23,
    "arithmetic": 0.25,
    "non_math": 0.37,
    "math": 0.24,
    "overall": 0.32,
}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 200, 30),
}
SHAPES = ("circle", "square", "triangle")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles"}
GRID = 4  # cells per side
CELL = 16  # pixels per cell (= the default model's ViT patch size)
IMAGE_SIZE = GRID * CELL
BACKGROUND = (255, 255, 255)
MIN_OBJECTS, MAX_OBJECTS = 2, 5

_COMBOS = [(c, s) for c in COLOURS for s in SHAPES]
# Scene-hash buckets (out of 20) owned by each split.
_BUCKETS = {"test": range(0, 2), "calibration": range(2, 4), "train": range(4, 20)}
_INSTR_WORD = "Answer with one word."
_INSTR_YESNO = "Answer yes or no."
_INSTR_NUMBER = "Answer with a number."


@dataclass(frozen=True)
class ShapeObject:
    row: int
    col: int
    colour: str
    shape: str

    @property
    def cell(self) -> int:
        return self.row * GRID + self.col

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]  # sorted by cell

    def key(self) -> str:
        return ";".join(f"{o.cell}:{o.colour}:{o.shape}" for o in self.objects)

    def count(self, attr: str | None = None) -> int:
        """Number of objects with colour or shape ``attr`` (all objects if None)."""
        if attr is None:
            return len(self.objects)
        return sum(1 for o in self.objects if attr in (o.colour, o.shape))


@dataclass(frozen=True)
class Record:
    """A sample together with the scene it was rendered from (for training targets)."""

    sample: VQASample
    scene: Scene


def scene_split(scene: Scene, version: str = "v1") -> str:
    """The split that owns ``scene`` (content hash; independent of seeds and sizes)."""
    h = hashlib.sha256(f"shapes/{version}/{scene.key()}".encode()).digest()
    bucket = int.from_bytes(h[:8], "big") % 20
    for split, buckets in _BUCKETS.items():
        if bucket in buckets:
            return split
    raise AssertionError(bucket)


def render_scene(scene: Scene) -> Image.Image:
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x0, y0 = o.col * CELL, o.row * CELL
        rgb = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((x0 + 2, y0 + 2, x0 + 13, y0 + 13), fill=rgb)
        elif o.shape == "square":
            draw.rectangle((x0 + 3, y0 + 3, x0 + 12, y0 + 12), fill=rgb)
        elif o.shape == "triangle":
            draw.polygon([(x0 + 8, y0 + 2), (x0 + 14, y0 + 13), (x0 + 1, y0 + 13)], fill=rgb)
        else:  # pragma: no cover
            raise ValueError(o.shape)
    return img


def _rng(version: str, split: str, seed: int) -> random.Random:
    h = hashlib.sha256(f"shapes/{version}/{split}/{int(seed)}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def _make_scene(rng: random.Random, must: Iterable[tuple[str, str]] = (),
                pool: list[tuple[str, str]] | None = None, k: int | None = None) -> Scene:
    """A scene containing the combos ``must`` plus objects drawn from ``pool``."""
    must = list(must)
    pool = [c for c in (_COMBOS if pool is None else pool) if c not in must]
    if k is None:
        lo = max(MIN_OBJECTS, len(must))
        hi = min(MAX_OBJECTS, len(must) + len(pool))
        k = rng.randint(lo, hi)
    combos = must + rng.sample(pool, k - len(must))
    cells = rng.sample(range(GRID * GRID), k)
    objs = [ShapeObject(cell // GRID, cell % GRID, c, s) for cell, (c, s) in zip(cells, combos)]
    return Scene(tuple(sorted(objs, key=lambda o: o.cell)))


def _has(attr: str, combo: tuple[str, str]) -> bool:
    return attr in combo


def _q_colour(rng: random.Random):
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    scene = _make_scene(rng, must=[(colour, shape)], pool=[c for c in _COMBOS if c[1] != shape])
    return scene, f"What color is the {shape}? {_INSTR_WORD}", colour


def _q_shape(rng: random.Random):
    shape = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    scene = _make_scene(rng, must=[(colour, shape)], pool=[c for c in _COMBOS if c[0] != colour])
    return scene, f"What shape is the {colour} object? {_INSTR_WORD}", shape


_RELATIONS = {
    "left": ("to the left of", lambda a, b: a.col < b.col, lambda a, b: a.col != b.col),
    "right": ("to the right of", lambda a, b: a.col > b.col, lambda a, b: a.col != b.col),
    "above": ("above", lambda a, b: a.row < b.row, lambda a, b: a.row != b.row),
    "below": ("below", lambda a, b: a.row > b.row, lambda a, b: a.row != b.row),
}


def _q_spatial(rng: random.Random):
    want = rng.choice(("yes", "no"))
    rel = rng.choice(list(_RELATIONS))
    phrase, holds, defined = _RELATIONS[rel]
    while True:
        scene = _make_scene(rng)
        a, b = rng.sample(scene.objects, 2)
        if defined(a, b) and (holds(a, b) == (want == "yes")):
            break
    return scene, f"Is the {a.name} {phrase} the {b.name}? {_INSTR_YESNO}", want


def _group(attr: str) -> str:
    return PLURAL[attr] if attr in SHAPES else f"{attr} objects"


def _scene_with_counts(rng: random.Random, counts: dict[str, int]) -> Scene | None:
    """A scene where each attribute in ``counts`` occurs exactly that many times
    (attributes are all colours or all shapes, so their object sets are disjoint)."""
    must: list[tuple[str, str]] = []
    for attr, n in counts.items():
        options = [c for c in _COMBOS if _has(attr, c)]
        if n > len(options):
            return None
        must += rng.sample(options, n)
    pool = [c for c in _COMBOS if not any(_has(a, c) for a in counts)]
    lo = max(MIN_OBJECTS, len(must))
    hi = min(MAX_OBJECTS, len(must) + len(pool))
    if lo > hi:
        return None
    return _make_scene(rng, must=must, pool=pool, k=rng.randint(lo, hi))


def _q_count(rng: random.Random):
    kind = rng.choice(("colour", "shape", "all"))
    if kind == "all":
        n = rng.randint(MIN_OBJECTS, MAX_OBJECTS)
        scene = _make_scene(rng, k=n)
        return scene, f"How many objects are there? {_INSTR_NUMBER}", str(n)
    attr = rng.choice(list(COLOURS) if kind == "colour" else list(SHAPES))
    n = rng.randint(0, len(SHAPES) if kind == "colour" else len(COLOURS))
    scene = _scene_with_counts(rng, {attr: n})
    assert scene is not None
    return scene, f"How many {_group(attr)} are there? {_INSTR_NUMBER}", str(n)


def _q_arithmetic(rng: random.Random):
    while True:
        attrs = list(COLOURS) if rng.random() < 0.5 else list(SHAPES)
        a, b = rng.sample(attrs, 2)
        op = rng.choice(("plus", "minus"))
        if op == "plus":
            total = rng.randint(0, MAX_OBJECTS)
            na = rng.randint(0, total)
            nb = total - na
            answer = total
        else:
            answer = rng.randint(0, 3)
            nb = rng.randint(0, 2)
            na = nb + answer
        scene = _scene_with_counts(rng, {a: na, b: nb})
        if scene is not None:
            break
    q = f"What is the number of {_group(a)} {op} the number of {_group(b)}? {_INSTR_NUMBER}"
    return scene, q, str(answer)


_MAKERS = {
    "colour": _q_colour,
    "shape": _q_shape,
    "spatial": _q_spatial,
    "count": _q_count,
    "arithmetic": _q_arithmetic,
}


def _draws(split: str, n: int, seed: int, version: str, exclude: frozenset[str] = frozenset()
           ) -> Iterable[tuple[int, str, Scene, str, str]]:
    """(index, category, scene, question, answer) of ``split``'s first ``n`` questions, unrendered."""
    territory = _TERRITORY.get(split, split)
    rng = _rng(version, split, seed)
    seen: set[tuple[str, str]] = set()
    i = count = 0
    while count < n:
        category = CATEGORIES[i % len(CATEGORIES)]
        scene, question, answer = _MAKERS[category](rng)
        if scene_split(scene, version) != territory or (scene.key(), question) in seen or scene.key() in exclude:
            continue
        seen.add((scene.key(), question))
        yield i, category, scene, question, answer
        count += 1
        i += 1


@lru_cache(maxsize=4)
def training_scenes(version: str = "v1") -> frozenset[str]:
    """The scene keys of the embedded model's training set (train, seed 0, default size)."""
    return frozenset(scene.key() for _, _, scene, _, _ in _draws("train", DEFAULT_SIZES["train"], 0, version))


def generate_records(split: str, n: int, seed: int, version: str = "v1") -> list[Record]:
    """Like :func:`generate_split`, but keeps each sample's :class:`Scene`."""
    if version not in VERSIONS:
        raise ValueError(f"unknown shapes version {version!r}; known: {VERSIONS}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError("n must be >= 0")
    exclude = training_scenes(version) if split == "dev" else frozenset()
    return [Record(VQASample(id=f"shapes-{version}-{split}-{seed}-{i:06d}", image=render_scene(scene),
                             question=question, answer=answer, domain=CATEGORY_DOMAIN[category],
                             category=category), scene)
            for i, category, scene, question, answer in _draws(split, n, seed, version, exclude)]


def generate_split(split: str, n: int, seed: int, version: str = "v1") -> list[VQASample]:
    """``n`` samples of ``split`` ("train", "calibration" or "test").

    Deterministic: the same arguments give byte-identical images and texts. Splits
    never share a scene (hence an image). Categories cycle through ``CATEGORIES``.
    """
    return [r.sample for r in generate_records(split, n, seed, version)]


def chance_levels(samples: list[VQASample]) -> dict[str, float]:
    """Best-constant-answer accuracy per category, per domain and overall for ``samples``
    (a domain's and the overall value: mean over categories weighted by frequency)."""
    from collections import Counter, defaultdict

    by_cat: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        by_cat[s.category].append(s.answer)
    hits = {c: Counter(a).most_common(1)[0][1] for c, a in by_cat.items()}
    out = {c: hits[c] / len(a) for c, a in by_cat.items()}
    for d in DOMAINS:
        cats = [c for c in by_cat if CATEGORY_DOMAIN[c] == d]
        if cats:
            out[d] = sum(hits[c] for c in cats) / sum(len(by_cat[c]) for c in cats)
    out["overall"] = sum(hits.values()) / max(1, len(samples))
    return out
