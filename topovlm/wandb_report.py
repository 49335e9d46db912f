"""A W&B Report for a sweep, built with ``wandb-workspaces``.

``topovlm wandb-report SWEEP_DIR --entity E --project P`` reads the sweep's finished jobs
(their results.json: W&B group, tasks, metrics) and builds a report with, per task, the
headline metric against sparsity (one line per scorer: runs grouped by ``job_type``), the
kept-layer count, efficiency against accuracy, and the summary run's tables and plots
(removed-layer map, agreement). Online it saves the report and prints its URL; offline
(``--offline``, or when saving fails) it writes the report spec to ``wandb_report.json``
next to the summary and says how to publish it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from topovlm.results import JobResult
    from topovlm.summary.load import SummaryJob


def _jobs(sweep_dir: Path) -> list["SummaryJob"]:
    """The sweep's finished jobs as the summary reads them (one per job key, with labels)."""
    from topovlm.summary.load import load_jobs

    return [j for j in load_jobs([sweep_dir]) if j.metrics]


def headline_metrics(jobs: list["JobResult"]) -> dict[str, str]:
    """task -> the metric its plots show (accuracy, else the first numeric one)."""
    out: dict[str, str] = {}
    for j in jobs:
        metrics = [k for k, v in j.metrics.items() if isinstance(v, (int, float)) and not k.startswith("num_")]
        if metrics:
            out.setdefault(j.task, "accuracy" if "accuracy" in metrics else metrics[0])
    return out


def curve_keys(jobs: list["SummaryJob"], metrics: dict[str, str]) -> dict[tuple[str, str], list[str]]:
    """(task, metric) -> the summary run's history keys, one per scorer label and model."""
    from topovlm.summary.wandb import curve_key

    out: dict[tuple[str, str], set[str]] = {}
    for j in jobs:
        if j.task in metrics:
            out.setdefault((j.task, metrics[j.task]), set()).add(curve_key(j.model, j.task, metrics[j.task], j.label))
    return {k: sorted(v) for k, v in out.items()}


def build_report(sweep_dir: str | Path, entity: str, project: str, title: str | None = None) -> Any:
    import wandb_workspaces.reports.v2 as wr

    sweep = Path(sweep_dir)
    jobs = _jobs(sweep)
    if not jobs:
        raise FileNotFoundError(f"{sweep}: no finished jobs (results.json with metrics)")
    from topovlm.tracking import sweep_group

    group = jobs[0].wandb_group or sweep_group(sweep)
    runset = wr.Runset(entity=entity, project=project, name=group, filters=f"Metric('Group') == '{group}'",
                       groupby=["run.jobType"])
    blocks: list[Any] = [
        wr.H1(text=title or f"Layer pruning: {group}"),
        wr.P(text=f"{len(jobs)} jobs: scorers {', '.join(sorted({j.scorer for j in jobs}))}, "
                  f"sparsities {', '.join(f'{s:g}' for s in sorted({j.sparsity for j in jobs}))}, "
                  f"models {', '.join(sorted({j.model for j in jobs}))}. One line per scorer (runs grouped by job_type)."),
    ]
    panels: list[Any] = []
    for task, metric in sorted(headline_metrics(jobs).items()):
        panels.append(wr.LinePlot(title=f"{task}: {metric} vs sparsity", x="sparsity", y=[f"metrics/{metric}"],
                                  groupby="jobType", groupby_aggfunc="mean", groupby_rangefunc="stderr"))
        panels.append(wr.ScatterPlot(title=f"{task}: {metric} vs decode speedup",
                                     x="efficiency/decode_speedup", y=f"metrics/{metric}"))
    panels.append(wr.LinePlot(title="decoder layers kept", x="sparsity", y=["num_layers_kept"], groupby="jobType"))
    blocks.append(wr.PanelGrid(runsets=[runset], panels=panels))
    summary = wr.Runset(entity=entity, project=project, name=f"{group} summary",
                        filters=f"Metric('Group') == '{group}' and Metric('JobType') == 'summary'")
    curves = [wr.LinePlot(title=f"{task}: {metric} vs sparsity (means, summary run)", x="sparsity", y=keys)
              for (task, metric), keys in sorted(curve_keys(jobs, headline_metrics(jobs)).items())]
    blocks += [wr.H2(text="Removed layers, ranking agreement, intervals"),
               wr.P(text="Tables and plots of the sweep's summary run (job_type=summary): each scorer's mean "
                         "against sparsity (its history, one row per sparsity), the removed-layer map, "
                         "Kendall tau / Jaccard agreement, intervals and paired verdicts."),
               wr.PanelGrid(runsets=[summary], panels=[*curves, wr.MediaBrowser(media_keys=["plots"])])]
    return wr.Report(entity=entity, project=project, title=title or f"topovlm {group}",
                     description=f"Built by `topovlm wandb-report {sweep}`", blocks=blocks)


def report_spec(report: Any) -> dict[str, Any]:
    """The report's blocks, panels and run sets as JSON (no W&B API call: the project's
    internal id, which the saved form needs, is looked up only when saving)."""
    import dataclasses

    def walk(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {"type": type(obj).__name__}
            for f in dataclasses.fields(obj):
                value = walk(getattr(obj, f.name))
                if not f.name.startswith("_") and value not in (None, [], {}, ""):
                    out[f.name] = value
            return out
        if isinstance(obj, (list, tuple)):
            return [walk(v) for v in obj]
        if isinstance(obj, dict):
            return {str(k): walk(v) for k, v in obj.items()}
        return obj if isinstance(obj, (str, int, float, bool)) or obj is None else str(obj)

    return walk(report)


#: the entity a spec names when none was given (``--offline``); ``--entity`` replaces it on publishing
PLACEHOLDER_ENTITY = "ENTITY"


def sync_globs(sweep_dir: str | Path) -> list[str]:
    """Every ``wandb sync`` glob the report's runs need: each job's runs and the summary run
    (``<sweep>/wandb``, the second panel grid's tables), wherever ``logger.wandb.dir`` put them
    (read from the jobs' results.json), as existing folders of offline runs."""
    import json

    sweep = Path(sweep_dir)
    parents = {p.parent for p in sweep.rglob("offline-run-*") if p.is_dir()}
    for res in sweep.glob("*/results.json"):
        try:
            run_dir = (json.loads(res.read_text()).get("wandb") or {}).get("run_dir")
        except (OSError, ValueError):
            continue
        if run_dir and Path(run_dir).parent.is_dir():
            parents.add(Path(run_dir).parent)
    job_parents = {p for p in parents if p.parent.parent == sweep and p.name == "wandb"}
    out = [f"{sweep}/*/wandb/offline-run-*"] if job_parents else []
    out += sorted(f"{p}/offline-run-*" for p in parents - job_parents)
    return out


def publish(sweep_dir: str | Path, entity: str | None, project: str, offline: bool = False,
            title: str | None = None) -> tuple[str, Path | None]:
    """(URL or a how-to line, spec file when written)."""
    sweep = Path(sweep_dir)
    entity = entity or PLACEHOLDER_ENTITY
    report = build_report(sweep, entity, project, title)
    spec_file = sweep / "wandb_report.json"
    if not offline:
        try:
            report.save()
            return report.url, None
        except Exception as err:  # noqa: BLE001 - no network, no login: keep the spec
            reason = f"saving failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    else:
        reason = "offline"
    from topovlm.results import write_json_atomic

    write_json_atomic(spec_file, report_spec(report))
    globs = sync_globs(sweep)
    sync = " ".join(f"`wandb sync {g}`" for g in globs) if globs else "(no offline runs found under the sweep)"
    return (f"{reason}: report spec written to {spec_file}; once the runs are synced ({sync}), publish it with "
            f"`topovlm wandb-report {sweep} --entity {entity} --project {project}` on a machine with W&B access"), spec_file
