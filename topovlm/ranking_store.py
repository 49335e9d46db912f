"""A cached ranking (:class:`~topovlm.api.ScoreResult`) as one ``.npz`` file that holds no code.

The arrays (``scores``, ``redundancy``, optional ``block_cost`` and ``decision``, and the
scorer's own ``arrays`` under ``arrays/<name>``) are plain numeric arrays, and the JSON
details (``extra``) are one unicode string array. It is written with ``np.savez`` and read
with ``np.load(allow_pickle=False)``: a file placed in a shared cache can be wrong, never
run code when read (pickles could; see docs/reliability.md, "A shared cache").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from topovlm.api import ScoreResult
from topovlm.storage import atomic_write

SUFFIX = ".npz"
FORMAT = 1
_ARRAY_PREFIX = "arrays/"


def _plain(obj: Any) -> Any:
    """``extra`` as JSON: numpy values become lists and numbers (NaN is kept, as JSON's NaN)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _plain(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _numeric(name: str, arr: Any) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"ranking array {name!r} has dtype {arr.dtype}; only numeric arrays are cached")
    return arr


def save_ranking(path: Path, result: ScoreResult) -> Path:
    """Write ``result`` to ``path`` atomically (a reader sees the old file or the new one)."""
    data: dict[str, np.ndarray] = {
        "format": np.asarray(FORMAT),
        "scores": _numeric("scores", result.scores),
        "redundancy": _numeric("redundancy", result.redundancy),
        "extra_json": np.asarray(json.dumps(_plain(result.extra), sort_keys=True)),
    }
    if result.block_cost is not None:
        data["block_cost"] = _numeric("block_cost", result.block_cost)
    if result.decision is not None:
        data["decision"] = np.asarray([int(i) for i in result.decision], dtype=np.int64)
    for name, arr in result.arrays.items():
        data[_ARRAY_PREFIX + name] = _numeric(name, arr)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **data)

    return atomic_write(Path(path), save)


def load_ranking(path: Path, num_layers: int) -> ScoreResult:
    """The ranking stored at ``path``; ``ValueError`` (or an ``OSError``) when it is not a
    valid ranking of ``num_layers`` layers."""
    with np.load(Path(path), allow_pickle=False) as z:
        files = set(z.files)
        missing = {"format", "scores", "redundancy", "extra_json"} - files
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        if int(z["format"]) != FORMAT:
            raise ValueError(f"format {int(z['format'])}, expected {FORMAT}")
        extra = json.loads(str(z["extra_json"]))
        if not isinstance(extra, dict):
            raise ValueError("extra is not a JSON object")
        result = ScoreResult(
            scores=z["scores"], redundancy=z["redundancy"],
            block_cost=z["block_cost"] if "block_cost" in files else None, extra=extra,
            decision=[int(i) for i in z["decision"]] if "decision" in files else None,
            arrays={k[len(_ARRAY_PREFIX):]: z[k] for k in z.files if k.startswith(_ARRAY_PREFIX)})
    check_ranking(result, num_layers)
    return result


def check_ranking(result: Any, num_layers: int) -> None:
    """A scorer's result must rank exactly the model's layers (checked before it is cached)."""
    if not isinstance(result, ScoreResult):
        raise ValueError(f"not a ScoreResult but {type(result).__name__}")
    if len(result.scores) != num_layers:
        raise ValueError(f"{len(result.scores)} scores for {num_layers} layers")
    if result.block_cost is not None and np.shape(result.block_cost) != (num_layers + 1, num_layers):
        raise ValueError(f"block_cost of shape {np.shape(result.block_cost)}, expected {(num_layers + 1, num_layers)}")
