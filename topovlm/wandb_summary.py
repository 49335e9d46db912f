"""Moved to :mod:`topovlm.summary.wandb`; these names stay importable from here."""
from __future__ import annotations

from topovlm.summary.wandb import log_summary_run, sweep_group, wandb_settings_from_jobs

__all__ = ["log_summary_run", "sweep_group", "wandb_settings_from_jobs"]
