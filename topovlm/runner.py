"""One job of a sweep: load, calibrate, score, select, prune, evaluate, record.

Hydra's default launcher runs every job of a multirun in this one process, so the job
always closes its W&B run and frees the model, even when it raises.
"""
from __future__ import annotations

import gc
import inspect
import logging
import pickle
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from topovlm import samples as job_samples
from topovlm.capture import CaptureCache, _atomic_save, _digest, model_fingerprint
from topovlm.config import ConfigError, validate
from topovlm.data.sources import dataset_id, load_samples
from topovlm.efficiency import EfficiencySettings, JobEfficiency, flat_numeric
from topovlm.pruning import remove_layers
from topovlm.registry import get_scorer_class
from topovlm.results import RESULTS_FILE, SWEEP_TABLE, append_row, load_results, versions, write_json_atomic
from topovlm.scoring import LayerScorer, ScoreResult, ScoringContext
from topovlm.selection import SelectionConfig, select_layers
from topovlm.tracking import WandbRun

log = logging.getLogger(__name__)
# keys that change how a job is logged or stored, not what it computes
_NOT_IDENTITY = ("logger", "force", "save_model", "cache_dir", "reference", "num_threads")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_scorer(scorer_cfg: DictConfig | dict) -> LayerScorer:
    """Scorer from its config: ``name`` (registry) or ``_target_``, other keys = hyperparameters."""
    params = OmegaConf.to_container(scorer_cfg, resolve=True) if isinstance(scorer_cfg, DictConfig) else dict(scorer_cfg)
    name = params.pop("name", None)
    target = params.pop("_target_", None)
    if target:
        import hydra.utils

        cls = hydra.utils.get_class(target)
    else:
        try:
            cls = get_scorer_class(name)
        except KeyError as err:
            raise ConfigError(f"scorer={name!r}: {err.args[0]}") from None
    try:
        return cls(**params)
    except TypeError as err:
        allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        raise ConfigError(f"scorer={name}: {err}; its parameters are: {', '.join(allowed) or '(none)'}") from None
    except ValueError as err:
        raise ConfigError(f"scorer={name}: {err}") from None


def job_key(cfg: DictConfig) -> str:
    """Identity of a job's result: the resolved config minus logging/storage switches, plus
    the identity of the weights where it is cheap to know (the embedded model's committed file)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    for k in _NOT_IDENTITY:
        data.pop(k, None)
    if cfg.model.source == "embedded":
        from topovlm.default_model.build import weights_digest

        data["weights"] = weights_digest()
    return _digest(data)


@contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[phase] = timings.get(phase, 0.0) + time.perf_counter() - start


def _score_cached(scorer: LayerScorer, capture_fn: Any, cache_root: Path, capture_key: str,
                  ctx: ScoringContext) -> tuple[ScoreResult, bool]:
    """A sweep over sparsities scores once: the ranking is cached per (capture, scorer, seed)."""
    path = cache_root / "scores" / capture_key / f"{scorer.name}-{_digest([scorer.params(), ctx.seed])}.pkl"
    if scorer.cacheable and path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f), True
    result = scorer.score(capture_fn(), ctx)
    if scorer.cacheable:
        _atomic_save(path, lambda p: p.write_bytes(pickle.dumps(result)))
    return result, False


def run_job(cfg: DictConfig, out_dir: Path, *, sweep_dir: Path | None = None, group: str = "local") -> dict[str, Any]:
    """Run one (model, scorer, sparsity, task) job; return the results dict (also in results.json)."""
    validate(cfg)
    scorer = build_scorer(cfg.scorer)
    try:
        scorer.check_config(cfg)  # before the model loads: a doomed run fails in a second
    except ValueError as err:
        raise ConfigError(f"scorer={scorer.name}: {err}") from None
    selection = SelectionConfig(**OmegaConf.to_container(cfg.selection, resolve=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    key = job_key(cfg)
    cache_root = Path(cfg.cache_dir)

    force = bool(OmegaConf.select(cfg, "force", default=False))
    done = None if force else _completed(cache_root, key, out_dir)
    if done is not None and cfg.save_model and not (Path(done["out_dir"]) / "pruned_model").is_dir():
        done = None  # the finished job did not save its pruned model; this one must
    if done is not None:
        log.info("job %s already complete (%s); skipping (+force=true recomputes)", key, done.get("out_dir"))
        if Path(done["out_dir"]).resolve() == out_dir.resolve():
            return done  # re-run of the same sweep dir: its results.json and table row are already there
        done = {**done, "resumed_from": done.get("out_dir"), "out_dir": str(out_dir)}
        write_json_atomic(out_dir / RESULTS_FILE, done)
        _append_sweep_row(sweep_dir or out_dir, done)
        return done
    # a results.json left here by an earlier job (another config, or +force=true) must not
    # outlive this one: until this job writes its own, the dir holds nothing that looks complete
    (out_dir / RESULTS_FILE).unlink(missing_ok=True)

    from topovlm.adapters.loading import load_adapter
    from topovlm.evaluation import build_evaluator

    evaluator = build_evaluator(cfg.task)
    seed_everything(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    timings: dict[str, float] = {}
    name = f"{scorer.name}-s{cfg.sparsity:g}"
    config = OmegaConf.to_container(cfg, resolve=True)
    adapter = None
    with WandbRun(cfg.logger.wandb, name=name, group=group, job_type=scorer.name, config=config, out_dir=out_dir) as wb:
        try:
            # efficiency: the job's peak-memory window starts before loading; the unpruned model's
            # numbers are measured before pruning (cached per model and machine under cache_dir)
            eff = JobEfficiency(EfficiencySettings.from_cfg(OmegaConf.select(cfg, "efficiency", default=None),
                                                            cfg.model.source), cache_root, cfg.model.name, cfg.model.device)
            with _timed(timings, "load_model"):
                adapter = load_adapter(cfg.model)
            num_layers = adapter.num_layers
            eff.model_key = f"{cfg.model.name}-{model_fingerprint(adapter)}"
            with _timed(timings, "efficiency"):
                eff.measure_baseline(adapter)
            cal = cfg.calibration
            samples_fn = lambda: load_samples(cal.dataset, n=cal.n, seed=cal.seed)  # noqa: E731
            capture_key = CaptureCache.key(model_fingerprint(adapter), dataset_id(cal.dataset, cal.n, cal.seed))
            cache = CaptureCache(cache_root / "captures")
            ctx = ScoringContext(seed=cfg.seed, num_layers=num_layers, out_dir=out_dir)

            def capture_fn() -> Any:
                with _timed(timings, "capture"):
                    return cache.get(capture_key, lambda: adapter, samples_fn, scorer.capture_spec(), cal.batch_size)

            with _timed(timings, "score"):
                result, from_cache = _score_cached(scorer, capture_fn, cache_root, capture_key, ctx)
            if len(result.scores) != num_layers:
                raise RuntimeError(f"scorer {scorer.name} returned {len(result.scores)} scores for {num_layers} layers")
            timings["score"] -= timings.get("capture", 0.0)

            with _timed(timings, "select_prune"):
                removed, policy = select_layers(result.redundancy, cfg.sparsity, selection,
                                                scorer.default_policy, result.block_cost)
                if cfg.sparsity == 0 and policy != "threshold":
                    removed = []
            reference_file = cache_root / "reference" / f"{eff.model_key}-{_digest([config['task'], cfg.seed])}.json"
            reference = load_results(reference_file)
            # --- per-sample records (topovlm/samples.py): the unpruned model's records are cached
            # beside its metrics; a cached reference without them is evaluated once more ---------
            if removed and cfg.reference and job_samples.load_reference(reference_file) is None \
                    and getattr(evaluator, "sample_records", None) is not None:
                with _timed(timings, "reference_evaluate"):
                    reference = evaluator.evaluate(adapter)
                write_json_atomic(reference_file, reference)
                job_samples.save_reference(reference_file, evaluator, cfg.task.name)
            # --- end per-sample records ------------------------------------------------------
            if removed and reference is None and cfg.reference:
                with _timed(timings, "reference_evaluate"):  # the unpruned model, once per model/task/seed
                    reference = evaluator.evaluate(adapter)
                write_json_atomic(reference_file, reference)
            with _timed(timings, "select_prune"):
                kept = remove_layers(adapter, removed) if removed else list(range(num_layers))
            edit: dict[str, Any] = {}
            if removed:
                with _timed(timings, "after_pruning"):
                    edit = scorer.after_pruning(adapter, removed, samples_fn(), ctx)

            with _timed(timings, "evaluate"):
                metrics = evaluator.evaluate(adapter)
            # --- per-sample records (topovlm/samples.py): samples.jsonl, joined with the reference -
            job_samples.write_job_samples(out_dir, evaluator, cfg.task.name, reference_file, unpruned=not removed,
                                          wandb_run=wb.run, artifact_name=f"samples-{name}-{key[:8]}")
            # --- end per-sample records ------------------------------------------------------
            if not removed:
                reference = metrics
                write_json_atomic(reference_file, metrics)
            with _timed(timings, "efficiency"):
                efficiency = eff.finish(adapter, pruned=bool(removed), eval_wall_time_s=timings.get("evaluate"),
                                        original_layers=num_layers)
            protocol = {**evaluator.protocol(), "model_inputs": adapter.protocol()}  # lmms-eval parity

            with _timed(timings, "diagnostics"):
                images = scorer.write_diagnostics(result, out_dir)
                for arr_name, arr in result.arrays.items():
                    np.savez_compressed(out_dir / f"{arr_name}.npz", **{arr_name: arr})
                if cfg.save_model:
                    adapter.save_pretrained(out_dir / "pruned_model")

            results: dict[str, Any] = {
                "model": cfg.model.name,
                "task": cfg.task.name,
                "scorer": scorer.name,
                "sparsity": float(cfg.sparsity),
                "seed": int(cfg.seed),
                "num_layers": num_layers,
                "num_layers_kept": len(kept),
                "removed_layers": removed,
                "kept_layers": kept,
                "selection_policy": policy,
                "scores": result.scores,
                "redundancy": result.redundancy,
                "metrics": metrics,
                "reference_metrics": reference,  # the unpruned model's, same task and seed
                "efficiency": efficiency,
                "timings": timings,
                "scores_from_cache": from_cache,
                "after_pruning": edit,
                "protocol": protocol,
                "config": config,
                "versions": versions(),
                "job_key": key,
                "out_dir": str(out_dir),
                "wandb_group": cfg.logger.wandb.group or group,
                **result.extra,
            }
            wb.log({"sparsity": float(cfg.sparsity), **{f"metrics/{k}": v for k, v in metrics.items()},
                    "num_layers_kept": len(kept), **{f"efficiency/{k}": v for k, v in flat_numeric(efficiency).items()}})
            if wb.run is not None:  # the evaluation protocol belongs with the run's config
                try:
                    wb.run.config.update({"protocol": protocol}, allow_val_change=True)
                except Exception as err:  # noqa: BLE001 - logging must not break a job
                    log.warning("W&B config update failed: %s", err)
            wb.log_images(images)
            wb.summary({"removed_layers": removed, "selection_policy": policy})
            write_json_atomic(out_dir / RESULTS_FILE, results)  # last: its presence means complete
            _register_completed(cache_root, key, results)
            _append_sweep_row(sweep_dir or out_dir, results)
            return results
        finally:
            adapter = None
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _append_sweep_row(sweep_dir: Path, results: dict[str, Any]) -> None:
    row = {k: results.get(k) for k in ("model", "task", "scorer", "sparsity", "seed", "num_layers",
                                        "num_layers_kept", "removed_layers", "selection_policy", "out_dir")}
    row.update({f"metrics/{k}": v for k, v in results.get("metrics", {}).items()})
    append_row(sweep_dir / SWEEP_TABLE, row)


def _completed(cache_root: Path, key: str, out_dir: Path | None = None) -> dict[str, Any] | None:
    """A finished job with the same identity, if its results.json still exists: the one the
    index under the cache names, else one already in this job's own output dir (a re-run of
    the same sweep with a fresh cache); the latter is indexed for the next time."""
    index = load_results(cache_root / "completed" / f"{key}.json")
    if index is not None and index.get("results"):
        results = load_results(Path(index["results"]))
        if _is_result_of(results, key):
            return results
    if out_dir is not None:
        results = load_results(out_dir / RESULTS_FILE)
        if _is_result_of(results, key):
            results["out_dir"] = str(out_dir)
            _register_completed(cache_root, key, results)
            return results
    return None


def _is_result_of(results: dict[str, Any] | None, key: str) -> bool:
    return isinstance(results, dict) and results.get("job_key") == key and "metrics" in results


def _register_completed(cache_root: Path, key: str, results: dict[str, Any]) -> None:
    write_json_atomic(cache_root / "completed" / f"{key}.json",
                      {"results": str(Path(results["out_dir"]) / RESULTS_FILE)})
