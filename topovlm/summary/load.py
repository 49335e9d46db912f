"""Reading a summary's jobs: every results.json under the sweep dirs, as :class:`SummaryJob`.

A :class:`SummaryJob` is the job's :class:`~topovlm.results.JobResult` plus what the summary
derives from it: where it was read (``path``), its flattened config (``flat``), its draw
(``draw``: the seed keys' values, over which cells are averaged) and its ``label`` (the
scorer name plus whatever config value distinguishes its variants in this summary).

Which keys never make a variant: :data:`NOT_VARIANT`, the identity-exclusion list
:data:`topovlm.results.NOT_IDENTITY` (logging, storage, scheduling) plus the summary's axes
(model, task, sparsity, the scorer's name) and the efficiency measurement settings.

A metric's direction (:func:`higher_is_better`) is the one the evaluator recorded in the
jobs' ``metric_directions``; for results written before they were recorded, the direction
the task's evaluator class declares (:attr:`topovlm.api.Evaluator.HIGHER_IS_BETTER`, looked
up in the evaluator registry by ``task.evaluator``); else :data:`DEFAULT_HIGHER_IS_BETTER`.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from topovlm.results import FAILED_FILE, NOT_IDENTITY, RESULTS_FILE, IncompleteResult, JobResult

log = logging.getLogger("topovlm.summary")

PLOTS_DIR = "plots"
# config keys that repeat a measurement rather than define a method: averaged over
SEED_KEYS = ("seed", "calibration.seed", "calibration.dataset.seed", "task.dataset.seed")
#: config keys that never distinguish two methods: what is not part of a job's identity, the
#: summary's axes, and how efficiency is measured
NOT_VARIANT = NOT_IDENTITY + ("sparsity", "model", "task", "efficiency", "scorer.name", "scorer._target_")
#: the direction of a metric neither the jobs nor their evaluator give one for (e.g. a count)
DEFAULT_HIGHER_IS_BETTER = True
_NOT_JOB_DIRS = ("wandb", "pruned_model", PLOTS_DIR)


@dataclass
class SummaryJob(JobResult):
    """A finished job as the summary reads it."""

    path: str | None = field(default=None, compare=False)           # its results.json
    flat: dict[str, Any] = field(default_factory=dict, compare=False)
    draw: tuple = field(default=(), compare=False)                   # SEED_KEYS' values
    label: str = field(default="", compare=False)
    records: list[dict[str, Any]] | None = field(default=None, compare=False, repr=False)  # samples.jsonl
    records_read: bool = field(default=False, compare=False, repr=False)


def find_results(dirs: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` under ``dirs`` (recursively; hidden folders skipped)."""
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            found.append(d)
            continue
        if not d.is_dir():
            raise FileNotFoundError(f"no such sweep directory: {d}")
        for root, subdirs, files in os.walk(d):
            # not where jobs write results: W&B runs, saved models, plots, hidden (.submitit, .hydra)
            subdirs[:] = sorted(s for s in subdirs if not s.startswith(".") and s not in _NOT_JOB_DIRS)
            if RESULTS_FILE in files:
                found.append(Path(root) / RESULTS_FILE)
    return found


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(data, list):
        data = json.dumps(data)
    out[prefix[:-1]] = data
    return out


def load_jobs(dirs: Iterable[str | Path]) -> list[SummaryJob]:
    """The complete jobs under ``dirs``, one per job key (a resumed copy of a job counts once).
    A results.json of a newer schema version than this topovlm reads stops the summary
    (:class:`~topovlm.results.SchemaVersionError`): its numbers would be misread."""
    by_key: dict[str, SummaryJob] = {}
    for path in find_results(dirs):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping unreadable %s: %s", path, err)
            continue
        try:
            res = SummaryJob.from_dict(data, source=path, path=str(path))
        except IncompleteResult:
            log.warning("skipping incomplete %s", path)
            continue
        key = res.job_key or str(path.resolve())
        kept = by_key.get(key)
        # prefer the job that computed the result over a copy written by a resumed job
        if kept is None or (kept.resumed_from and not res.resumed_from):
            by_key[key] = res
    jobs = list(by_key.values())
    _assign_labels(jobs)
    return jobs


def load_failures(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The failure records (``failed.json``) of job dirs under ``dirs`` that hold no result."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for path in sorted(d.rglob(FAILED_FILE)):
            rel = path.relative_to(d).parts
            if any(p.startswith(".") or p in _NOT_JOB_DIRS for p in rel[:-1]) or (path.parent / RESULTS_FILE).is_file():
                continue
            try:
                rec = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                rec = {"error_type": type(err).__name__, "error": f"unreadable failure record: {err}"}
            out.append({**rec, "out_dir": str(path.parent)})
    return out


def failures_markdown(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return "_None: every job finished._"
    lines = ["| job | scorer | sparsity | stage | error |", "|---|---|---|---|---|"]
    for f in failures:
        msg = f"{f.get('error_type')}: {f.get('error')}".replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {Path(f['out_dir']).name} | {f.get('scorer')} | {f.get('sparsity')} | {f.get('stage')} | {msg} |")
    return "\n".join(lines)


def _seed_of(job: SummaryJob) -> tuple:
    return tuple(job.flat.get(k, job.seed if k == "seed" else None) for k in SEED_KEYS)


def _assign_labels(jobs: list[SummaryJob]) -> None:
    """``label``: the scorer name plus whatever else distinguishes its jobs in this summary
    (e.g. ``cosine[pooling=text_mean]``), so variants of one scorer get their own rows."""
    for job in jobs:
        job.flat = flatten(job.config or {})
        job.draw = _seed_of(job)
    groups: dict[tuple, list[SummaryJob]] = defaultdict(list)
    for job in jobs:
        groups[(job.model, job.task, job.scorer)].append(job)
    for members in groups.values():
        keys = sorted({k for j in members for k in j.flat})
        varying = []
        for k in keys:
            if k in SEED_KEYS or any(k == p or k.startswith(p + ".") for p in NOT_VARIANT):
                continue
            if len({json.dumps(j.flat.get(k), sort_keys=True) for j in members}) > 1:
                varying.append(k)
        for job in members:
            parts = [f"{k.removeprefix('scorer.')}={job.flat.get(k)}" for k in varying]
            job.label = job.scorer + (f"[{','.join(parts)}]" if parts else "")


def groups(jobs: list[SummaryJob]) -> list[tuple[str, str]]:
    """The (model, task) pairs of ``jobs``, sorted."""
    return sorted({(j.model, j.task) for j in jobs})


def is_reference(job: SummaryJob) -> bool:
    """An unpruned job: sparsity 0, nothing removed."""
    return float(job.sparsity) == 0.0 and not job.removed_layers


def evaluator_direction(job: JobResult, metric: str) -> bool | None:
    """The direction the job's evaluator class declares for ``metric`` (None: it says nothing,
    or the job names no evaluator the registry knows)."""
    name = (job.config.get("task") or {}).get("evaluator") or job.protocol.get("evaluator")
    if not name:
        return None
    from topovlm.api import direction_in
    from topovlm.evaluation import EVALUATORS

    try:
        cls = EVALUATORS[name]
    except Exception as err:  # noqa: BLE001 - an evaluator of a plugin not installed here
        log.warning("direction of %s: evaluator %r not available (%s)", metric, name, err)
        return None
    return direction_in(getattr(cls, "HIGHER_IS_BETTER", {}), metric)


def higher_is_better(jobs: Iterable[JobResult], metric: str) -> bool:
    """Whether a higher ``metric`` is better: as the jobs recorded it, else as their evaluator
    declares it, else :data:`DEFAULT_HIGHER_IS_BETTER`."""
    jobs = list(jobs)
    for j in jobs:
        if metric in j.metric_directions:
            return bool(j.metric_directions[metric])
    asked: set[str] = set()
    for j in jobs:
        name = str((j.config.get("task") or {}).get("evaluator") or j.protocol.get("evaluator"))
        if name in asked:
            continue
        asked.add(name)
        direction = evaluator_direction(j, metric)
        if direction is not None:
            return direction
    return DEFAULT_HIGHER_IS_BETTER
