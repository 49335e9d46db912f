"""The Hydra entry point's body: the job wrapper around :func:`topovlm.runner.run_job`.

Like lightning-hydra-template's ``task_wrapper``: whatever a job raises is logged and
written to ``<job dir>/failed.json`` (error class, message, the stage, the traceback),
the sweep table is rebuilt, and, inside a multirun, the exception goes no further, so
the other jobs run and the summary is written (``topovlm.callbacks`` then makes the
process exit non-zero). A single run keeps its exit codes: 2 for bad config (nothing
left behind), the exception's own for a runtime failure.
"""
from __future__ import annotations

import logging
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from topovlm.config import ConfigError

log = logging.getLogger("topovlm")


@dataclass
class JobInfo:
    out_dir: Path
    sweep_dir: Path | None  # None: a single run
    group: str
    run_name_parts: dict[str, Any]


def _job_info() -> JobInfo:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)
        from topovlm.tracking import sweep_group

        return JobInfo(out_dir, sweep, sweep_group(sweep),
                       {"overrides": overrides, "job_num": hc.job.num})
    return JobInfo(out_dir, None, f"run-{out_dir.parent.name}_{out_dir.name}", {"overrides": overrides})


def _remove_if_empty(out_dir: Path) -> None:
    """A job rejected at start-up leaves nothing behind but Hydra's own bookkeeping: drop it."""
    leftovers = [p for p in out_dir.iterdir() if p.name not in (".hydra", "launch.log")] if out_dir.exists() else []
    if not leftovers:
        shutil.rmtree(out_dir, ignore_errors=True)


def _select(cfg: DictConfig, key: str) -> Any:
    try:
        return OmegaConf.select(cfg, key)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve
        return None


def failure_record(cfg: DictConfig, out_dir: Path, err: BaseException) -> dict[str, Any]:
    from topovlm.config import resolved_config

    try:
        config = resolved_config(cfg)
    except Exception:  # noqa: BLE001 - a bad scorer or an interpolation that cannot resolve: as given
        try:
            config = OmegaConf.to_container(cfg, resolve=True)
        except Exception:  # noqa: BLE001 - an interpolation that cannot resolve
            config = OmegaConf.to_container(cfg, resolve=False)
    return {
        "status": "failed", "error_type": type(err).__name__, "error": str(err),
        "stage": getattr(err, "topovlm_stage", None),
        "traceback": "".join(traceback.format_exception(type(err), err, err.__traceback__)),
        "model": _select(cfg, "model.name"), "task": _select(cfg, "task.name"), "scorer": _select(cfg, "scorer.name"),
        "sparsity": _select(cfg, "sparsity"), "seed": _select(cfg, "seed"), "out_dir": str(out_dir), "config": config,
    }


def record_failure(cfg: DictConfig, info: JobInfo, err: BaseException) -> Path:
    from topovlm.results import rebuild_table, write_failure

    path = write_failure(info.out_dir, failure_record(cfg, info.out_dir, err))
    rebuild_table(info.sweep_dir or info.out_dir)
    return path


def main(cfg: DictConfig) -> float | None:
    from topovlm.runner import run_job
    from topovlm.tracking import run_name

    info = _job_info()
    name = run_name(str(_select(cfg, "scorer.name")), float(cfg.sparsity), seed=_select(cfg, "seed"),
                    task=_select(cfg, "task.name"), model=_select(cfg, "model.name"), **info.run_name_parts)
    try:
        results = run_job(cfg, info.out_dir, sweep_dir=info.sweep_dir, group=info.group, run_name=name)
    except Exception as err:  # noqa: BLE001 - one job's failure is recorded, never the sweep's end
        stage = getattr(err, "topovlm_stage", "?")
        if info.sweep_dir is None and isinstance(err, ConfigError):
            if stage == "validate":  # nothing was started: nothing is left behind
                _remove_if_empty(info.out_dir)
            else:
                record_failure(cfg, info, err)
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(2)
        path = record_failure(cfg, info, err)
        if isinstance(err, ConfigError):
            log.error("job failed (config, stage %s): %s -> %s", stage, err, path)
        else:
            log.exception("job failed (stage %s): %s: %s -> %s", stage, type(err).__name__, err, path)
        if info.sweep_dir is None:
            raise
        return None
    value = optimized_value(cfg, results.metrics)
    log.info("%s sparsity=%g removed=%s %s=%s -> %s", results.scorer, results.sparsity,
             results.removed_layers, cfg.optimized_metric, value, info.out_dir / "results.json")
    return value


def optimized_value(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The job's value of ``optimized_metric``: what ``launch.py`` returns to a Hydra sweeper."""
    metric = str(cfg.optimized_metric)
    value = metrics.get(metric)
    if value is None:  # a sweeper would optimise nothing: say which metrics there are
        log.error("optimized_metric=%s is not among the job's metrics; set it to one of: %s", metric,
                  ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float))))
    return value
