"""The summary of one or more sweeps: :func:`build_summary` reads the jobs, builds every
section and writes summary.csv, summary.md, agreement.csv, the statistics CSVs and the plots.
A results.json it cannot trust (unreadable, another layout, metrics its samples.jsonl
contradict) is in no table: it is listed under Failures, with the failed jobs."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from topovlm.results import RESULTS_FILE
from topovlm.summary.agreement import Agreement, agreement
from topovlm.summary.load import (PLOTS_DIR, SummaryJob, failures_markdown, flatten, groups, load_failures,
                                  load_jobs)
from topovlm.summary.plots import write_plots
from topovlm.summary.statistics import (Statistics, build_statistics, comparison_markdown, job_interval_columns,
                                        statistics_markdown, write_statistics_csvs)
from topovlm.summary.verdict import verdict_markdown
from topovlm.summary.validity import VALIDITY_CSV, Validity, validity, validity_rows
from topovlm.summary.tables import (MetricTable, headline_metric, metric_table, ordered_metrics, removed_markdown,
                                    write_csv, write_text)

log = logging.getLogger("topovlm.summary")

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
AGREEMENT_CSV = "agreement.csv"
CSV_FIRST = ["model", "task", "scorer", "scorer_name", "sparsity", "seed", "calibration_seed", "num_layers",
             "num_layers_kept", "removed_layers", "selection_policy"]
CSV_LAST = ["time_total_s", "resumed_from", "job_key", "out_dir"]


def csv_rows(jobs: list[SummaryJob], metrics: list[str], intervals: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per job; ``intervals``: each metric's 95% interval over the job's samples too
    (``<metric>/ci_low``, ``<metric>/ci_high``) and its agreement with the unpruned model."""
    flat_eff = [flatten(j.efficiency or {}) for j in jobs]
    eff = sorted({k for e in flat_eff for k, v in e.items() if v is None or isinstance(v, (int, float, str))})
    ci_cols = ([c for m in metrics for c in (m, f"{m}/ci_low", f"{m}/ci_high")]
               + ["agreement_with_unpruned", "agreement_ci_low", "agreement_ci_high"]) if intervals else metrics
    columns = CSV_FIRST + ci_cols + [f"efficiency/{k}" for k in eff] + CSV_LAST
    rows = []
    for j in sorted(jobs, key=_job_order):
        job_eff = flatten(j.efficiency or {})
        row = {
            "model": j.model, "task": j.task, "scorer": j.label, "scorer_name": j.scorer,
            "sparsity": float(j.sparsity), "seed": j.seed,
            "calibration_seed": j.flat.get("calibration.seed"),
            "num_layers": j.num_layers, "num_layers_kept": j.num_layers_kept,
            "removed_layers": " ".join(str(i) for i in j.removed_layers or []),
            "selection_policy": j.selection_policy,
            "time_total_s": round(sum((j.timings or {}).values()), 3) if j.timings else None,
            "resumed_from": j.resumed_from, "job_key": j.job_key, "out_dir": j.out_dir,
        }
        row.update({m: j.metrics.get(m) for m in metrics})
        if intervals:
            row.update(job_interval_columns(j, metrics))
        row.update({f"efficiency/{k}": job_eff.get(k) for k in eff})
        rows.append(row)
    return columns, rows


def tables_markdown(tables: list[MetricTable]) -> list[str]:
    """The metric tables of one (model, task): the legend with the first table only, and the
    exploratory tables' family note once, with the first of them."""
    out, family_said = [], False
    for i, t in enumerate(tables):
        out.append(t.markdown(legend=i == 0, family=not family_said))
        family_said = family_said or (i > 0 and t.confirmatory is False)
    return out


def efficiency_note(jobs: list[SummaryJob], model: str, task: str) -> list[str]:
    """Why a (model, task) has no cost table: what its jobs recorded as the reason they timed nothing."""
    effs = [j.efficiency or {} for j in jobs if (j.model, j.task) == (model, task)]
    if any("prefill_latency_s" in e for e in effs):
        return []
    reasons = sorted({str(e["skipped"]) for e in effs if e.get("skipped")})
    return [f"Efficiency: not measured ({'; '.join(reasons)})."] if reasons else []


def _job_order(j: SummaryJob) -> tuple:
    return (j.model, j.task, j.label, float(j.sparsity), repr(j.draw))


@dataclass
class Summary:
    jobs: list[SummaryJob]
    out_dir: Path
    headlines: dict[tuple[str, str], str | None]  # (model, task) -> its headline metric
    tables: list[MetricTable]           # every metric of every (model, task)
    agreements: list[Agreement]
    files: dict[str, Path] = field(default_factory=dict)   # name -> path of what was written
    plots: list[Path] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    stats: Statistics | None = None     # intervals, paired verdicts, draws, regimes, cost
    #: failed.json records, then results.json files left out as unreadable or inconsistent
    failures: list[dict[str, Any]] = field(default_factory=list)
    #: each scorer against the oracle's measured damage, per (model, task) with an oracle job
    validity: list[Validity] = field(default_factory=list)

    @property
    def headline(self) -> str | None:
        """The headline metric most (model, task) groups use."""
        names = [h for h in self.headlines.values() if h]
        return max(names, key=names.count) if names else None

    def headline_tables(self) -> list[MetricTable]:
        return [t for t in self.tables if t.metric == self.headlines.get((t.model, t.task))]

    def terminal_markdown(self) -> str:
        """What the end of a multirun prints: headline tables and ranking agreement."""
        parts = [f"### Sweep summary: {len(self.jobs)} jobs ({', '.join(str(s) for s in self.sources)})"]
        parts += [f"{m} · {t}: {verdict_markdown(self, m, t)}" for m, t in groups(self.jobs)
                  if verdict_markdown(self, m, t)]
        parts += [t.markdown() for t in self.headline_tables()]
        if self.stats is not None:
            parts += [comparison_markdown(self.stats.of(t.model, t.task, t.metric)) for t in self.headline_tables()]
        parts += [a.markdown() for a in self.agreements if a.markdown()]
        parts.append(f"Per-domain tables: {self.files.get('markdown')}; one row per job: {self.files.get('csv')}"
                     + (f"; plots: {self.out_dir / PLOTS_DIR}" if self.plots else ""))
        if self.failures:
            parts.append(f"### Failed jobs: {len(self.failures)}\n\n" + failures_markdown(self.failures))
        return "\n\n".join(parts)

    def full_markdown(self) -> str:
        parts = [f"# Sweep summary\n\n{len(self.jobs)} jobs from " + ", ".join(f"`{s}`" for s in self.sources)]
        for (model, task) in groups(self.jobs):
            parts.append(f"## {model} · {task}")
            parts.append(verdict_markdown(self, model, task))  # the answer first, then the evidence
            parts += statistics_markdown(self, model, task)
            parts += efficiency_note(self.jobs, model, task)
            parts += [v.markdown() for v in self.validity if (v.model, v.task) == (model, task)]
            parts += tables_markdown([t for t in self.tables if (t.model, t.task) == (model, task)])
        parts.append("## Removed layers")
        parts.append(removed_markdown(self.jobs))
        ag = [a.markdown() for a in self.agreements if a.markdown()]
        if ag:
            parts.append("## Ranking agreement")
            parts += ag
        if self.plots:
            parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(self.out_dir)})" for p in self.plots))
        parts.append(f"## Failures\n\n{failures_markdown(self.failures)}")
        return "\n\n".join(parts) + "\n"


def build_summary(dirs: Sequence[str | Path], out_dir: str | Path | None = None, *, metric: str | None = None,
                  plots: bool = True, equivalence_margin: float | None = None) -> Summary:
    """Read the jobs under ``dirs`` and write the summary into ``out_dir`` (default: the only dir).
    ``equivalence_margin``: the TOST margin of "equivalent" verdicts on proportions (default
    :data:`topovlm.stats.EQUIVALENCE_MARGIN`; printed with every such verdict)."""
    dirs = [Path(d) for d in dirs]
    if out_dir is None:
        if len(dirs) != 1:
            raise ValueError("several sweep directories: say where the summary goes (out_dir)")
        out_dir = dirs[0] if dirs[0].is_dir() else dirs[0].parent
    out_dir = Path(out_dir)
    problems: list[dict[str, Any]] = []  # results.json files that cannot be trusted: listed as failures
    jobs = load_jobs(dirs, problems=problems)
    failures = load_failures(dirs) + problems
    if not jobs and not failures:
        raise FileNotFoundError(f"no complete {RESULTS_FILE} under {', '.join(map(str, dirs))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    headlines: dict[tuple[str, str], str | None] = {}
    for model, task in groups(jobs):
        members = [j for j in jobs if (j.model, j.task) == (model, task)]
        headlines[(model, task)] = headline_metric(members, metric)
        for m in ordered_metrics(members, headlines[(model, task)]):
            tables.append(metric_table(jobs, model, task, m))
    agreements = [agreement(jobs, m) for m in sorted({j.model for j in jobs})]
    summary = Summary(jobs, out_dir, headlines, tables, agreements, sources=dirs, failures=failures)
    summary.stats = build_statistics(jobs, tables, headlines, margin=equivalence_margin)
    write_statistics_csvs(summary, out_dir)
    summary.validity = [v for model, task in groups(jobs)
                        if (v := validity(jobs, model, task, headlines.get((model, task)))) is not None]
    if summary.validity:
        summary.files["validity"] = write_csv(out_dir / VALIDITY_CSV, *validity_rows(summary.validity))

    columns, rows = csv_rows(jobs, ordered_metrics(jobs, list(headlines.values())), intervals=True)
    summary.files["csv"] = write_csv(out_dir / SUMMARY_CSV, columns, rows)
    ag_rows = [r for a in agreements for r in a.rows()]
    summary.files["agreement"] = write_csv(out_dir / AGREEMENT_CSV, ["model", "kind", "sparsity", "scorer_a", "scorer_b",
                                                                      "value", "std", "n"], ag_rows)
    if plots and jobs:
        from topovlm.progress import stage

        with stage(f"plots ({out_dir / PLOTS_DIR})", logger=log):
            summary.plots = write_plots(summary, out_dir / PLOTS_DIR)
    summary.files["markdown"] = out_dir / SUMMARY_MD
    write_text(out_dir / SUMMARY_MD, summary.full_markdown())
    return summary

