"""Per-sample records of a job: ``samples.jsonl`` next to results.json.

One JSON object per evaluated sample, keyed by ``key`` = ``<task>/<sample id>``: the
benchmark's own sample ids, so the jobs of one sweep (and of several sweeps on the same
task) line up sample by sample. Fields: ``key``, ``task``, ``id``, ``question`` (and
``prompt`` for lmms-eval tasks: the context the model saw), ``domain``, ``category``, ``prediction``, ``target``, ``correct`` (accuracy tasks) or ``loss``
(per-sample loss tasks), and the unpruned model's record for the same sample:
``reference_prediction``, ``reference_correct`` / ``reference_loss`` and ``agree``
(the normalised answer did not change).

The unpruned reference's records are cached next to its metrics
(``<cache>/reference/<key>.json`` -> ``<key>.samples.jsonl``), written by whichever job
evaluates the unpruned model first.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"


def evaluator_records(evaluator: Any, task: str) -> list[dict[str, Any]] | None:
    """The evaluator's per-sample records of its last ``evaluate`` with ``task``, ``key`` and
    ``question`` added (the question from the task's dataset when the evaluator's records lack
    it), or None when the evaluator keeps none (e.g. a plug-in without ``sample_records``)."""
    fn = getattr(evaluator, "sample_records", None)
    if fn is None:
        return None
    records = fn()
    if records is None:
        return None
    questions = _questions(evaluator) if any("question" not in r for r in records) else {}
    out = []
    for r in records:
        r = dict(r)
        r.setdefault("task", task)
        r["key"] = f"{r['task']}/{r['id']}"
        if "question" not in r and str(r["id"]) in questions:
            r["question"] = questions[str(r["id"])]
        out.append(r)
    return out


def _questions(evaluator: Any) -> dict[str, str]:
    """Sample id -> question text of the evaluator's dataset (``task.dataset``), or {} when it has
    none this harness can read (the records then go without it)."""
    cfg = getattr(evaluator, "cfg", None)
    dataset = getattr(cfg, "dataset", None)
    if dataset is None or getattr(cfg, "evaluator", None) == "lmms":  # lmms-eval's records carry their own
        return {}
    from topovlm.data.sources import load_samples

    try:
        return {str(s.id): s.question for s in load_samples(dataset) if getattr(s, "question", None)}
    except Exception as err:  # noqa: BLE001 - a source this loader does not know: records stay as they are
        log.debug("no question texts for samples.jsonl: %s", err)
        return {}


def reference_samples_path(reference_file: Path) -> Path:
    return Path(reference_file).with_name(Path(reference_file).stem + ".samples.jsonl")


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> Path:
    """Atomically (temporary file + rename, group-readable): a reader never sees half a file."""
    from topovlm.storage import atomic_write_text

    text = "".join(json.dumps(r, default=_jsonable) + "\n" for r in records)
    return atomic_write_text(Path(path), text)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def load_reference(reference_file: Path) -> dict[str, dict[str, Any]] | None:
    """Key -> the unpruned model's record, or None when not cached yet."""
    path = reference_samples_path(reference_file)
    if not path.is_file():
        return None
    return {r["key"]: r for r in read_jsonl(path)}


def save_reference(reference_file: Path, evaluator: Any, task: str) -> dict[str, dict[str, Any]] | None:
    records = evaluator_records(evaluator, task)
    if records is None:
        return None
    write_jsonl(reference_samples_path(reference_file), records)
    return {r["key"]: r for r in records}


def same_answer(a: Any, b: Any) -> bool | None:
    if a is None or b is None:
        return None
    from topovlm.data.normalize import normalize_answer

    return normalize_answer(str(a)) == normalize_answer(str(b))


# per-sample fields joined from the unpruned model's record of the same key, as reference_<field>
REFERENCE_FIELDS = ("correct", "correct_mc", "loss")


def join_reference(records: list[dict[str, Any]], reference: dict[str, dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Each record with the unpruned model's prediction / correctness / loss for the same key."""
    out = []
    for r in records:
        ref = (reference or {}).get(r["key"])
        r = dict(r)
        r["reference_prediction"] = ref.get("prediction") if ref else None
        for field in REFERENCE_FIELDS:
            if field in r:
                r[f"reference_{field}"] = ref.get(field) if ref else None
        r["agree"] = same_answer(r.get("prediction"), r["reference_prediction"]) if ref else None
        out.append(r)
    return out


def write_job_samples(out_dir: Path, evaluator: Any, task: str, reference_file: Path, *, unpruned: bool,
                      wandb_run: Any = None, artifact_name: str | None = None) -> Path | None:
    """Write ``out_dir/samples.jsonl`` for the evaluation just run; an unpruned job also
    caches its records as the reference. Logged as a W&B artifact when a run is given."""
    records = evaluator_records(evaluator, task)
    if records is None:
        return None
    if unpruned:
        write_jsonl(reference_samples_path(reference_file), records)
        reference = {r["key"]: r for r in records}
    else:
        reference = load_reference(reference_file)
    path = write_jsonl(Path(out_dir) / SAMPLES_FILE, join_reference(records, reference))
    if wandb_run is not None:
        log_samples_artifact(wandb_run, path, artifact_name or f"samples-{Path(out_dir).name}")
    return path


def log_samples_artifact(run: Any, path: Path, name: str) -> None:
    """``samples.jsonl`` as a W&B artifact (type ``samples``) of the job's run; never raises."""
    try:
        import re

        import wandb

        art = wandb.Artifact(re.sub(r"[^A-Za-z0-9._-]", "_", name), type="samples")
        art.add_file(str(path), name=SAMPLES_FILE)
        run.log_artifact(art)
    except Exception as err:  # noqa: BLE001 - logging must not break a job
        log.warning("W&B samples artifact failed: %s", err)


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return str(v)
