"""Hydra callbacks: the sweep summary when a multirun ends.

Registered in ``conf/config.yaml`` under ``hydra.callbacks.summary``; switch it off with
``hydra.callbacks.summary.enabled=false``. It runs in the launching process, after every
launcher (basic, joblib, submitit) has collected its jobs, and reads their
``results.json`` files from the sweep directory, so it needs no state from the jobs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("topovlm.summary")


class SummaryCallback(Callback):
    """On multirun end: summary.csv, summary.md, agreement.csv, plots/ in the sweep dir, the
    Markdown table on the terminal, and a W&B summary run when the logger is on."""

    def __init__(self, enabled: bool = True, plots: bool = True, wandb: bool = True,
                 metric: str | None = None) -> None:
        self.enabled = enabled
        self.plots = plots
        self.wandb = wandb
        self.metric = metric

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            from topovlm.summary import build_summary

            summary = build_summary([sweep_dir], sweep_dir, metric=self.metric, plots=self.plots)
        except FileNotFoundError as err:
            log.warning("no summary: %s", err)
            return
        except Exception:  # noqa: BLE001 - the jobs are done; a summary bug must not hide them
            log.exception("sweep summary failed; rebuild it with `topovlm summarize %s`", sweep_dir)
            return
        print("\n" + summary.terminal_markdown() + "\n", flush=True)
        if not self.wandb:
            return
        settings = OmegaConf.select(config, "logger.wandb")
        if settings is None:
            return
        from topovlm.wandb_summary import log_summary_run, sweep_group

        settings = OmegaConf.to_container(settings, resolve=True)
        run_dir = log_summary_run(summary, settings, group=settings.get("group") or sweep_group(sweep_dir))
        if run_dir is not None:
            log.info("W&B summary run: %s", run_dir)
