"""Hydra callbacks of a multirun, run in the launching process (basic, joblib, submitit).

Registered in ``conf/config.yaml`` under ``hydra.callbacks``:

* ``guard`` (:class:`SweepGuard`): at sweep start, composes every job's config and runs
  :func:`topovlm.config.validate` on each, before any model loads, and reports every bad
  job at once (``abort_on_bad_config=true`` stops the sweep there, exit 2; by default
  the sweep runs and each bad job becomes a failed row). It also writes
  ``<sweep dir>/capture_plan.json``, every job's capture spec, so that the first calibration
  pass of a model records what all swept scorers need and the other scorers run none
  (:mod:`topovlm.capture_cache`; with ``union_capture=false`` each scorer's pass records its
  own fields, as ``bench/throughput.py --calibration-passes`` compares). At sweep end it rebuilds the
  sweep table from the job dirs, sets aside W&B runs of incomplete jobs, and makes the
  process exit 1 (see ``launch.py``) if any job failed or left no record.
* ``summary`` (:class:`SummaryCallback`): summary.csv, summary.md (with a failures
  section), agreement.csv, plots/, the Markdown table on the terminal and a W&B summary
  run; switch it off with ``hydra.callbacks.summary.enabled=false``. A sweep stopped with
  Ctrl-C still gets the summary of the jobs that finished (written as the process exits;
  without plots), or, if that cannot be done, the command that builds it.
"""
from __future__ import annotations

import atexit
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("topovlm.sweep")

# the launching process's verdict, read by launch.py after Hydra returns
_EXIT_STATUS = {"code": 0}


def exit_status() -> int:
    return _EXIT_STATUS["code"]


def sweep_overrides(config: DictConfig, arguments: list[str] | None = None) -> list[list[str]]:
    """The override lists of every job of the sweep, as Hydra's basic sweeper expands them
    (``hydra.sweeper.params`` first, then the command line, ``arguments`` by default
    ``hydra.overrides.task``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    if arguments is None:
        arguments = list(config.hydra.overrides.task)
    arguments = [f"{k}={v}" for k, v in params.items()] + list(arguments)
    overrides = OverridesParser.create().parse_overrides(arguments)
    return [list(job) for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def job_configs(config: DictConfig, arguments: list[str] | None = None) -> list[tuple[list[str], DictConfig]]:
    """Every job's composed config (without its ``hydra`` node), as the launcher will see it.
    A job whose config does not compose raises :class:`CompositionError` naming it."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    out = []
    for overrides in sweep_overrides(config, arguments):
        try:
            cfg = loader.load_sweep_config(config, overrides)
        except Exception as err:  # noqa: BLE001 - Hydra's composition errors
            raise CompositionError(f"{' '.join(overrides)}\n    -> {err}") from None
        with open_dict(cfg):
            cfg.pop("hydra", None)
        out.append((overrides, cfg))
    return out


class CompositionError(ValueError):
    """A job's config does not compose (Hydra would stop the sweep at that job's batch)."""


def preflight(config: DictConfig, arguments: list[str] | None = None, inputs: bool = True,
              jobs: list[tuple[list[str], DictConfig]] | None = None) -> tuple[int, list[tuple[list[str], str]]]:
    """Validate every job's config (``inputs``: and that its model and datasets are there);
    (number of jobs, [(overrides, message) of bad jobs]). ``jobs``: :func:`job_configs`, if composed."""
    from topovlm.config import ConfigError, validate

    jobs = job_configs(config, arguments) if jobs is None else jobs
    bad = []
    for overrides, cfg in jobs:
        try:
            validate(cfg, inputs=inputs)
        except ConfigError as err:
            bad.append((overrides, str(err)))
    return len(jobs), bad


def plan_captures(sweep_dir: Path, jobs: list[tuple[list[str], DictConfig]]) -> dict[str, Any]:
    """``capture_plan.json`` in the sweep dir: the capture spec of every job whose config is
    valid (a bad job fails on its own), per model and calibration set; returns the plan."""
    from topovlm.capture_cache import capture_plan, write_capture_plan
    from topovlm.config import ConfigError, validate

    valid = []
    for _, cfg in jobs:
        try:
            valid.append((cfg, validate(cfg, inputs=False)))  # the scorer as the job builds it
        except ConfigError:
            continue
    plan = capture_plan(valid)
    write_capture_plan(sweep_dir, plan)
    for group in plan["groups"].values():
        passes: dict[bool, list[str]] = {}
        for planned in group["scorers"]:
            passes.setdefault(planned["eager_attention"], []).append(planned["scorer"])
        text = " and ".join(f"{', '.join(dict.fromkeys(names))}{' (eager attention)' if eager else ''}"
                            for eager, names in sorted(passes.items()))
        log.info("calibration of %s on %s: %d pass%s, for %s (%s)", group["model"], group["calibration"],
                 len(passes), "" if len(passes) == 1 else "es", text, Path(sweep_dir) / "capture_plan.json")
    return plan


def _report_missing_outputs(sweep_dir: Path) -> list[Path]:
    """Job dirs whose result was resumed from a job that has since moved or gone: their
    linked outputs (samples, diagnostics) dangle. Said on the terminal; the numbers stay."""
    from topovlm.results import RESULTS_FILE, job_dirs, missing_outputs, read_result

    out = []
    for d in job_dirs(sweep_dir, started=True):
        res = read_result(d / RESULTS_FILE)
        gone = missing_outputs(d, res.linked_outputs) if res is not None and res.resumed_from else []
        if gone:
            out.append(d)
            log.warning("%s was resumed from %s, which is gone or moved: its outputs %s are missing; restore that "
                        "dir, or rerun this job with +force=true to recompute them", d, res.resumed_from, ", ".join(gone))
    return out


def fmt_duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def eta_text(durations: list[float], remaining: int | None) -> str:
    """``; about 4.2 min left`` from the mean time of the jobs finished so far (which were
    cheaper when they reused a cache: a rough figure), or nothing before the first finishes."""
    if not durations or remaining is None or remaining <= 0:
        return ""
    return f" (about {fmt_duration(remaining * sum(durations) / len(durations))} left)"


def remove_locks(sweep_dir: Path) -> list[Path]:
    """The sweep table's and job dirs' ``.lock`` files (filelock leaves them behind): removed
    once the sweep has ended, so the sweep dir holds results only. Each is removed while held,
    and one another process holds (a second shell's sweep into the same dir) is left alone."""
    from filelock import FileLock, Timeout

    out = []
    for path in [*sweep_dir.glob("*.lock"), *sweep_dir.glob("*/*.lock")]:
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        try:
            path.unlink(missing_ok=True)
            out.append(path)
        finally:
            lock.release()
    return out


class SweepGuard(Callback):
    def __init__(self, preflight: bool = True, abort_on_bad_config: bool = False, union_capture: bool = True) -> None:
        self.preflight = preflight
        self.abort_on_bad_config = abort_on_bad_config
        self.union_capture = union_capture
        self.expected: int | None = None
        # jobs finished in this process and their wall times (Hydra's basic launcher runs every
        # job here; a joblib / submitit worker sees only its own): the time-left estimate
        self.durations: list[float] = []
        self._job_start: float | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """``[job k/N] scorer=... sparsity=...``, and the time left once a job has finished."""
        num = OmegaConf.select(config, "hydra.job.num")
        if num is None:  # a single run
            return
        self._job_start = time.perf_counter()
        total = self.expected
        what = " ".join(OmegaConf.select(config, "hydra.overrides.task", default=[]) or [])
        log.info("[job %d/%s] %s%s", int(num) + 1, total if total is not None else "?", what,
                 eta_text(self.durations, total - int(num) if total is not None else None))

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._job_start is None:
            return
        took = time.perf_counter() - self._job_start
        self.durations.append(took)
        self._job_start = None
        num = OmegaConf.select(config, "hydra.job.num")
        log.info("[job %d/%s] done in %s", int(num) + 1, self.expected if self.expected is not None else "?",
                 fmt_duration(took))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _EXIT_STATUS["code"] = 0
        self.durations, self._job_start = [], None
        from topovlm.capture_cache import PLAN_FILE

        # an earlier sweep's plan in this dir is not this one's (a plan written below replaces it)
        (Path(config.hydra.sweep.dir) / PLAN_FILE).unlink(missing_ok=True)
        if not (self.preflight or self.union_capture):
            return
        if OmegaConf.select(config, "hydra.sweeper._target_", default="").split(".")[-1] != "BasicSweeper":
            log.warning("preflight and the shared calibration pass skipped: they expand the sweep like Hydra's "
                        "basic sweeper only (each scorer records its own calibration pass)")
            return
        try:
            jobs = job_configs(config)
        except CompositionError as err:
            if not self.preflight:  # Hydra reports it when it reaches that job
                return
            print(f"config error: a job of this sweep does not compose, nothing was run:\n  {err}", file=sys.stderr)
            sys.exit(2)
        if self.preflight:
            self._preflight(config, jobs)
        if self.union_capture:
            try:
                plan_captures(Path(config.hydra.sweep.dir), jobs)
            except Exception:  # noqa: BLE001 - the jobs run without it, each recording its own pass
                log.warning("no shared calibration pass planned; each scorer records its own", exc_info=True)

    def _preflight(self, config: DictConfig, jobs: list[tuple[list[str], DictConfig]]) -> None:
        self.expected, bad = preflight(config, jobs=jobs)
        if not bad:
            log.info("preflight: the config of all %d jobs is valid", self.expected)
            return
        lines = "\n".join(f"  {' '.join(o)}\n    -> {msg}" for o, msg in bad)
        log.error("preflight: %d of %d jobs have a bad config (checked before any model loads):\n%s\n%s",
                  len(bad), self.expected, lines,
                  "stopping (abort_on_bad_config=true)" if self.abort_on_bad_config
                  else "they will be recorded as failed jobs; the others run")
        if self.abort_on_bad_config:
            print(f"config error in {len(bad)} of {self.expected} jobs:\n{lines}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from topovlm.results import RESULTS_FILE, job_dirs, read_result, rebuild_table
        from topovlm.tracking import set_aside_incomplete_runs

        sweep_dir = Path(config.hydra.sweep.dir)
        for d in job_dirs(sweep_dir, started=True):
            res = read_result(d / RESULTS_FILE)
            set_aside_incomplete_runs(d, keep=(res.wandb or {}).get("run_dir") if res is not None else None)
        rows = rebuild_table(sweep_dir)
        _report_missing_outputs(sweep_dir)
        remove_locks(sweep_dir)  # every job has ended (and the summary, called before this): nobody holds them
        failed = [r for r in rows if r.get("status") == "failed"]
        missing = (self.expected - len(rows)) if self.expected is not None else 0
        if failed or missing > 0:
            _EXIT_STATUS["code"] = 1
            lines = [f"  {r['out_dir']}: [{r.get('stage')}] {r.get('error_type')}: {r.get('error')}" for r in failed]
            if missing > 0:
                lines.append(f"  {missing} job(s) left no result and no failure record (killed?)")
            print(f"\n{len(failed)} of {len(rows) + max(missing, 0)} jobs failed "
                  f"({sweep_dir / 'results.jsonl'}):\n" + "\n".join(lines), file=sys.stderr, flush=True)


class _Interrupted:
    """Ctrl-C during a sweep: Hydra never calls ``on_multirun_end``, so the summary of what
    finished is written when the process exits (``atexit``), only after a SIGINT seen
    while the sweep ran (an ordinary exception or a clean end leaves it alone)."""

    def __init__(self) -> None:
        self.sweep_dir: Path | None = None
        self.metric: str | None = None
        self.enabled = True
        self.state = "idle"         # idle | running | summarizing | done
        self.sigint = False
        self._previous: Any = None
        self._registered = False

    def start(self, sweep_dir: Path, enabled: bool, metric: str | None) -> None:
        self.sweep_dir, self.enabled, self.metric = sweep_dir, enabled, metric
        self.state, self.sigint = "running", False
        if not self._registered:
            atexit.register(self.at_exit)
            self._registered = True
        if threading.current_thread() is threading.main_thread():
            current = signal.getsignal(signal.SIGINT)
            if current != self._on_sigint:  # still ours after a sweep that raised: keep the original
                self._previous = current
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        self.sigint = True
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        else:  # SIG_DFL / SIG_IGN / None: what Python does by default
            raise KeyboardInterrupt

    def end(self) -> None:
        self.state = "done"
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def at_exit(self) -> None:
        if not self.sigint or self.state == "done" or self.sweep_dir is None:
            return
        sweep_dir, how = self.sweep_dir, f"`topovlm summarize {self.sweep_dir}`"
        if self.state == "summarizing" or not self.enabled:
            print(f"\nsweep interrupted: no summary written; build it with {how}", file=sys.stderr, flush=True)
            return
        self.state = "done"
        try:
            from topovlm.results import rebuild_table
            from topovlm.summary import build_summary

            rows = rebuild_table(sweep_dir)
            finished = sum(r.get("status") == "ok" for r in rows)
            print(f"\nsweep interrupted: writing the summary of the {finished} finished job(s) "
                  f"(without plots) to {sweep_dir}; jobs that did not finish are not in it", file=sys.stderr, flush=True)
            summary = build_summary([sweep_dir], sweep_dir, metric=self.metric, plots=False)
            print(f"summary of {len(summary.jobs)} finished job(s): {summary.files.get('markdown')}; "
                  f"rerun the sweep to finish it, or {how} to rebuild the summary", file=sys.stderr, flush=True)
        except BaseException as err:  # noqa: BLE001 - a second Ctrl-C or a summary error: say how
            print(f"sweep interrupted: no summary written ({type(err).__name__}: {err}); build it with {how}",
                  file=sys.stderr, flush=True)


_INTERRUPTED = _Interrupted()


class SummaryCallback(Callback):
    """On multirun end: summary.csv, summary.md, agreement.csv, plots/ in the sweep dir, the
    Markdown table on the terminal, and a W&B summary run when the logger is on."""

    def __init__(self, enabled: bool = True, plots: bool = True, wandb: bool = True,
                 metric: str | None = None) -> None:
        self.enabled = enabled
        self.plots = plots
        self.wandb = wandb
        self.metric = metric

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _INTERRUPTED.start(Path(config.hydra.sweep.dir), self.enabled, self.metric)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if _INTERRUPTED.state == "running":
            _INTERRUPTED.state = "summarizing"
        self._summarize(config)  # a Ctrl-C in here leaves state "summarizing": the exit says how to build it
        _INTERRUPTED.end()

    def _summarize(self, config: DictConfig) -> None:
        if not self.enabled:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            from topovlm.progress import stage
            from topovlm.summary import build_summary

            with stage("sweep summary", logger=log):
                summary = build_summary([sweep_dir], sweep_dir, metric=self.metric, plots=self.plots)
        except FileNotFoundError as err:
            log.warning("no summary: %s", err)
            return
        except Exception:  # noqa: BLE001 - the jobs are done; a summary bug must not hide them
            log.exception("sweep summary failed; rebuild it with `topovlm summarize %s`", sweep_dir)
            return
        print("\n" + summary.terminal_markdown() + "\n", flush=True)
        if any(f.get("status") != "failed" for f in summary.failures):  # results it could not trust
            _EXIT_STATUS["code"] = 1
        if not self.wandb or not summary.jobs:
            return
        settings = OmegaConf.select(config, "logger.wandb")
        if settings is None:
            return
        from topovlm.summary.wandb import log_summary_run
        from topovlm.tracking import set_aside_incomplete_runs, sweep_group

        settings = OmegaConf.to_container(settings, resolve=True)
        set_aside_incomplete_runs(sweep_dir)  # earlier (killed or superseded) summary runs leave the sync glob
        run_dir = log_summary_run(summary, settings, group=settings.get("group") or sweep_group(sweep_dir))
        if run_dir is not None:
            log.info("W&B summary run: %s", run_dir)
        if settings.get("report") and settings.get("mode") == "online" and settings.get("entity"):
            from topovlm.wandb_report import publish

            try:  # a report that cannot be saved leaves its spec next to the summary
                log.info("W&B report: %s", publish(sweep_dir, settings["entity"], settings.get("project") or "topovlm")[0])
            except Exception:  # noqa: BLE001 - the sweep's results are written; the report is extra
                log.exception("W&B report failed; build it with `topovlm wandb-report %s`", sweep_dir)
        elif settings.get("report"):
            log.warning("logger.wandb.report=true needs logger.wandb.mode=online and logger.wandb.entity; "
                        "build it later with `topovlm wandb-report %s --entity E`", sweep_dir)
