"""Where samples come from: a name in ``dataset.source`` -> a loader of ``VQASample`` lists."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from topovlm.data.types import VQASample

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
    return out[:n] if n is not None else out


def _text(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    """Plain text for perplexity / text-only calibration: ``options.texts`` or one paragraph per blank line of ``path``."""
    texts = list(ds.options.get("texts", [])) if ds.options else []
    path = Path(ds.path) if ds.path else (PACKAGED_TEXT if not texts else None)
    if path is not None:
        texts += [t.strip() for t in path.read_text().split("\n\n") if t.strip()]
    samples = [VQASample(f"text-{i}", None, t, "", "text") for i, t in enumerate(texts)]
    return samples[:n] if n is not None else samples


SOURCES: dict[str, Callable[[Any, int | None, int], list[VQASample]]] = {
    "shapes": _shapes,
    "jsonl": _jsonl,
    "text": _text,
}


def load_samples(ds: Any, n: int | None = None, seed: int | None = None) -> list[VQASample]:
    try:
        loader = SOURCES[ds.source]
    except KeyError:
        raise ValueError(f"dataset.source={ds.source!r}; allowed: {', '.join(sorted(SOURCES))}") from None
    return loader(ds, n if n is not None else ds.n, ds.seed if seed is None else seed)


def dataset_id(ds: Any, n: int | None, seed: int) -> str:
    """A stable identity for cache keys."""
    return f"{ds.source}:{ds.version}:{ds.split}:{ds.path or ''}:n={n}:seed={seed}"
