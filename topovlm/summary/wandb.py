"""The sweep's W&B summary run: job_type ``summary``, in the same group as the sweep's jobs.

It logs the one-row-per-job table and the aggregated table (with each cell's 95% interval
and paired verdict) as ``wandb.Table``, the paired comparison, calibration-variance,
regimes and efficiency tables of summary.md, every
metric-vs-sparsity comparison as a native line plot (``wandb.plot.line_series``: one
line per scorer, starting at the unpruned reference), the agreement table and the PNG
plots as images. Its history has one row per sparsity (``curve/<model>/<task>/<metric>/<scorer>``
against the step metric ``sparsity``), so W&B's own line plots draw one line per scorer. Like the per-job runs it can never fail the sweep: errors are logged.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import Any

from topovlm.summary.build import Summary, csv_rows
from topovlm.summary.load import SummaryJob
from topovlm.summary.statistics import CALIBRATION_CSV, EFFICIENCY_CSV, REGIMES_CSV
from topovlm.stats import VERDICT_BEST, VERDICT_NA, VERDICT_SAME
from topovlm.summary.tables import ordered_metrics, slug
from topovlm.tracking import sweep_group

log = logging.getLogger(__name__)


def wandb_settings_from_jobs(jobs: list[SummaryJob]) -> dict[str, Any]:
    """The logger settings the jobs ran with (a dict like ``logger.wandb``)."""
    for j in jobs:
        cfg = ((j.config or {}).get("logger") or {}).get("wandb")
        if cfg:
            return dict(cfg)
    return {"enabled": False, "mode": "disabled"}


def _group(summary: Summary, settings: dict[str, Any], group: str | None) -> str:
    if group:
        return group
    if settings.get("group"):
        return str(settings["group"])
    logged = Counter(j.wandb_group for j in summary.jobs if j.wandb_group)
    if logged:
        return logged.most_common(1)[0][0]
    src = summary.sources[0] if summary.sources else summary.out_dir
    return sweep_group(Path(src).resolve())


def log_summary_run(summary: Summary, settings: Any, *, group: str | None = None) -> Path | None:
    """Log the summary as one W&B run; returns the run's local directory (None when disabled)."""
    settings = dict(settings) if settings is not None else {}
    if not settings.get("enabled", True) or settings.get("mode", "offline") == "disabled":
        return None
    mode = settings.get("mode") or "offline"
    if mode == "online":  # the same quick probe as the jobs' runs: never a long stall
        from topovlm.tracking import server_reachable

        reachable, where = server_reachable()
        if not reachable:
            log.warning("W&B server unreachable: %s; the summary run is logged offline", where)
            mode = "offline"
    try:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run = wandb.init(
            project=settings.get("project") or "topovlm",
            entity=settings.get("entity"),
            mode=mode,
            group=_group(summary, settings, group),
            job_type="summary",
            name="summary",
            tags=[*(settings.get("tags") or []), "summary"],
            config={"sources": [str(s) for s in summary.sources], "num_jobs": len(summary.jobs),
                    "headline_metric": summary.headline,
                    "scorers": sorted({j.label for j in summary.jobs}),
                    "sparsities": sorted({float(j.sparsity) for j in summary.jobs})},
            # next to summary.csv (not logger.wandb.dir, where the jobs' runs are): sync it from there
            dir=str(summary.out_dir),
            reinit="finish_previous",
        )
    except Exception as err:  # noqa: BLE001 - logging must not break the sweep
        log.warning("W&B summary run not created: %s", err)
        return None
    run_dir = Path(run.dir).parent if getattr(run, "dir", None) else None
    ok = True
    try:
        run.log(_payload(summary, wandb))
        # one history row per sparsity (x = sparsity): native line plots draw one line per scorer
        run.define_metric("sparsity")
        run.define_metric(f"{CURVE_PREFIX}/*", step_metric="sparsity")
        for row in curve_rows(summary):
            run.log(row)
        run.summary.update(_best(summary))
    except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
        ok = False
        log.warning("W&B summary logging failed: %s", err)
    finally:
        try:
            run.finish(exit_code=0 if ok else 1)
        except Exception as err:  # noqa: BLE001 - W&B is best effort: a logging failure never fails the job or the summary
            log.warning("W&B finish failed: %s", err)
    return run_dir


CURVE_PREFIX = "curve"


def curve_key(model: str, task: str, metric: str, label: str) -> str:
    return f"{CURVE_PREFIX}/{slug(model)}/{slug(task)}/{slug(metric)}/{label}"


def curve_rows(summary: Summary) -> list[dict[str, float]]:
    """Each sparsity's mean per scorer (the unpruned reference at sparsity 0 starts every line),
    one dict per sparsity in increasing order: the summary run's history."""
    by_sparsity: dict[float, dict[str, float]] = {}
    for t in summary.tables:
        for lab in sorted(t.cells):
            if t.reference is not None and 0.0 not in t.cells[lab]:
                by_sparsity.setdefault(0.0, {})[curve_key(t.model, t.task, t.metric, lab)] = t.reference.mean
            for sp, st in t.cells[lab].items():
                by_sparsity.setdefault(float(sp), {})[curve_key(t.model, t.task, t.metric, lab)] = st.mean
    return [{"sparsity": sp, **vals} for sp, vals in sorted(by_sparsity.items())]


def _payload(summary: Summary, wandb: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    columns, rows = csv_rows(summary.jobs, ordered_metrics(summary.jobs, list(summary.headlines.values())))
    data["summary/jobs"] = wandb.Table(allow_mixed_types=True, columns=columns, data=[[r.get(c) for c in columns] for r in rows])
    agg_cols = ["model", "task", "metric", "scorer", "sparsity", "mean", "std", "n", "ci_low", "ci_high", "ci_method",
                "verdict"]
    agg = []
    for t in summary.tables:
        if t.reference is not None:
            iv = t.reference_interval
            agg.append([t.model, t.task, t.metric, "unpruned", 0.0, t.reference.mean, t.reference.std, t.reference.n,
                        *_ci(iv), "reference"])
        for lab in sorted(t.cells):
            for s, st in sorted(t.cells[lab].items()):
                agg.append([t.model, t.task, t.metric, lab, s, st.mean, st.std, st.n,
                            *_ci(t.intervals.get(lab, {}).get(s)), t.verdicts.get(lab, {}).get(s)])
        if not t.cells:
            continue
        labels = sorted(t.cells)
        xs, ys = [], []
        for lab in labels:
            row = t.cells[lab]
            x = sorted(row)
            y = [row[s].mean for s in x]
            if t.reference is not None and 0.0 not in row:
                x, y = [0.0] + x, [t.reference.mean] + y
            xs.append(x)
            ys.append(y)
        key = f"plots/{slug(t.model)}/{slug(t.task)}/{slug(t.metric)}"
        data[key] = wandb.plot.line_series(xs=xs, ys=ys, keys=labels, xname="sparsity",
                                           title=f"{t.model} · {t.task}: {t.metric} vs sparsity")
    data["summary/aggregate"] = wandb.Table(allow_mixed_types=True, columns=agg_cols, data=agg)
    data.update(_statistics_tables(summary, wandb))
    ag_rows = [r for a in summary.agreements for r in a.rows()]
    if ag_rows:
        ag_cols = ["model", "kind", "sparsity", "scorer_a", "scorer_b", "value", "std", "n"]
        data["summary/agreement"] = wandb.Table(allow_mixed_types=True, columns=ag_cols, data=[[r.get(c) for c in ag_cols] for r in ag_rows])
    for p in summary.plots:
        data[f"images/{p.stem}"] = wandb.Image(str(p))
    return data


def _ci(iv: Any) -> list[Any]:
    return [iv.low, iv.high, iv.method] if iv is not None else [None, None, None]


def _table(wandb: Any, rows: list[dict[str, Any]]) -> Any:
    columns = list(rows[0])
    return wandb.Table(allow_mixed_types=True, columns=columns, data=[[r.get(c) for c in columns] for r in rows])


def _statistics_tables(summary: Summary, wandb: Any) -> dict[str, Any]:
    """The paired verdicts, calibration variance, regimes and cost tables (as in summary.md)."""
    out: dict[str, Any] = {}
    if summary.stats is None:
        return out
    rows = [c.row() for c in summary.stats.comparisons]
    if rows:
        out["summary/comparison"] = _table(wandb, rows)
    for key, name in (("calibration_variance", CALIBRATION_CSV), ("regimes", REGIMES_CSV), ("efficiency", EFFICIENCY_CSV)):
        path = summary.files.get(key)
        if path is not None and Path(path).is_file():
            import csv

            with open(path, newline="") as f:
                table_rows = list(csv.DictReader(f))
            if table_rows:
                out[f"summary/{Path(name).stem}"] = _table(wandb, [{k: _num(v) for k, v in r.items()} for r in table_rows])
    return out


def _num(v: str) -> Any:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def _best(summary: Summary) -> dict[str, Any]:
    """Run summary: the best scorer at each sparsity on the headline metric."""
    out: dict[str, Any] = {"num_jobs": len(summary.jobs)}
    for t in summary.headline_tables():
        for s in t.sparsities:
            best = t.best(s)
            if best:
                out[f"best/{slug(t.model)}/{slug(t.task)}/{s:g}"] = ", ".join(best)
            same = sorted(lab for lab, v in t.verdicts.items() if v.get(s) == VERDICT_SAME)
            if any(v.get(s) not in (None, VERDICT_NA, VERDICT_BEST) for v in t.verdicts.values()):
                out[f"indistinguishable_from_best/{slug(t.model)}/{slug(t.task)}/{s:g}"] = ", ".join(same) or "(none)"
    return out
