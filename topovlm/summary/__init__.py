"""The comparison at the end of a sweep: CSV, Markdown tables, plots and ranking agreement.

Reads every ``results.json`` under one or more sweep directories (one per job, written
last and atomically by :func:`topovlm.runner.run_job`, so a job killed mid-way is simply
absent) and writes, into the output directory:

* ``summary.csv``: one row per job (model, task, scorer, sparsity, seeds, removed
  layers, every metric, efficiency, job key, output dir);
* ``summary.md``: per (model, task) the headline metric and every breakdown metric
  (``accuracy/<domain>``, ``accuracy/<category>``) by scorer x sparsity, best per
  column in bold (best as the evaluator's ``higher_is_better`` says), the unpruned model
  (sparsity 0) as the reference row, mean ± std over seeds where a cell has several; the
  removed layers; the ranking agreement;
* ``agreement.csv``: Kendall tau between the scorers' redundancy rankings and the
  Jaccard overlap of their removed sets at each sparsity;
* PNG plots under ``plots/``: metric vs sparsity (per task, one panel per metric),
  the layer x scorer map of removed layers, the score profiles, the agreement heat map.

``topovlm summarize <sweep_dir> [...]`` (or ``python -m topovlm.cli summarize ...``)
builds the same from finished runs.

The sections, one module each:

* :mod:`~topovlm.summary.load`: the jobs (:class:`SummaryJob`), their labels and draws, the
  failure records, each metric's direction;
* :mod:`~topovlm.summary.tables`: :class:`Stat`, :class:`MetricTable`, the removed layers;
* :mod:`~topovlm.summary.agreement`: Kendall tau and Jaccard between scorers;
* :mod:`~topovlm.summary.statistics`: intervals, paired verdicts, calibration variance,
  regimes, cost (from the jobs' ``samples.jsonl``);
* :mod:`~topovlm.summary.plots`: the PNGs;
* :mod:`~topovlm.summary.build`: :class:`Summary` and :func:`build_summary`;
* :mod:`~topovlm.summary.wandb`: the sweep's W&B summary run.
"""
from __future__ import annotations

from topovlm.summary.agreement import Agreement, agreement, kendall_tau
from topovlm.summary.build import (AGREEMENT_CSV, CSV_FIRST, CSV_LAST, SUMMARY_CSV, SUMMARY_MD, Summary, build_summary,
                                   csv_rows)
from topovlm.summary.load import (DEFAULT_HIGHER_IS_BETTER, NOT_VARIANT, PLOTS_DIR, SEED_KEYS, SummaryJob,
                                  failures_markdown, find_results, higher_is_better, load_failures, load_jobs)
from topovlm.summary.plots import write_plots
from topovlm.summary.statistics import (CALIBRATION_CSV, COMPARISON_CSV, EFFICIENCY_CSV, REGIMES_CSV, CellSamples,
                                        Comparison, CostRow, DrawRow, Statistics, build_statistics, cell_interval,
                                        cell_samples, compare, comparison_markdown, job_samples, metric_samples,
                                        paired_test)
from topovlm.stats import VERDICT_BEST, VERDICT_NA, VERDICT_SAME, VERDICT_WORSE
from topovlm.summary.tables import (REFERENCE, MetricTable, Stat, headline_metric, metric_table, ordered_metrics,
                                    removed_markdown)

__all__ = [
    "AGREEMENT_CSV", "CALIBRATION_CSV", "COMPARISON_CSV", "CSV_FIRST", "CSV_LAST", "DEFAULT_HIGHER_IS_BETTER",
    "EFFICIENCY_CSV", "NOT_VARIANT", "PLOTS_DIR", "REFERENCE", "REGIMES_CSV", "SEED_KEYS", "SUMMARY_CSV", "SUMMARY_MD",
    "VERDICT_BEST", "VERDICT_NA", "VERDICT_SAME", "VERDICT_WORSE", "Agreement", "CellSamples", "Comparison", "CostRow",
    "DrawRow", "MetricTable", "Stat", "Statistics", "Summary", "SummaryJob", "agreement", "build_statistics",
    "build_summary", "cell_interval", "cell_samples", "compare", "comparison_markdown", "csv_rows",
    "failures_markdown", "find_results", "headline_metric", "higher_is_better", "job_samples",
    "kendall_tau", "load_failures", "load_jobs", "metric_samples", "metric_table", "ordered_metrics", "paired_test",
    "removed_markdown", "write_plots",
]
