"""One job of a sweep, as a pipeline of small stages (:func:`run_job` reads on one screen):

    prepare (validate) -> claim -> calibration samples -> load -> score (capture, cached)
    -> select -> reference -> prune -> evaluate -> record

Every stage takes what it needs explicitly and returns what it made. What a job is
(config, identity, scorer, where it writes) is fixed once in :class:`Job`. Caches are
keyed by :mod:`topovlm.identity` (code, versions, config values) and every hit is
logged with what it was keyed on. Identical jobs running at once are serialised by a
lock on their identity: the second waits and reuses the first one's result.
"""
from __future__ import annotations

import gc
import logging
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import topovlm.capture as capture_module
from topovlm import samples as job_samples
from topovlm.capture_cache import (CALIBRATION_SAMPLES, CaptureCache, content_digest, model_fingerprint,
                                   planned_union)
from topovlm.config import ConfigError, build_scorer, resolved_config, validate
from topovlm.data.sources import dataset_id
from topovlm.identity import code_digest, digest, library_versions, recorded_versions
from topovlm.results import (FAILED_FILE, NOT_IDENTITY, RESULTS_FILE, JobResult, clear_job_dir, link_outputs,
                             missing_outputs, read_result, rebuild_table, write_json_atomic, write_result)
from topovlm.api import LayerScorer, ScoreResult, ScoringContext
from topovlm.selection import SelectionConfig, SelectionError, check_budget, select_layers
from topovlm.removal_loss import CalibrationLoss
from topovlm.ranking_store import SUFFIX as RANKING_SUFFIX, check_ranking, load_ranking, save_ranking
from topovlm.storage import (atomic_write, discard, entry_lock, inside, link_or_copy, read_json, remove_stale_tmp,
                             safe_name)
from topovlm.tracking import WandbRun, set_aside_incomplete_runs

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ identity

def code_identity(cfg: DictConfig, scorer: LayerScorer | None = None) -> dict[str, str]:
    """Digests of the code that computes this job's numbers."""
    from topovlm.adapters.families import ADAPTERS
    from topovlm.evaluation import EVALUATORS

    scorer = scorer or build_scorer(cfg.scorer)
    evaluator = EVALUATORS.module_of(cfg.task.evaluator)  # the module, not imported (lmms-eval is slow to import)
    return {"scorer": code_digest(type(scorer)), "evaluator": code_digest(evaluator),
            "capture": code_digest(capture_module, ADAPTERS[cfg.model.family]),
            "selection": code_digest("topovlm.selection", "topovlm.pruning")}


def job_identity(cfg: DictConfig, scorer: LayerScorer | None = None) -> dict[str, Any]:
    """What a completed job's result depends on: the resolved config minus logging and
    storage switches, the code, the library versions, and the embedded model's weights."""
    data = resolved_config(cfg)
    for k in NOT_IDENTITY:
        data.pop(k, None)
    data["task"].pop("metric", None)  # which reported metric leads: no number depends on it
    if cfg.model.source == "embedded":
        from topovlm.default_model.build import weights_digest

        data["weights"] = weights_digest()
    data["code"] = code_identity(cfg, scorer)
    data["versions"] = library_versions()
    return data


def job_key(cfg: DictConfig) -> str:
    return digest(job_identity(cfg))


def keyed_on(identity: dict[str, Any]) -> str:
    """A one-line account of a cache key's content, for the log line of a hit."""
    def short(v: Any) -> str:
        text = str(v)
        return f"<{len(v)} keys, {digest(v)}>" if isinstance(v, dict) and len(text) > 60 else text

    return ", ".join(f"{k}={short(v)}" for k, v in identity.items())


# ------------------------------------------------------------------------------ the job

@dataclass
class Job:
    """What a job is, fixed before anything runs."""

    cfg: DictConfig
    out_dir: Path
    table_dir: Path  # where results.jsonl lives: the sweep dir (or the run's own dir)
    group: str  # W&B group
    run_name: str
    key: str
    identity: dict[str, Any]
    scorer: LayerScorer
    selection: SelectionConfig
    config: dict[str, Any]  # the resolved config, as recorded
    force: bool
    reused: list[str] = field(default_factory=list)  # cache entries this job reused (one INFO line)

    @property
    def cache(self) -> Path:
        return Path(self.cfg.cache_dir)


#: how a stage is named in the log and on its progress bars
STAGE_NAMES = {"calibration_samples": "calibration samples", "load_model": "model load", "capture": "calibration",
               "score": "scoring", "select": "selection", "reference_evaluate": "reference eval",
               "prune": "pruning", "evaluate": "pruned eval", "samples": "samples.jsonl", "record": "record"}
#: stages whose progress bars also name the job ("pruned eval, topo s=0.2")
_TAGGED_BARS = ("capture", "evaluate")
#: bookkeeping stages (well under a second): their start and end are logged at DEBUG
MINOR_STAGES = ("claim", "calibration_samples", "select", "prune", "samples", "diagnostics", "record", "reuse")


@dataclass
class Timer:
    """Wall time per stage; ``stage`` is the one running (named in a failure record). Each stage
    logs its start and its end with its time, tagged with the job (``tag``: "topo s=0.2")."""

    timings: dict[str, float] = field(default_factory=dict)
    stage: str = "validate"
    tag: str = ""
    minor: set[str] = field(default_factory=lambda: set(MINOR_STAGES))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        from topovlm import progress

        outer, self.stage, start = self.stage, stage, time.perf_counter()
        name = STAGE_NAMES.get(stage, stage.replace("_", " "))
        try:
            with progress.stage(f"[{self.tag}] {name}" if self.tag else name, logger=log,
                                bar_label=f"{name}, {self.tag}" if self.tag and stage in _TAGGED_BARS else name,
                                level=logging.DEBUG if stage in self.minor else logging.INFO):
                yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
        self.stage = outer  # reached only without an exception: a failure keeps the innermost stage


@dataclass
class Ranking:
    result: ScoreResult
    from_cache: bool
    cache: dict[str, Any]  # keys and hits, for results.json


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------ stages

def prepare(cfg: DictConfig, out_dir: Path, sweep_dir: Path | None, group: str, run_name: str | None) -> Job:
    """validate: every config-only check, then the job's identity."""
    scorer = validate(cfg)
    identity = job_identity(cfg, scorer)
    out_dir.mkdir(parents=True, exist_ok=True)
    return Job(cfg=cfg, out_dir=out_dir, table_dir=sweep_dir or out_dir,
               group=OmegaConf.select(cfg, "logger.wandb.group") or group,
               run_name=run_name or f"{scorer.name}-s{cfg.sparsity:g}", key=digest(identity), identity=identity,
               scorer=scorer, selection=SelectionConfig(**OmegaConf.to_container(cfg.selection, resolve=True)),
               config=resolved_config(cfg),
               force=bool(OmegaConf.select(cfg, "force", default=False)))


def calibration_samples(job: Job) -> list:
    """The calibration set (decoded once per process: :class:`topovlm.capture_cache.CalibrationSamples`);
    a source smaller than ``calibration.n`` is an error."""
    cal = job.cfg.calibration
    samples = CALIBRATION_SAMPLES.get(cal.dataset, cal.n, cal.seed)
    if len(samples) < cal.n:
        raise ConfigError(f"calibration.n={cal.n}, but calibration.dataset (source={cal.dataset.source}, "
                          f"split={cal.dataset.split}, path={cal.dataset.path}) holds only {len(samples)} samples; "
                          f"set calibration.n<={len(samples)} or use a larger source")
    return samples


def load_model(job: Job) -> Any:
    """load: the adapter, seeded, on the configured threads; the budget checked against its depth."""
    from topovlm.adapters.loading import load_adapter

    from topovlm.model_pool import POOL

    seed_everything(job.cfg.seed)
    if job.cfg.num_threads:
        torch.set_num_threads(int(job.cfg.num_threads))
    # one load per sweep process: the pool restores the unpruned model between jobs
    adapter = POOL.acquire(job.cfg.model, load_adapter, reuse=bool(OmegaConf.select(job.cfg, "reuse_model",
                                                                                        default=True)))
    try:
        check_budget(float(job.cfg.sparsity), adapter.num_layers, job.selection, job.scorer.default_policy)
    except SelectionError as err:
        POOL.release(adapter)
        raise ConfigError(f"sparsity={job.cfg.sparsity:g} on {adapter.num_layers} layers: {err}") from None
    return adapter


def _load_ranking(path: Path, num_layers: int) -> ScoreResult | None:
    """The cached ranking, or None (missing; unreadable entries are moved aside and logged)."""
    if not path.is_file():
        return None
    try:
        return load_ranking(path, num_layers)
    except Exception as err:  # noqa: BLE001 - BadZipFile, KeyError, ValueError, OSError, ...: recompute
        discard(path, err)
        return None


class _LazyLoss:
    """``ctx.removal_loss``, tokenising the calibration set at its first call."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build, self._loss = build, None

    def _get(self) -> Any:
        if self._loss is None:
            self._loss = self._build()
        return self._loss

    def __call__(self, removed: Any) -> float:
        return self._get()(removed)

    def __getattr__(self, name: str) -> Any:  # passes, seconds, num_samples, num_tokens
        return getattr(self._get(), name)


def _checked(scorer: LayerScorer, result: Any, num_layers: int) -> ScoreResult:
    """A scorer's result, checked before anything caches or selects from it."""
    try:
        check_ranking(result, num_layers)
    except ValueError as err:
        raise RuntimeError(f"scorer {scorer.name} returned an invalid ranking: {err}") from None
    return result


def score(job: Job, adapter: Any, fingerprint: str, samples: list, timer: Timer) -> Ranking:
    """capture + score: the ranking from its cache, else from the (cached) capture."""
    cal, scorer, n_layers = job.cfg.calibration, job.scorer, adapter.num_layers
    capture_id = {"model": fingerprint, "calibration": dataset_id(cal.dataset, cal.n, cal.seed).split(":")[0],
                  "samples": content_digest(samples), "batch_size": int(cal.batch_size),
                  "code": job.identity["code"]["capture"],
                  "versions": library_versions()}
    spec = scorer.capture_spec()
    if capture_module.needs_attention(spec):  # eager attention: states of their own, an entry of its own
        capture_id["attention"] = "eager"
    capture_key = digest(capture_id)
    # the sweep's union pass: one pass records what every swept scorer needs (capture_plan.json)
    union = planned_union(job.table_dir if job.table_dir != job.out_dir else None, job.cfg, spec, scorer.name)
    captures = CaptureCache(job.cache / "captures")
    ctx = ScoringContext(seed=job.cfg.seed, num_layers=n_layers, out_dir=job.out_dir)
    if scorer.needs_dev_metric:
        from topovlm.removal_loss import DevMetric

        ctx.dev_metric = DevMetric(adapter, scorer.dev_task(job.cfg.task), scorer.metric)
    if scorer.needs_removal_loss:  # built lazily: a cached ranking needs no pass
        ctx.removal_loss = _LazyLoss(lambda: CalibrationLoss(adapter, scorer.removal_loss_samples(samples),
                                                             int(cal.batch_size)))

    def capture() -> Any:
        with timer("capture"):
            cap = captures.get(capture_key, lambda: adapter, lambda: samples, spec, cal.batch_size,
                               record=union[0] if union else None, recorded_for=union[1] if union else [scorer.name])
        if captures.last_hit:
            job.reused.append("capture")
            log.debug("cache hit: capture %s (keyed on %s)", captures.root / capture_key, keyed_on(capture_id))
            if captures.last_union:
                log.info("[%s] capture served from the sweep's union pass (recorded for %s): %s", timer.tag,
                         ", ".join(captures.last_union), captures.root / capture_key)
        elif union and len(union[1]) > 1:
            log.info("[%s] the calibration pass recorded what %s need (the sweep's union pass): %s", timer.tag,
                     ", ".join(union[1]), captures.root / capture_key)
        return cap

    ranking_id = {"capture": capture_key, "scorer": scorer.name, "params": scorer.params(), "seed": job.cfg.seed,
                  "code": job.identity["code"]["scorer"]}
    scores_root = job.cache / "scores"
    path = inside(scores_root, scores_root / capture_key / f"{safe_name(scorer.name)}-{digest(ranking_id)}{RANKING_SUFFIX}")
    with timer("score"):
        result = None
        if scorer.cacheable:
            with entry_lock(path, "ranking"):
                remove_stale_tmp(path)
                result = None if job.force else _load_ranking(path, n_layers)
                if result is not None:
                    job.reused.append("ranking")
                    log.debug("cache hit: ranking %s (keyed on %s)", path, keyed_on(ranking_id))
                    from_cache = True
                else:
                    result, from_cache = _checked(scorer, scorer.score(capture(), ctx), n_layers), False
                    save_ranking(path, result)
        else:
            result, from_cache = _checked(scorer, scorer.score(capture(), ctx), n_layers), False
    timer.timings["score"] -= timer.timings.get("capture", 0.0)
    return Ranking(result, from_cache, {"capture": {"key": capture_key, "hit": captures.last_hit or from_cache},
                                        "ranking": {"key": path.stem, "hit": from_cache}})


def select(job: Job, ranking: Ranking) -> tuple[list[int], str, list[str]]:
    """The layers to remove, the policy that chose them, and the notes of a tie that decided them."""
    r, notes = ranking.result, []
    removed, policy = select_layers(r.redundancy, float(job.cfg.sparsity), job.selection, job.scorer.default_policy,
                                    r.block_cost, scorer=job.scorer.name, decision=r.decision, notes=notes)
    return removed, policy, notes


def reference_entry(job: Job, fingerprint: str) -> tuple[Path, dict[str, Any]]:
    ref_id = {"model": fingerprint, "task": job.config["task"], "seed": job.cfg.seed,
              "code": job.identity["code"]["evaluator"], "versions": library_versions()}
    root = job.cache / "reference"
    return inside(root, root / f"{safe_name(job.cfg.model.name)}-{digest(ref_id)}.json"), ref_id


def reference(job: Job, evaluator: Any, adapter: Any, fingerprint: str) -> dict[str, Any] | None:
    """The unpruned model's metrics (and per-sample records, beside them) on this task and
    seed: cached, else evaluated (``reference=true``)."""
    path, ref_id = reference_entry(job, fingerprint)
    with entry_lock(path, "reference"):
        remove_stale_tmp(path)
        remove_stale_tmp(job_samples.reference_samples_path(path))
        cached = None if job.force else read_json(path, required=("metrics",))
        # a cached reference without its records is evaluated once more (samples.jsonl needs them)
        records_missing = job_samples.load_reference(path) is None and \
            job_samples.evaluator_records(evaluator, job.cfg.task.name) is not None
        if cached is not None and not (records_missing and job.cfg.reference):
            job.reused.append("reference eval")
            log.debug("cache hit: reference %s (keyed on %s)", path, keyed_on(ref_id))
            return cached["metrics"]
        if not job.cfg.reference:
            return None if cached is None else cached["metrics"]
        metrics = evaluator.evaluate(adapter)
        write_json_atomic(path, {"metrics": metrics, "identity": ref_id})
        job_samples.save_reference(path, evaluator, job.cfg.task.name)
        return metrics


def store_reference(job: Job, fingerprint: str, metrics: dict[str, Any], evaluator: Any) -> None:
    """An unpruned job's own metrics (and records) are the reference of its model, task and seed."""
    path, ref_id = reference_entry(job, fingerprint)
    with entry_lock(path, "reference"):
        write_json_atomic(path, {"metrics": metrics, "identity": ref_id})
        job_samples.save_reference(path, evaluator, job.cfg.task.name)


def evaluate(job: Job, evaluator: Any, adapter: Any, fingerprint: str, removed: list[int],
             edit: dict[str, Any]) -> tuple[dict[str, Any], Any, str]:
    """The (pruned) model's metrics, the evaluator whose records samples.jsonl reads, and the
    cache entry they were reused from ('' when evaluated now). A pruned model's evaluation is
    cached by the network it evaluates (:mod:`topovlm.evaluation_cache`); the unpruned model's
    is the reference and cached as such."""
    if not removed:
        return evaluator.evaluate(adapter), evaluator, ""
    from topovlm import evaluation_cache
    from topovlm.model_pool import weights_checksum

    path, key = evaluation_cache.entry(job.cache, job.cfg.model.name, reference_entry(job, fingerprint)[1],
                                       removed, weights_checksum(adapter.model), edit, job.scorer.name)
    metrics, source, reused = evaluation_cache.evaluate(path, key, evaluator, adapter, job.cfg.task.name,
                                                        force=job.force)
    return metrics, source, path.name if reused else ""


def prune(job: Job, adapter: Any, removed: list[int], samples: list) -> tuple[list[int], dict[str, Any]]:
    from topovlm.pruning import remove_layers

    if not removed:
        return list(range(adapter.num_layers)), {}
    kept = remove_layers(adapter, removed)
    ctx = ScoringContext(seed=job.cfg.seed, num_layers=len(kept) + len(removed), out_dir=job.out_dir)
    return kept, job.scorer.after_pruning(adapter, removed, samples, ctx)


def _savez(path: Path, name: str, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **{name: arr})


def write_outputs(job: Job, ranking: Ranking, removed: list[int]) -> tuple[list[Path], dict[str, str]]:
    """Diagnostics of this job's removals next to the run; the ranking's arrays (e.g. topo's point
    clouds) stored once beside the cached ranking and hard-linked (else copied) into every job that uses it.
    (images, array -> path)."""
    result = ranking.result
    images = job.scorer.write_diagnostics(result, job.out_dir, removed=removed)
    arrays: dict[str, str] = {}
    store = job.cache / "scores" / ranking.cache["capture"]["key"] / f"{ranking.cache['ranking']['key']}.arrays"
    for name, arr in result.arrays.items():
        stored = store / f"{name}.npz"
        if not stored.is_file():
            atomic_write(stored, lambda p, n=name, a=arr: _savez(p, n, a))
        link_or_copy(stored, job.out_dir / f"{name}.npz")  # a real file: the sweep dir travels without the cache
        arrays[name] = str(stored)
    return images, arrays


def log_run(job: Job, results: JobResult, images: list[Path], *, resumed: bool = False) -> dict[str, Any] | None:
    """The job's W&B run, opened and finished here (a killed job leaves no finished run)."""
    from topovlm.efficiency import flat_numeric

    with WandbRun(job.cfg.logger.wandb, name=job.run_name, group=job.group, job_type=job.scorer.name,
                  config=job.config, out_dir=job.out_dir, tags=("resumed",) if resumed else ()) as wb:
        wb.log({"sparsity": float(job.cfg.sparsity), **{f"metrics/{k}": v for k, v in results.metrics.items()},
                "num_layers_kept": results.num_layers_kept,
                **{f"efficiency/{k}": v for k, v in flat_numeric(results.efficiency or {}).items()}})
        wb.config_update({"protocol": results.protocol, "resumed_from": results.resumed_from})
        wb.log_images(images)
        wb.log_layer_profile(results.scores, results.redundancy, results.removed_layers)
        wb.summary({"removed_layers": results.removed_layers, "selection_policy": results.selection_policy})
        samples_file = job.out_dir / job_samples.SAMPLES_FILE
        if wb.run is not None and samples_file.is_file():
            job_samples.log_samples_artifact(wb.run, samples_file, f"samples-{job.run_name}-{job.key[:8]}")
        return wb.info()


def record(job: Job, results: JobResult, images: list[Path], *, resumed: bool = False) -> JobResult:
    """W&B first, then results.json (its presence means complete), the index, the table."""
    results.wandb = log_run(job, results, images, resumed=resumed)
    write_result(job.out_dir / RESULTS_FILE, results)
    if not resumed:  # the index names the job that computed the result, never a copy
        _register_completed(job.cache, job.key, results)
    rebuild_table(job.table_dir)
    return results


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        return {k: v for key, val in data.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    return {prefix[:-1]: data}


def refuse_foreign_result(job: Job) -> None:
    """The job dir holds a finished result of another job (another seed, scorer, sparsity, ...):
    it is neither replaced nor mixed with this one unless ``+force=true``. A result of the same
    config made by other code or library versions is stale: it is replaced, with a warning."""
    old = read_result(job.out_dir / RESULTS_FILE)
    if old is None or old.job_key == job.key or job.force:
        return
    before = {k: v for k, v in _flat(old.config or {}).items() if k.split(".")[0] not in NOT_IDENTITY}
    now = {k: v for k, v in _flat(job.config).items() if k.split(".")[0] not in NOT_IDENTITY}
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if not changed:
        log.warning("%s holds this job's result computed by other code or library versions (key %s, now %s); "
                    "recomputing it", job.out_dir / RESULTS_FILE, old.job_key, job.key)
        return
    shown = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    raise ConfigError(f"{job.out_dir} holds the result of another job ({shown}{more}); it is kept. Write this "
                      "sweep to another dir (hydra.sweep.dir=...) or replace it with +force=true")


def reuse(job: Job, done: JobResult) -> JobResult:
    """A finished job with this identity exists: this dir gets its result and outputs."""
    src = Path(done.out_dir)
    if src.resolve() == job.out_dir.resolve():
        log.info("job already complete (%s); skipping (+force=true recomputes)", src)
        log.debug("job %s keyed on %s", job.key, keyed_on(job.identity))
        (job.out_dir / FAILED_FILE).unlink(missing_ok=True)  # a refused attempt of another job, now moot
        rebuild_table(job.table_dir)
        return done
    log.info("job already complete (%s); reusing its result and outputs (+force=true recomputes)", src)
    log.debug("job %s keyed on %s", job.key, keyed_on(job.identity))
    clear_job_dir(job.out_dir)
    set_aside_incomplete_runs(job.out_dir)
    linked = link_outputs(src, job.out_dir)
    results = done.with_changes(resumed_from=str(src), out_dir=str(job.out_dir), linked_outputs=linked,
                                wandb_group=job.group)
    images = [job.out_dir / name for name in linked if name.endswith(".png")]
    return record(job, results, images, resumed=True)


# ------------------------------------------------------------------------------ run_job

def run_job(cfg: DictConfig, out_dir: Path, *, sweep_dir: Path | None = None, group: str = "local",
            run_name: str | None = None) -> JobResult:
    """Run one (model, scorer, sparsity, task) job; return its result (also in results.json).
    The stages, in order; an exception carries ``topovlm_stage``, the stage it was raised in."""
    from topovlm.efficiency import EfficiencySettings, JobEfficiency
    from topovlm.evaluation import build_evaluator
    from topovlm.model_pool import POOL

    timer = Timer()
    try:
        job = prepare(cfg, Path(out_dir), sweep_dir, group, run_name)  # every config check, once
        timer.tag = f"{job.scorer.name} s={float(cfg.sparsity):g}"
        with entry_lock(job.cache / "completed" / f"{job.key}.json", "identical job"):  # claim
            done = finished(job)
            if done is not None:
                with timer("reuse"):
                    return reuse(job, done)
            with timer("claim"):
                refuse_foreign_result(job)
            clear_job_dir(job.out_dir)
            set_aside_incomplete_runs(job.out_dir)
            with timer("calibration_samples"):
                samples = calibration_samples(job)
            evaluator = build_evaluator(cfg.task)
            eff_cfg = OmegaConf.select(cfg, "efficiency", default=None)
            eff = JobEfficiency(EfficiencySettings.from_cfg(eff_cfg, cfg.model.source, cfg.model.device),
                                job.cache, cfg.model.name, cfg.model.device)  # the peak-memory window starts here
            eff.explicit = OmegaConf.select(cfg, "efficiency.enabled", default=None) is not None
            if not eff.settings.enabled:
                timer.minor.add("efficiency")  # only the job's peak memory is read: nothing to announce
            with timer("load_model"):
                adapter = load_model(job)
            try:
                fingerprint = model_fingerprint(adapter)
                eff.model_key = f"{cfg.model.name}-{fingerprint}"
                num_layers = adapter.num_layers
                with timer("efficiency"):
                    eff.measure_baseline(adapter)  # the unpruned model's numbers, before pruning
                ranking = score(job, adapter, fingerprint, samples, timer)
                with timer("select"):
                    removed, policy, notes = select(job, ranking)
                ref = None
                if removed:
                    with timer("reference_evaluate"):
                        ref = reference(job, evaluator, adapter, fingerprint)
                if job.reused:  # the details (paths, keys) are at DEBUG
                    log.info("[%s] reused from the cache (%s): %s", timer.tag, job.cache, ", ".join(job.reused))
                with timer("prune"):
                    kept, edit = prune(job, adapter, removed, samples)
                with timer("evaluate"):
                    metrics, evaluator, eval_reused = evaluate(job, evaluator, adapter, fingerprint, removed, edit)
                if not removed:
                    ref = metrics
                    store_reference(job, fingerprint, metrics, evaluator)
                with timer("samples"):  # samples.jsonl, each record joined with the unpruned model's
                    job_samples.write_job_samples(job.out_dir, evaluator, cfg.task.name,
                                                  reference_entry(job, fingerprint)[0], unpruned=not removed)
                with timer("efficiency"):
                    efficiency = eff.finish(adapter, pruned=bool(removed), original_layers=num_layers,
                                            eval_wall_time_s=None if eval_reused else timer.timings.get("evaluate"))
                with timer("diagnostics"):
                    images, arrays = write_outputs(job, ranking, removed)
                results = job_result(job, ranking, samples, num_layers, removed, kept, policy, notes, metrics, ref,
                                     evaluator, adapter, fingerprint, efficiency, edit, images, arrays, timer)
                if eval_reused:
                    results.extra["evaluation_reused"] = eval_reused
                if cfg.save_model:
                    from topovlm.export import write_checkpoint

                    with timer("save_model"):  # a Hugging Face directory with provenance and a model card
                        write_checkpoint(adapter, job.out_dir / "pruned_model", results)
                with timer("record"):
                    return record(job, results, images)
            finally:
                POOL.release(adapter)  # the unpruned model again, for the next job of this process
    except Exception as err:
        err.topovlm_stage = timer.stage  # type: ignore[attr-defined]
        raise
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def finished(job: Job) -> JobResult | None:
    """The finished result of an identical job to reuse (None: compute this one)."""
    if job.force:
        return None
    done = _completed(job.cache, job.key, job.out_dir, job.cfg.save_model)
    if done is not None and Path(done.out_dir).resolve() == job.out_dir.resolve():
        gone = missing_outputs(job.out_dir, done.linked_outputs)
        if gone:  # a resumed job whose source sweep moved: its outputs are gone, so is the job
            log.warning("%s: outputs %s link into %s, which is gone; recomputing the job", job.out_dir,
                        ", ".join(gone), done.resumed_from)
            return None
    return done


def job_result(job: Job, ranking: Ranking, samples: list, num_layers: int, removed: list[int], kept: list[int],
               policy: str, notes: list[str], metrics: dict[str, Any], ref: dict[str, Any] | None, evaluator: Any,
               adapter: Any, fingerprint: str, efficiency: dict[str, Any], edit: dict[str, Any],
               images: list[Path], arrays: dict[str, str], timer: Timer) -> JobResult:
    """What the stages produced, as the job's result."""
    cfg, r = job.cfg, ranking.result
    return JobResult(
        model=cfg.model.name, task=cfg.task.name, scorer=job.scorer.name, sparsity=float(cfg.sparsity),
        seed=int(cfg.seed), num_layers=num_layers, num_layers_kept=len(kept), removed_layers=removed,
        kept_layers=kept, selection_policy=policy, scores=r.scores, redundancy=r.redundancy,
        metrics=metrics, metric_directions=metric_directions(evaluator, metrics),
        reference_metrics=ref,  # the unpruned model's, same task and seed
        efficiency=efficiency, timings=timer.timings, scores_from_cache=ranking.from_cache,
        after_pruning=edit, protocol={**evaluator.protocol(), "model_inputs": adapter.protocol()},
        config=job.config, versions=recorded_versions(),
        effective={"calibration.n": len(samples), "calibration.batch_size": int(cfg.calibration.batch_size),
                   "task.num_samples": metrics.get("num_samples")},
        identity={"code": job.identity["code"], "model_fingerprint": fingerprint, **ranking.cache},
        diagnostics=[p.name for p in images], arrays=arrays, job_key=job.key, out_dir=str(job.out_dir),
        wandb_group=job.group, extra={**r.extra, **({"selection_warnings": notes} if notes else {})},
    )


def metric_directions(evaluator: Any, metrics: dict[str, Any]) -> dict[str, bool]:
    """Metric -> whether a higher value is better, for every metric the evaluator gives a direction."""
    out = {}
    for name in metrics:
        direction = evaluator.higher_is_better(name)
        if direction is not None:
            out[name] = bool(direction)
    return out


# ------------------------------------------------------------------------------ completed jobs

def _completed(cache_root: Path, key: str, out_dir: Path | None = None,
               needs_model: bool = False) -> JobResult | None:
    """A finished job with the same identity, if its results.json still exists: one already
    in this job's own output dir (a re-run of the same sweep), else the one the index under
    the cache names (the job that computed it). With ``needs_model`` (save_model=true)
    only a job that saved its pruned model counts."""
    index_file = cache_root / "completed" / f"{key}.json"
    remove_stale_tmp(index_file)
    found = None
    if out_dir is not None:
        results = read_result(out_dir / RESULTS_FILE)
        if _is_result_of(results, key):
            results.out_dir = str(out_dir)
            found = results
    index = read_json(index_file, required=("results",))
    if found is None and index is not None:
        results = read_result(Path(index["results"]))
        if _is_result_of(results, key):
            found = results
    if found is not None and index is None and not found.resumed_from:
        _register_completed(cache_root, key, found)  # e.g. a fresh cache: index it for the next time
    if found is not None and needs_model and not (Path(found.out_dir) / "pruned_model").is_dir():
        return None  # the finished job did not save its pruned model; this one must
    return found


def _is_result_of(results: JobResult | None, key: str) -> bool:
    return results is not None and results.job_key == key


def _register_completed(cache_root: Path, key: str, results: JobResult) -> None:
    write_json_atomic(cache_root / "completed" / f"{key}.json",
                      {"results": str(Path(results.out_dir) / RESULTS_FILE)})
