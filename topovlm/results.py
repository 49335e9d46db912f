"""What a job leaves behind, and the sweep table derived from it.

A job directory holds exactly one of

* ``results.json``: the complete result, written atomically and last;
* ``failed.json``: the failure record (error class, message, traceback, the stage it
  failed in, the config), written when a job raises.

The sweep table ``results.jsonl`` is never appended to: :func:`rebuild_table` derives
it from the job directories (one row per directory, complete or failed) and replaces it
atomically under a lock, after every job and at the end of a sweep. Whatever was killed
and whenever, the next rebuild makes it agree with the job directories again: it can
hold no duplicate and miss no finished job.
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

import numpy as np

from topovlm.storage import atomic_write_text, entry_lock, read_json, remove_stale_tmp

RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
SWEEP_TABLE = "results.jsonl"
# what a job dir holds besides its outputs: never linked into a job resumed from it
_BOOKKEEPING = (RESULTS_FILE, FAILED_FILE, SWEEP_TABLE, "wandb", ".hydra")
_ROW_KEYS = ("model", "task", "scorer", "sparsity", "seed", "num_layers", "num_layers_kept", "removed_layers",
             "selection_policy", "out_dir")


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
    atomic_write_text(Path(path), json.dumps(to_jsonable(data), indent=2))


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
    """A job's results.json (or any JSON object), None if missing or unreadable (left in place)."""
    return read_json(Path(path), heal=False)


# ------------------------------------------------------------------ job dirs and the table

def _holds_job(d: Path) -> bool:
    return (d / RESULTS_FILE).is_file() or (d / FAILED_FILE).is_file()


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job directories of a sweep (its direct sub-dirs holding a result or a failure),
    or the directory itself for a single run; in job order (Hydra's ``<num>_`` prefix)."""
    sweep_dir = Path(sweep_dir)
    if _holds_job(sweep_dir):
        return [sweep_dir]
    if not sweep_dir.is_dir():
        return []
    dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and _holds_job(d)]

    def order(d: Path) -> tuple:
        m = re.match(r"(\d+)", d.name)
        return (int(m.group(1)) if m else math.inf, d.name)

    return sorted(dirs, key=order)


def table_row(job_dir: Path) -> dict[str, Any] | None:
    """One table row: the complete result if there is one, else the failure record."""
    res = load_results(job_dir / RESULTS_FILE)
    if res is not None and "metrics" in res:
        row = {k: res.get(k) for k in _ROW_KEYS}
        row["status"] = "ok"
        row["out_dir"] = str(job_dir)
        row.update({f"metrics/{k}": v for k, v in (res.get("metrics") or {}).items()})
        return row
    failed = load_results(job_dir / FAILED_FILE)
    if failed is not None:
        row = {k: failed.get(k) for k in _ROW_KEYS}
        row.update(status="failed", out_dir=str(job_dir), error_type=failed.get("error_type"),
                   error=failed.get("error"), stage=failed.get("stage"))
        return row
    return None


def rebuild_table(sweep_dir: Path) -> list[dict[str, Any]]:
    """Replace ``<sweep_dir>/results.jsonl`` with one row per job directory."""
    table = Path(sweep_dir) / SWEEP_TABLE
    with entry_lock(table, "sweep table"):
        remove_stale_tmp(table)
        rows = [r for r in (table_row(d) for d in job_dirs(sweep_dir)) if r is not None]
        atomic_write_text(table, "".join(json.dumps(to_jsonable(r)) + "\n" for r in rows))
    return rows


def write_failure(out_dir: Path, record: dict[str, Any]) -> Path:
    path = Path(out_dir) / FAILED_FILE
    write_json_atomic(path, record)
    return path


def clear_job_dir(out_dir: Path) -> None:
    """What an earlier attempt left here must not outlive this one: until this job writes
    its own, the dir holds nothing that looks complete or failed."""
    for name in (RESULTS_FILE, FAILED_FILE):
        (Path(out_dir) / name).unlink(missing_ok=True)
        remove_stale_tmp(Path(out_dir) / name)


def link_outputs(src: Path, dst: Path) -> list[str]:
    """Make ``dst`` (a resumed job) show every output of ``src`` (the job that computed it):
    diagnostics, arrays, samples. Relative symbolic links, so they survive a moved tree."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve() or not src.is_dir():
        return []
    linked = []
    for entry in sorted(src.iterdir()):
        if entry.name in _BOOKKEEPING or entry.name.startswith(".") or entry.suffix in (".log", ".lock"):
            continue
        target = dst / entry.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            continue  # a real directory of this job: keep it
        os.symlink(os.path.relpath(entry.resolve(), dst.resolve()), target)
        linked.append(entry.name)
    return linked
