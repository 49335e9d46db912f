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
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from topovlm.results import (FAILED_FILE, NOT_IDENTITY, RESULTS_FILE, IncompleteResult, JobResult, SchemaVersionError,
                             missing_outputs)

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
            if RESULTS_FILE in files and FAILED_FILE not in files:  # both: a later attempt was refused
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


def load_jobs(dirs: Iterable[str | Path], problems: list[dict[str, Any]] | None = None) -> list[SummaryJob]:
    """The complete, consistent jobs under ``dirs``, one per job key (a resumed copy of a job
    counts once).

    A results.json that cannot be trusted is left out: unreadable (truncated, not JSON, not
    UTF-8), incomplete, of another layout (:func:`schema_errors`), or whose metrics disagree
    with its own samples.jsonl (:func:`sample_mismatches`, e.g. a hand-edited accuracy).
    With ``problems`` each is appended to it as a failure record (see :func:`problem`), for
    the summary's Failures section; without, it is logged, except that a results.json of a
    newer schema version stops the summary (:class:`~topovlm.results.SchemaVersionError`).
    A resumed job whose linked outputs dangle (their source moved) is kept and reported."""
    by_key: dict[str, SummaryJob] = {}

    def report(path: Path, kind: str, error_type: str, error: str, data: Any = None) -> None:
        rec = problem(path, kind, error_type, error, data)
        if problems is None:
            log.warning("%s %s: %s", kind, path, error)
        else:
            problems.append(rec)

    for path in find_results(dirs):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            report(path, "unreadable", type(err).__name__, f"{path}: {err}")
            continue
        try:
            res = SummaryJob.from_dict(data, source=path, path=str(path))
        except IncompleteResult as err:
            report(path, "incomplete", type(err).__name__, str(err), data)
            continue
        except SchemaVersionError as err:
            if problems is None:
                raise
            report(path, "schema", type(err).__name__, str(err), data)
            continue
        errors = schema_errors(res)
        if errors:
            report(path, "schema", "SchemaMismatch", f"{path}: " + "; ".join(errors), data)
            continue
        try:
            mismatches = sample_mismatches(res)
        except SamplesUnreadable as err:
            report(path, "unreadable", "SamplesUnreadable", str(err), data)
            continue
        if mismatches:
            report(path, "inconsistent", "MetricMismatch",
                   f"{path}: metrics disagree with samples.jsonl: " + "; ".join(mismatches), data)
            continue
        gone = missing_outputs(path.parent, res.linked_outputs) if res.resumed_from else []
        if gone:
            report(path, "linked outputs gone", "DanglingLink",
                   f"{path.parent}: resumed from {res.resumed_from}, whose outputs {', '.join(gone)} are gone "
                   "(moved or deleted); its numbers are kept. Restore that dir, or rerun the job with "
                   "+force=true to recompute them", data)
        key = res.job_key or str(path.resolve())
        kept = by_key.get(key)
        # prefer the job that computed the result over a copy written by a resumed job
        if kept is None or (kept.resumed_from and not res.resumed_from):
            by_key[key] = res
    jobs = list(by_key.values())
    _assign_labels(jobs)
    return jobs


def problem(path: Path, kind: str, error_type: str, error: str, data: Any = None) -> dict[str, Any]:
    """A results.json the summary cannot trust, as a failure record (the columns of
    :func:`failures_markdown`): ``stage`` says what is wrong, ``error`` the detail."""
    data = data if isinstance(data, dict) else {}
    return {"status": kind, "stage": kind, "error_type": error_type, "error": error, "out_dir": str(Path(path).parent),
            **{k: data.get(k) for k in ("model", "task", "scorer", "sparsity", "seed")}}


# ------------------------------------------------------------------ what a result must look like

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)


def schema_errors(res: JobResult) -> list[str]:
    """What in ``res`` does not fit the results.json layout or contradicts itself (empty: fine).
    Only what the summary reads: names, sparsity, metrics, the layer lists."""
    errors = []
    for name in ("model", "task", "scorer"):
        if not isinstance(getattr(res, name), str):
            errors.append(f"{name}={getattr(res, name)!r} is not a string")
    if not _number(res.sparsity) or not 0.0 <= float(res.sparsity) < 1.0:
        errors.append(f"sparsity={res.sparsity!r} is not a number in [0, 1)")
    if not isinstance(res.metrics, dict):
        errors.append(f"metrics is a {type(res.metrics).__name__}, not a mapping")
    else:
        bad = [k for k, v in res.metrics.items() if v is not None and not _number(v)]
        if bad:
            errors.append(f"metrics {', '.join(bad)} are not numbers")
        task = res.config.get("task") if isinstance(res.config, dict) else None
        evaluator = task.get("evaluator") if isinstance(task, dict) else None
        for k, v in res.metrics.items():  # the vqa evaluator's accuracies are fractions (a plugin's may be %)
            if evaluator == "vqa" and k.partition("/")[0] in PROPORTIONS and _number(v) and not 0.0 <= v <= 1.0:
                errors.append(f"{k}={v} is not a fraction in [0, 1]")
    for name in ("config", "timings", "metric_directions", "efficiency", "reference_metrics"):
        value = getattr(res, name)
        if value is not None and not isinstance(value, dict):
            errors.append(f"{name} is a {type(value).__name__}, not a mapping")
    for name in ("removed_layers", "kept_layers"):
        if not _int_list(getattr(res, name)):
            errors.append(f"{name}={getattr(res, name)!r} is not a list of layer indices")
    n = res.num_layers
    if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        errors.append(f"num_layers={n!r} is not a positive integer")
    elif n is not None and not errors:
        removed, kept = res.removed_layers, res.kept_layers
        if len(set(removed)) != len(removed) or any(not 0 <= i < n for i in removed):
            errors.append(f"removed_layers={removed} are not distinct layers of {n}")
        elif kept and sorted(removed + kept) != list(range(n)):
            errors.append(f"removed_layers={removed} and kept_layers={kept} do not split the {n} layers")
    return errors


# ------------------------------------------------------------------ metrics against samples.jsonl

#: metrics (and their ``/<domain or category>`` parts) that are the fraction of samples whose
#: record field is true: the vqa evaluator's exact match and multiple choice
PROPORTIONS = {"accuracy": "correct", "accuracy_mc": "correct_mc"}
#: how close a recorded metric must be to the one recomputed from the samples
#: (float32 token sums make a recomputed perplexity differ in the 7th digit; one sample in 10^4
#: moves an accuracy by 1e-4)
REL_TOL, ABS_TOL = 1e-5, 1e-9


class SamplesUnreadable(ValueError):
    """A job's samples.jsonl exists but cannot be read (names the file and line)."""


def samples_file(job: SummaryJob) -> Path | None:
    """Where the job's samples.jsonl is: beside its results.json, else in the run it was
    resumed from, else its recorded out_dir (None: it wrote none)."""
    from topovlm.samples import SAMPLES_FILE

    for d in (Path(job.path).parent if job.path else None, job.resumed_from, job.out_dir):
        if d and (Path(d) / SAMPLES_FILE).is_file():
            return Path(d) / SAMPLES_FILE
    return None


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The records of a samples.jsonl; :class:`SamplesUnreadable` naming the line of a bad one."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as err:
                    raise SamplesUnreadable(f"{path}, line {line_no}: not a JSON record ({err})") from None
                if not isinstance(rec, dict):
                    raise SamplesUnreadable(f"{path}, line {line_no}: not a JSON object")
                records.append(rec)
    except (OSError, UnicodeDecodeError) as err:
        raise SamplesUnreadable(f"{path}: cannot read ({err})") from None
    return records


def recompute_metrics(records: list[dict[str, Any]]) -> dict[str, tuple[float, int]]:
    """``metric -> (value, samples)`` as the evaluators compute them from these records:
    ``accuracy`` / ``accuracy_mc`` overall and per ``domain`` and ``category`` (the vqa
    evaluator's keys; a record's own per-sample ``metrics`` value first, as lmms-eval logs
    it), ``nll`` / ``perplexity`` / ``num_tokens`` (token-weighted), ``num_samples``."""
    out: dict[str, tuple[float, int]] = {}
    for metric, field_name in PROPORTIONS.items():
        hits: dict[str, list[float]] = defaultdict(list)
        for r in records:
            own = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
            value = own.get(metric, r.get(field_name))
            if value is None:
                continue
            hits[metric].append(float(value))
            if "domain" in r:
                hits[f"{metric}/{r['domain']}"].append(float(value))
            if r.get("category"):
                hits[f"{metric}/{r['category']}"].append(float(value))
        out.update({k: (sum(v) / len(v), len(v)) for k, v in hits.items()})
    if records and all(_number(r.get("nll_sum")) and _number(r.get("num_tokens")) for r in records):
        tokens = sum(float(r["num_tokens"]) for r in records)
        if tokens > 0:
            nll = sum(float(r["nll_sum"]) for r in records) / tokens
            out.update(nll=(nll, len(records)), num_tokens=(tokens, len(records)))
            if nll < 700:  # exp overflows beyond
                out["perplexity"] = (math.exp(nll), len(records))
    if records:
        out["num_samples"] = (float(len(records)), len(records))
    return out


def sample_mismatches(job: SummaryJob) -> list[str]:
    """Each recorded metric that its samples.jsonl gives another value for ("accuracy=0.99,
    samples give 0.200 of 20"); empty when they agree or there are no samples. Reads the
    records once, for the statistics too (``job.records``)."""
    path = samples_file(job)
    if path is None:
        return []
    records = read_samples(path)
    job.records, job.records_read = records, True
    keys = [r.get("key", r.get("id")) for r in records]
    if len(set(map(str, keys))) != len(keys):
        return []  # one record per sample and filter (lmms-eval with several filters): which is scored is not said
    again = recompute_metrics(records)
    out = []
    for metric, value in sorted(job.metrics.items()):
        if metric not in again or not _number(value):
            continue
        expected, n = again[metric]
        if not math.isclose(float(value), expected, rel_tol=REL_TOL, abs_tol=ABS_TOL):
            out.append(f"{metric}={value:g}, its {n} samples give {expected:.6g}")
    return out


def load_failures(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The failure records (``failed.json``) of job dirs under ``dirs`` (a result beside one is
    the result a later attempt refused to replace: the failure is what the dir reports)."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for path in sorted(d.rglob(FAILED_FILE)):
            rel = path.relative_to(d).parts
            if any(p.startswith(".") or p in _NOT_JOB_DIRS for p in rel[:-1]):
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
