"""Weights & Biases logging that can never fail a job."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class WandbRun:
    """A W&B run as a context manager. Every call is guarded: a W&B error is logged, not raised."""

    def __init__(self, cfg: Any, *, name: str, group: str, job_type: str, config: dict[str, Any], out_dir: Path) -> None:
        self.run = None
        if not cfg.enabled or cfg.mode == "disabled":
            return
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                mode=cfg.mode,
                group=cfg.group or group,
                job_type=job_type,
                name=name,
                tags=list(cfg.tags),
                config=config,
                dir=str(cfg.dir or out_dir),
                reinit="finish_previous",
            )
            # metrics are plotted against sparsity, so dashboards need no manual set-up
            self.run.define_metric("sparsity")
            self.run.define_metric("*", step_metric="sparsity")
        except Exception as err:  # noqa: BLE001 - logging must not break a job
            log.warning("W&B disabled for this job: %s", err)
            self.run = None

    def log(self, data: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(data)
        except Exception as err:  # noqa: BLE001
            log.warning("W&B log failed: %s", err)

    def log_images(self, paths: list[Path]) -> None:
        if self.run is None or not paths:
            return
        try:
            import wandb

            self.run.log({f"diagnostics/{p.stem}": wandb.Image(str(p)) for p in paths})
        except Exception as err:  # noqa: BLE001
            log.warning("W&B image log failed: %s", err)

    def summary(self, data: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(data)
        except Exception as err:  # noqa: BLE001
            log.warning("W&B summary failed: %s", err)

    @property
    def dir(self) -> str | None:
        return None if self.run is None else self.run.dir

    def __enter__(self) -> "WandbRun":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=1 if exc_type else 0)
            except Exception as err:  # noqa: BLE001
                log.warning("W&B finish failed: %s", err)
            self.run = None
