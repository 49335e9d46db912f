"""The Hydra entry point's body: job bookkeeping around :func:`topovlm.runner.run_job`."""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from omegaconf import DictConfig

from topovlm.config import ConfigError

log = logging.getLogger("topovlm")


def _job_dirs() -> tuple[Path, Path | None, str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    if hc.mode == RunMode.MULTIRUN:
        sweep = Path(hc.sweep.dir)
        return out_dir, sweep, f"sweep-{sweep.parent.name}_{sweep.name}"
    return out_dir, None, f"run-{out_dir.parent.name}_{out_dir.name}"


def _remove_if_empty(out_dir: Path) -> None:
    """A job rejected at start-up leaves nothing behind but Hydra's own bookkeeping: drop it."""
    leftovers = [p for p in out_dir.iterdir() if p.name not in (".hydra", "launch.log")] if out_dir.exists() else []
    if not leftovers:
        shutil.rmtree(out_dir, ignore_errors=True)


def main(cfg: DictConfig) -> float | None:
    from topovlm.runner import run_job

    out_dir, sweep_dir, group = _job_dirs()
    try:
        results = run_job(cfg, out_dir, sweep_dir=sweep_dir, group=group)
    except ConfigError as err:
        _remove_if_empty(out_dir)
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    metrics = results["metrics"]
    headline = next((k for k in ("accuracy", "perplexity") if k in metrics), None)
    value = metrics.get(headline) if headline else None
    log.info("%s sparsity=%g removed=%s %s=%s -> %s", results["scorer"], results["sparsity"],
             results["removed_layers"], headline, value, out_dir / "results.json")
    return value
