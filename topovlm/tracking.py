"""Weights & Biases logging that can never fail a job.

* ``mode=online`` first checks, within ``PROBE_TIMEOUT_S`` seconds, that the server
  answers; if not, or if ``wandb.init`` fails online, the job logs offline and says so.
* A ``logger.wandb.dir`` that cannot be written is reported loudly and replaced by the
  job's output dir (W&B's own fallback is the system temp dir, silently).
* A job opens its run only when its result is recorded, and finishes it before it
  writes ``results.json``: a killed or failed job leaves no finished-looking run, and
  :func:`set_aside_incomplete_runs` moves whatever a killed job left under
  ``<job>/wandb/.incomplete/``, out of the ``*/wandb/offline-run-*`` glob of
  ``wandb sync``.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 3.0
INCOMPLETE = ".incomplete"


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a multirun's jobs and of its summary run: ``sweep-<date>_<time>``."""
    sweep = Path(sweep_dir)
    return f"sweep-{sweep.parent.name}_{sweep.name}"


def run_name(scorer: str, sparsity: float, *, seed: int | None = None, task: str | None = None,
             model: str | None = None, overrides: Sequence[str] = (), job_num: int | None = None) -> str:
    """``<scorer>-s<sparsity>``, plus seed / task / model when the job's overrides set them
    (i.e. when a sweep may vary them), plus ``j<num>`` in a multirun: unique in a group."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    parts = [scorer, f"s{sparsity:g}"]
    if seed is not None and "seed" in keys:
        parts.append(f"seed{seed}")
    if task and any(k == "task" or k.startswith("task.") for k in keys):
        parts.append(task)
    if model and any(k == "model" or k.startswith("model.") for k in keys):
        parts.append(model)
    if job_num is not None:
        parts.append(f"j{job_num}")
    return "-".join(parts)


def server_reachable(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
    """Whether the W&B server answers HTTP within ``timeout`` seconds (any status counts;
    proxies from the environment are used, as W&B uses them)."""
    import urllib.error
    import urllib.request

    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    outcome: list[BaseException | None] = []

    def ask() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered, with an error status
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - URLError, timeouts, resets
            outcome.append(err)

    worker = threading.Thread(target=ask, daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return False, f"{url} (no answer within {timeout:g} s)"
    return (True, url) if outcome[0] is None else (False, f"{url} ({outcome[0]})")


def _writable_dir(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


class WandbRun:
    """A W&B run as a context manager. Every call is guarded: a W&B error is logged, not raised."""

    def __init__(self, cfg: Any, *, name: str, group: str, job_type: str, config: dict[str, Any], out_dir: Path,
                 tags: Iterable[str] = ()) -> None:
        self.run = None
        self.mode: str | None = None
        self.notes: list[str] = []  # what changed from the configured settings, for results.json
        if not cfg.enabled or cfg.mode == "disabled":
            return
        run_dir = Path(cfg.dir or out_dir)
        if not _writable_dir(run_dir):
            self._warn(f"logger.wandb.dir={cfg.dir} is not writable; this run goes to {out_dir} instead")
            run_dir = Path(out_dir)
        mode = cfg.mode
        if mode == "online":
            ok, where = server_reachable()
            if not ok:
                self._warn(f"W&B server unreachable: {where}; logging offline "
                           f"(upload later with `wandb sync {run_dir}/wandb/offline-run-*`)")
                mode = "offline"
        try:
            import wandb

            os.environ.setdefault("WANDB_SILENT", "true")
            kwargs = dict(project=cfg.project, entity=cfg.entity, group=cfg.group or group, job_type=job_type,
                          name=name, tags=[*cfg.tags, *tags], config=config, dir=str(run_dir),
                          reinit="finish_previous",
                          settings=wandb.Settings(init_timeout=float(getattr(cfg, "init_timeout", None) or 10)))
            try:
                self.run = wandb.init(mode=mode, **kwargs)
            except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
                if mode != "online":
                    raise
                self._warn(f"W&B online init failed ({type(err).__name__}: {err}); logging offline")
                mode = "offline"
                self.run = wandb.init(mode=mode, **kwargs)
            self.mode = mode
            # metrics are plotted against sparsity, so dashboards need no manual set-up
            self.run.define_metric("sparsity")
            self.run.define_metric("*", step_metric="sparsity")
        except Exception as err:  # noqa: BLE001 - logging must not break a job
            log.warning("W&B disabled for this job: %s", err)
            self.run = None

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.notes.append(message)

    def log(self, data: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(data)
        except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
            log.warning("W&B log failed: %s", err)

    def log_images(self, paths: list[Path]) -> None:
        if self.run is None or not paths:
            return
        try:
            import wandb

            self.run.log({f"diagnostics/{p.stem}": wandb.Image(str(p)) for p in paths})
        except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
            log.warning("W&B image log failed: %s", err)

    def log_layer_profile(self, scores: list[float], redundancy: list[float], removed: list[int]) -> None:
        """The scorer's per-layer scores and redundancy as a table (``layers/profile``) and as a
        line plot over layers (``layers/profile_plot``): in a workspace grouped by scorer, each
        scorer's profile side by side."""
        if self.run is None or scores is None or len(scores) == 0:
            return
        try:
            import wandb

            drop = set(removed)
            rows = [[i, float(s), float(r), i in drop] for i, (s, r) in enumerate(zip(scores, redundancy))]
            table = wandb.Table(columns=["layer", "score", "redundancy", "removed"], data=rows)
            layers = list(range(len(rows)))
            plot = wandb.plot.line_series(xs=layers, ys=[[r[1] for r in rows], [r[2] for r in rows]],
                                          keys=["score", "redundancy"], title="per-layer score and redundancy",
                                          xname="layer")
            self.run.log({"layers/profile": table, "layers/profile_plot": plot})
        except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job
            log.warning("W&B layer profile log failed: %s", err)

    def summary(self, data: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.summary.update(data)
        except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
            log.warning("W&B summary failed: %s", err)

    def config_update(self, data: dict[str, Any]) -> None:
        if self.run is None:
            return
        try:
            self.run.config.update(data, allow_val_change=True)
        except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
            log.warning("W&B config update failed: %s", err)

    @property
    def dir(self) -> str | None:
        return None if self.run is None else self.run.dir

    def info(self) -> dict[str, Any] | None:
        """What results.json records of the run (its id and local dir)."""
        if self.run is None:
            return None
        try:
            run_dir = Path(self.run.dir).parent  # <...>/wandb/offline-run-<ts>-<id>/files
            return {"id": self.run.id, "name": self.run.name, "group": self.run.group, "mode": self.mode,
                    "run_dir": str(run_dir), "notes": self.notes}
        except Exception:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
            return None

    def __enter__(self) -> "WandbRun":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.run is not None:
            try:
                self.run.finish(exit_code=1 if exc_type else 0)
            except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
                log.warning("W&B finish failed: %s", err)
            self.run = None


def set_aside_incomplete_runs(job_dir: Path, keep: str | None = None) -> list[Path]:
    """Move every W&B run under ``<job_dir>/wandb/`` except ``keep`` (the run a complete
    ``results.json`` names) into ``wandb/.incomplete/``, so ``wandb sync`` of the sweep's
    glob uploads only runs of complete jobs."""
    wandb_dir = Path(job_dir) / "wandb"
    if not wandb_dir.is_dir():
        return []
    keep_name = Path(keep).name if keep else None
    moved = []
    for run in sorted(wandb_dir.glob("*run-*")):
        if run.name == keep_name or not run.is_dir():
            continue
        dest = wandb_dir / INCOMPLETE / run.name
        dest.parent.mkdir(exist_ok=True)
        shutil.move(str(run), str(dest))
        moved.append(dest)
    for link in ("latest-run", "debug.log", "debug-internal.log"):
        p = wandb_dir / link
        if moved and p.is_symlink() and not p.exists():
            p.unlink()
    if moved:
        log.warning("W&B: %d run(s) not of a complete job (or superseded) set aside in %s",
                    len(moved), wandb_dir / INCOMPLETE)
    return moved


