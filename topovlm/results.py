"""What a job leaves behind, and the sweep table derived from it.

A job directory holds exactly one of

* ``results.json``: the complete result, written atomically and last;
* ``failed.json``: the failure record (error class, message, traceback, the stage it
  failed in, the config), written when a job raises.

``results.json`` is the serialisation of a :class:`JobResult` (what
:func:`topovlm.runner.run_job` returns), stamped with :data:`SCHEMA_VERSION`; see
:meth:`JobResult.from_dict` for the versions it reads.

The sweep table ``results.jsonl`` is never appended to: :func:`rebuild_table` derives
it from the job directories (one row per directory, complete or failed) and replaces it
atomically under a lock, after every job and at the end of a sweep. Whatever was killed
and whenever, the next rebuild makes it agree with the job directories again: it can
hold no duplicate and miss no finished job.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from topovlm.storage import atomic_write_text, entry_lock, link_or_copy, read_json, remove_stale_tmp

log = logging.getLogger("topovlm.results")

RESULTS_FILE = "results.json"
FAILED_FILE = "failed.json"
SWEEP_TABLE = "results.jsonl"
# what a job dir holds besides its outputs: never linked into a job resumed from it
_BOOKKEEPING = (RESULTS_FILE, FAILED_FILE, SWEEP_TABLE, "wandb", ".hydra")
#: config keys that change how a job is logged, stored or scheduled, never what it computes:
#: left out of a job's identity (its cache key) and never part of a scorer's label in a summary
NOT_IDENTITY = ("logger", "force", "save_model", "cache_dir", "reference", "num_threads", "reuse_model",
                "optimized_metric")
#: the layout of results.json this version writes (``schema_version``); files without the
#: field are the unversioned layout written before it, read as well
SCHEMA_VERSION = 1
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


def load_results(path: Path) -> dict[str, Any] | None:
    """A job's results.json (or any JSON object), None if missing or unreadable (left in place)."""
    return read_json(Path(path), heal=False)


# ------------------------------------------------------------------ the typed result

class SchemaVersionError(ValueError):
    """A results.json written by a newer topovlm, in a layout this version cannot read."""


class IncompleteResult(ValueError):
    """A JSON object that lacks what every result has (model, task, scorer, sparsity, metrics)."""


@dataclass
class JobResult:
    """One finished job: what :func:`topovlm.runner.run_job` returns and results.json holds.

    :meth:`to_dict` is the on-disk layout (one top-level key per field, ``extra`` merged in
    at the top level, ``schema_version`` first); :meth:`from_dict` reads it back. Readers use
    the attributes; ``result["metrics"]`` and ``result.get("topology")`` read the same view
    as the JSON file (scorer sections such as ``topology`` are in :attr:`extra`).
    """

    model: str
    task: str
    scorer: str
    sparsity: float
    metrics: dict[str, Any]
    seed: int | None = None
    num_layers: int | None = None
    num_layers_kept: int | None = None
    removed_layers: list[int] = field(default_factory=list)   # original indices
    kept_layers: list[int] = field(default_factory=list)
    selection_policy: str | None = None
    scores: list[Any] = field(default_factory=list)           # the scorer's native per-layer values
    redundancy: list[Any] = field(default_factory=list)       # what selection ranks by
    #: metric -> whether a higher value is better, as the evaluator says (absent: it does not)
    metric_directions: dict[str, bool] = field(default_factory=dict)
    reference_metrics: dict[str, Any] | None = None           # the unpruned model's, same task and seed
    efficiency: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    scores_from_cache: bool | None = None
    after_pruning: dict[str, Any] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)      # the resolved config
    versions: dict[str, str] = field(default_factory=dict)
    effective: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, Any] = field(default_factory=dict)
    diagnostics: list[str] = field(default_factory=list)
    arrays: dict[str, str] = field(default_factory=dict)
    job_key: str | None = None
    out_dir: str | None = None
    wandb_group: str | None = None
    wandb: dict[str, Any] | None = None                       # the job's W&B run (None: not logged)
    resumed_from: str | None = None                           # the job dir this result was copied from
    linked_outputs: list[str] | None = None
    #: the scorer's sections (``ScoreResult.extra``, e.g. ``topology``) and keys this version does not know
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    REQUIRED: ClassVar[tuple[str, ...]] = ("model", "task", "scorer", "sparsity", "metrics")
    #: fields left out of the file while None (a computed job has no ``resumed_from``)
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ("resumed_from", "linked_outputs")

    @classmethod
    def _stored(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(JobResult) if f.name not in ("extra", "schema_version"))

    # ---------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """The results.json layout (JSON-ready values: see :func:`to_jsonable`)."""
        out: dict[str, Any] = {"schema_version": self.schema_version}
        for name in self._stored():
            value = getattr(self, name)
            if value is None and name in self.OMITTED_WHEN_NONE:
                continue
            out[name] = value
            if name == "wandb_group":  # where the scorer's sections always were
                out.update({k: v for k, v in self.extra.items() if k not in out})
        return to_jsonable(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None, **annotations: Any) -> "JobResult":
        """A result read back from its results.json layout: the current ``schema_version`` or
        the unversioned layout written before it (the same keys, no version); a newer version
        raises :class:`SchemaVersionError`, a dict without the required keys
        :class:`IncompleteResult`. ``annotations``: values of fields a subclass adds."""
        where = f"{source}: " if source is not None else ""
        if not isinstance(data, dict):
            raise IncompleteResult(f"{where}not a JSON object")
        version = data.get("schema_version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise SchemaVersionError(f"{where}schema_version={version!r} is not a results.json version "
                                     f"(this topovlm reads 1 to {SCHEMA_VERSION}, and files without the field)")
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(f"{where}results.json schema_version {version} is newer than this topovlm reads "
                                     f"(up to {SCHEMA_VERSION}): upgrade topovlm to read it")
        missing = [k for k in cls.REQUIRED if k not in data]
        if missing:
            raise IncompleteResult(f"{where}not a complete result (no {', '.join(missing)})")
        stored = set(cls._stored())
        kwargs = {k: v for k, v in data.items() if k in stored}
        for name in _LIST_OR_DICT_FIELDS:  # a null list or mapping reads as an empty one
            if kwargs.get(name) is None:
                kwargs.pop(name, None)
        extra = {k: v for k, v in data.items() if k not in stored and k != "schema_version"}
        return cls(**kwargs, extra=extra, schema_version=SCHEMA_VERSION, **annotations)

    # ---------------------------------------------------------------- the JSON view
    def __getitem__(self, key: str) -> Any:
        if key != "extra" and key in self._stored():
            value = getattr(self, key)
            if value is None and key in self.OMITTED_WHEN_NONE:
                raise KeyError(key)
            return value
        if key == "schema_version":
            return self.schema_version
        return self.extra[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        try:
            self[key]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True

    def with_changes(self, **changes: Any) -> "JobResult":
        """A copy with some fields replaced (e.g. a resumed job's ``out_dir``)."""
        return replace(self, **changes)


_LIST_OR_DICT_FIELDS = tuple(f.name for f in fields(JobResult) if f.default_factory in (list, dict))  # type: ignore[comparison-overlap]


def write_result(path: Path, result: JobResult) -> None:
    write_json_atomic(path, result.to_dict())


def read_result(path: Path, cls: type[JobResult] = JobResult, **annotations: Any) -> JobResult | None:
    """A job's results.json as a :class:`JobResult`; None when missing, unreadable or not a
    complete result (left in place). A newer ``schema_version`` raises :class:`SchemaVersionError`."""
    data = load_results(path)
    if data is None:
        return None
    try:
        return cls.from_dict(data, source=path, **annotations)
    except IncompleteResult:
        return None


# ------------------------------------------------------------------ job dirs and the table

def _holds_job(d: Path, started: bool = False) -> bool:
    return (d / RESULTS_FILE).is_file() or (d / FAILED_FILE).is_file() or (started and (d / ".hydra").is_dir())


def job_dirs(sweep_dir: Path, started: bool = False) -> list[Path]:
    """The job directories of a sweep (its direct sub-dirs holding a result or a failure),
    or the directory itself for a single run; in job order (Hydra's ``<num>_`` prefix).
    ``started``: also the jobs that left neither (killed), known by the ``.hydra/`` Hydra writes
    into each job dir, but no other folder placed in the sweep, such as a shared
    ``logger.wandb.dir`` whose runs belong to several jobs."""
    sweep_dir = Path(sweep_dir)
    if _holds_job(sweep_dir):
        return [sweep_dir]
    if not sweep_dir.is_dir():
        return []
    dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".") and _holds_job(d, started)]

    def order(d: Path) -> tuple:
        m = re.match(r"(\d+)", d.name)
        return (int(m.group(1)) if m else math.inf, d.name)

    return sorted(dirs, key=order)


def last_attempt_failed(job_dir: Path) -> bool:
    """A failure record beside a result: a later job refused to replace that result (another
    job's, see ``runner.refuse_foreign_result``); the dir reports the failure, not the old result.
    (Every run that completes removes ``failed.json`` first, so otherwise the two never meet.)"""
    return (Path(job_dir) / FAILED_FILE).is_file() and (Path(job_dir) / RESULTS_FILE).is_file()


def table_row(job_dir: Path) -> dict[str, Any] | None:
    """One table row: the complete result if there is one (and no later failure), else the failure record."""
    res = None if last_attempt_failed(job_dir) else load_results(job_dir / RESULTS_FILE)
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
    """Make ``dst`` (a resumed job) hold every output of ``src`` (the job that computed it):
    diagnostics, arrays, samples. Real files (hard links where the filesystem allows, else
    copies: :func:`topovlm.storage.link_or_copy`), so ``cp -r`` or ``rsync`` of a sweep, or
    moving the source sweep, leaves this job readable. An output of ``src`` that is itself a
    link whose target is gone (``src`` was resumed from a sweep written before outputs were
    real files, since moved or deleted) is not linked: it is logged and left out."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve() or not src.is_dir():
        return []
    linked, gone = [], []
    for entry in sorted(src.iterdir()):
        if entry.name in _BOOKKEEPING or entry.name.startswith(".") or entry.suffix in (".log", ".lock"):
            continue
        if not entry.exists():  # a dangling link: linking to it would hide that the output is gone
            gone.append(entry.name)
            continue
        target = dst / entry.name
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            continue  # a real directory of this job: keep it
        link_or_copy(entry, target)
        linked.append(entry.name)
    if gone:
        log.warning("%s: outputs %s of %s link to files that are gone (their source sweep moved or was "
                    "deleted?); not linked. Rerun that job with +force=true to recompute them",
                    dst, ", ".join(gone), src)
    return linked


def missing_outputs(job_dir: Path, linked: list[str] | None = None) -> list[str]:
    """The outputs of a resumed job (``linked``: its ``linked_outputs``; default every link in
    ``job_dir``) whose links dangle: the job they point into was moved or deleted."""
    job_dir = Path(job_dir)
    names = linked if linked is not None else [p.name for p in job_dir.iterdir() if p.is_symlink()] \
        if job_dir.is_dir() else []
    return sorted(n for n in names if (job_dir / n).is_symlink() and not (job_dir / n).exists())
