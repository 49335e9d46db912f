"""results.json (written atomically, last) and the sweep-level table."""
from __future__ import annotations

import fcntl
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"
SWEEP_TABLE = "results.jsonl"


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".results.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(to_jsonable(data), f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def append_row(table: Path, row: dict[str, Any]) -> None:
    """Append one JSON line under an exclusive lock (parallel launchers share the table)."""
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(to_jsonable(row)) + "\n")
        fcntl.flock(f, fcntl.LOCK_UN)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("topovlm", "torch", "transformers", "hydra-core", "gudhi", "dionysus", "scikit-learn", "wandb", "lmms-eval"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def load_results(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
