"""Local lmms-eval tasks shipped with topovlm (run fully offline).

``TASKS_DIR`` is passed to ``lmms_eval.tasks.TaskManager(include_path=...)``. Each local
task has a YAML whose ``dataset_path`` is filled in at run time with a folder written
by ``datasets.DatasetDict.save_to_disk`` under the harness cache (``dataset_kwargs:
{load_from_disk: true}``), so no dataset hub is ever contacted.

``shapes_lmms``: the embedded shapes benchmark (:mod:`topovlm.data.shapes`); the same
questions, in the same order, as the built-in ``vqa`` evaluator reads for the same
``task.dataset`` settings.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent
#: local task name -> its dataset exporter
LOCAL_TASKS = ("shapes_lmms",)


def _dataset_dir(cache_dir: Path, ds: Any, n: int | None) -> Path:
    from topovlm.identity import digest
    from topovlm.storage import inside, safe_name

    ident = {"source": ds.source, "version": ds.version, "split": ds.split, "n": n, "seed": ds.seed,
             "path": ds.path, "format": 1}
    root = cache_dir / "lmms_datasets"
    name = safe_name(f"shapes_lmms-{ds.version}-{ds.split}-n{n}-s{ds.seed}-{digest(ident)[:8]}")
    return inside(root, root / name)


def export_shapes_dataset(ds: Any, cache_dir: str | os.PathLike, n: int | None = None) -> Path:
    """Write the benchmark questions named by ``ds`` (a ``DatasetConfig``) as a ``DatasetDict``
    with one ``test`` split (columns ``id, image, question, answer, domain, category``).

    Written once per (version, split, n, seed) into a temporary folder and renamed into
    place, so concurrent jobs never read a half-written dataset; later calls return the path.
    """
    import datasets

    from topovlm.data.sources import load_samples

    target = _dataset_dir(Path(cache_dir), ds, n if n is not None else ds.n)
    if (target / ".complete").exists():
        return target
    samples = load_samples(ds, n=n)
    features = datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
        "answer": datasets.Value("string"), "domain": datasets.Value("string"), "category": datasets.Value("string"),
    })
    table = {
        "id": [s.id for s in samples], "image": [s.image for s in samples],
        "question": [s.question for s in samples], "answer": [s.answer for s in samples],
        "domain": [s.domain for s in samples], "category": [s.category for s in samples],
    }
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_dict(table, features=features)})
    save_complete(dd, target, {"num_rows": len(samples)})
    return target


def save_complete(data: Any, target: Path, marker: dict) -> None:
    """``data.save_to_disk`` into ``target`` atomically: written in a hidden folder with a
    ``.complete`` marker, then renamed into place (a concurrent writer that finished first wins)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        out = Path(tmp) / "data"
        data.save_to_disk(str(out))
        (out / ".complete").write_text(json.dumps(marker, sort_keys=True) + "\n")
        try:
            os.replace(out, target)
        except OSError:  # another job wrote it first
            if not (target / ".complete").exists():
                raise
            shutil.rmtree(out, ignore_errors=True)


def write_task_folder(out_dir: str | os.PathLike, ds: Any, cache_dir: str | os.PathLike) -> Path:
    """A self-contained ``shapes_lmms`` task folder for lmms-eval's own CLI (``--include_path``):
    the task YAML with ``dataset_path`` set to the exported dataset, and its utils."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = export_shapes_dataset(ds, cache_dir)
    text = (TASKS_DIR / "shapes" / "shapes_lmms.yaml").read_text()
    text = text.replace("dataset_path: null  # filled in at run time (the exported folder)", f"dataset_path: {data}")
    (out / "shapes_lmms.yaml").write_text(text)
    shutil.copy(TASKS_DIR / "shapes" / "utils.py", out / "utils.py")
    return out


__all__ = ["TASKS_DIR", "LOCAL_TASKS", "export_shapes_dataset", "write_task_folder"]
