"""Where samples come from: a name in ``dataset.source`` -> a loader of ``VQASample`` lists."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typing import Any

from topovlm.data.types import VQASample
from topovlm.registry import Registry

PACKAGED_TEXT = Path(__file__).parent / "text" / "sample.txt"


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
    root = Path(ds.path)
    file = root / f"{ds.split}.jsonl"
    if not file.is_file():
        raise FileNotFoundError(f"dataset.path: no {file}")
    out = []
    for line in file.read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        image = Image.open(root / rec["image"]).convert("RGB") if rec.get("image") else None
        out.append(VQASample(str(rec["id"]), image, rec["question"], str(rec.get("answer", "")),
                             rec.get("domain", "default"), rec.get("category", "")))
    return seeded_subset(out, n, seed, "dataset.path")


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


def _text(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    """Plain text for perplexity / text-only calibration: ``options.texts`` or one paragraph per blank line of ``path``."""
    texts = list(ds.options.get("texts", [])) if ds.options else []
    path = Path(ds.path) if ds.path else (PACKAGED_TEXT if not texts else None)
    if path is not None:
        texts += [t.strip() for t in path.read_text().split("\n\n") if t.strip()]
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
