"""Where samples come from: a name in ``dataset.source`` -> a loader of ``VQASample`` lists."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typing import Any

from topovlm.data.types import VQASample
from topovlm.registry import Registry

PACKAGED_TEXT = Path(__file__).parent / "text" / "sample.txt"


class SourceError(ValueError):
    """A data file cannot be used; the message names the file, the 1-based line and the record."""


def read_text(path: str | Path) -> str:
    """The file as strict UTF-8 (a leading BOM dropped); a byte that is not UTF-8 names its line."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise SourceError(f"{path}:{line}: byte 0x{data[err.start]:02x} at column {column} is not UTF-8 "
                          "(re-save the file as UTF-8)") from None
    return text[1:] if text.startswith("\ufeff") else text


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(1-based line number, record) of every non-blank line; a line that is not a JSON
    object names the file and its own line (``json.loads`` of one line always says line 1)."""
    out = []
    # split on "\n" only: str.splitlines() also breaks at U+2028 and friends inside JSON strings
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise SourceError(f"{path}:{number}: not valid JSON ({err.msg}, column {err.colno})") from None
        if not isinstance(record, dict):
            raise SourceError(f"{path}:{number}: a record is a JSON object, not {type(record).__name__}")
        out.append((number, record))
    return out


JSONL_REQUIRED = ("id", "question")


def read_vqa_jsonl(root: str | Path, split: str) -> list[tuple[int, dict[str, Any]]]:
    """The checked records of ``<root>/<split>.jsonl``: required fields present, ids unique,
    every ``image`` an image file (its header read, not its pixels)."""
    from PIL import Image, UnidentifiedImageError

    root = Path(root).expanduser()
    file = root / f"{split}.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"no {file}")
    seen: dict[str, int] = {}
    records = read_jsonl(file)
    for number, rec in records:
        where = f"{file}:{number}"
        missing = [k for k in JSONL_REQUIRED if k not in rec]
        if missing:
            raise SourceError(f"{where}: the record has no {', '.join(missing)} (each needs {', '.join(JSONL_REQUIRED)})")
        if not isinstance(rec["question"], str) or not rec["question"].strip():
            raise SourceError(f"{where}: question must be a non-empty string, not {rec['question']!r}")
        answer = rec.get("answer")
        if answer is not None and (isinstance(answer, bool) or not isinstance(answer, (str, int, float))):
            # str() of a list or a bool would be scored as a word ("[...]", "True" -> "yes")
            raise SourceError(f"{where}: answer must be a string or a number, not {type(answer).__name__}")
        rid = str(rec["id"])
        if rid in seen:
            raise SourceError(f"{where}: id {rid!r} repeats line {seen[rid]}")
        seen[rid] = number
        if rec.get("image"):
            image = root / str(rec["image"])
            if not image.is_file():
                raise SourceError(f"{where}: record id={rid!r}: image {image} not found")
            try:
                with Image.open(image):
                    pass
            except (UnidentifiedImageError, OSError) as err:
                raise SourceError(f"{where}: record id={rid!r}: image {image} cannot be read ({err})") from None
    return records


def _shapes(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    from topovlm.data import shapes

    sizes = getattr(shapes, "DEFAULT_SIZES", {"train": 20000, "calibration": 512, "test": 400})
    size = n if n is not None else sizes[ds.split]
    return shapes.generate_split(ds.split, size, seed=seed, version=ds.version)


def _jsonl(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    """``<path>/<split>.jsonl`` records: id, question, answer, domain, category, image (relative path)."""
    from PIL import Image

    if not ds.path:
        raise ValueError("dataset.path must point to a folder with <split>.jsonl when dataset.source=jsonl")
    root = Path(ds.path).expanduser()
    records = read_vqa_jsonl(root, ds.split)
    chosen = seeded_subset(records, n, seed, "dataset.path")
    out = []
    for number, rec in chosen:
        image = None
        if rec.get("image"):
            try:  # the pixels are read here only: a truncated file still names its line
                image = Image.open(root / str(rec["image"])).convert("RGB")
            except OSError as err:
                raise SourceError(f"{root / f'{ds.split}.jsonl'}:{number}: record id={rec['id']!r}: "
                                  f"image {root / str(rec['image'])} cannot be read ({err})") from None
        answer = rec.get("answer")
        out.append(VQASample(str(rec["id"]), image, rec["question"], "" if answer is None else str(answer),
                             str(rec.get("domain", "default")), str(rec.get("category", ""))))
    return out


def seeded_subset(items: list, n: int | None, seed: int, key: str) -> list:
    """``n`` items drawn without replacement by ``seed`` (all of them, in order, when n is None)."""
    if n is None:
        return items
    if n > len(items):
        raise ValueError(f"{key}: {n} samples asked for, the source has {len(items)}")
    rng = np.random.default_rng(seed)
    return [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]


def _row_text(row: dict[str, Any], opts: dict[str, Any]) -> str:
    if opts.get("prompt"):
        return str(opts["prompt"]).format(**{k: (v[0] if isinstance(v, list) and v else v) for k, v in row.items()})
    value = row[opts.get("text_column", "question")]
    return str(value[0] if isinstance(value, list) else value)


def _hf(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    """A Hugging Face dataset (hub id or a ``save_to_disk`` / data folder) through ``datasets``.

    ``options``: ``name`` (dataset config), ``image_column`` (default ``image``),
    ``text_column`` (default ``question``; a list, e.g. several captions, gives its first
    entry) or ``prompt`` (a format string over the row's columns), ``answer_column``,
    ``id_column``, ``domain`` / ``domain_column``, ``exclude_first`` (skip the first rows:
    those an evaluation with ``limit`` reads). Rows are drawn by ``seed``.
    """
    import datasets

    opts = dict(ds.options or {})
    local = Path(str(ds.path)).expanduser()
    if local.exists() and ((local / "dataset_dict.json").is_file() or (local / "dataset_info.json").is_file()):
        loaded = datasets.load_from_disk(str(local))
        loaded = loaded[ds.split] if isinstance(loaded, datasets.DatasetDict) else loaded
    else:
        loaded = datasets.load_dataset(str(local) if local.exists() else ds.path, opts.get("name"), split=ds.split)
    first = int(opts.get("exclude_first") or 0)
    indices = seeded_subset(list(range(first, len(loaded))), n, seed, f"calibration/task dataset {ds.path}[{ds.split}]")
    image_col = opts.get("image_column", "image")
    out = []
    for i in indices:
        row = loaded[int(i)]
        image = row.get(image_col)
        image = image.convert("RGB") if image is not None and hasattr(image, "convert") else None
        rid = row[opts["id_column"]] if opts.get("id_column") else f"{ds.path}:{ds.split}:{i}"
        domain = str(row[opts["domain_column"]]) if opts.get("domain_column") else str(opts.get("domain", "default"))
        answer = row.get(opts["answer_column"], "") if opts.get("answer_column") else ""
        out.append(VQASample(str(rid), image, _row_text(row, opts), str(answer), domain, str(opts.get("category", ""))))
    return out


def text_paragraphs(path: str | Path) -> list[str]:
    """The blank-line-separated paragraphs of a UTF-8 text file."""
    return [t.strip() for t in read_text(path).replace("\r\n", "\n").split("\n\n") if t.strip()]


def _text(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    """Plain text for perplexity / text-only calibration: ``options.texts`` or one paragraph per blank line of ``path``."""
    texts = list(ds.options.get("texts", [])) if ds.options else []
    path = Path(ds.path) if ds.path else (PACKAGED_TEXT if not texts else None)
    if path is not None:
        texts += text_paragraphs(path)
    samples = [VQASample(f"text-{i}", None, t, "", "text") for i, t in enumerate(texts)]
    return samples[:n] if n is not None else samples


SOURCES: Registry = Registry("dataset.source", entry_point_group="topovlm.sources")
for _name, _fn in (("shapes", _shapes), ("jsonl", _jsonl), ("text", _text), ("hf", _hf)):
    SOURCES.register(_name, _fn)
# documents of an lmms-eval task (imports lmms-eval: declared lazily)
SOURCES.declare("lmms_task", "topovlm.evaluation.lmms_source:load_task_documents")


def load_samples(ds: Any, n: int | None = None, seed: int | None = None) -> list[VQASample]:
    try:
        loader = SOURCES[ds.source]
    except KeyError:
        raise ValueError(f"dataset.source={ds.source!r}; allowed: {', '.join(sorted(SOURCES))}") from None
    return loader(ds, n if n is not None else ds.n, ds.seed if seed is None else seed)


def dataset_id(ds: Any, n: int | None, seed: int) -> str:
    """A stable identity for cache keys."""
    opts = json.dumps(dict(ds.options or {}), sort_keys=True, default=str) if ds.options else ""
    return f"{ds.source}:{ds.version}:{ds.split}:{ds.path or ''}:{opts}:n={n}:seed={seed}"
