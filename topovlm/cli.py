"""``topovlm summarize <sweep_dir> [more dirs]``: the end-of-sweep summary from finished runs.
``topovlm list scorers [pattern]`` (statistics, evaluators, adapters, sources): what is registered.

Also ``python -m topovlm.cli summarize ...`` and ``python -m topovlm.summary ...``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="topovlm", description="topovlm utilities")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "summarize", help="summary of finished sweeps: CSV, Markdown, plots, ranking agreement",
        description="Reads every results.json under the given directories (recursively) and writes "
                    "summary.csv, summary.md, agreement.csv and plots/ into --out.")
    s.add_argument("dirs", nargs="+", type=Path, help="sweep directories (or results.json files)")
    s.add_argument("-o", "--out", type=Path, default=None,
                   help="where the summary goes (default: the sweep directory when there is one, else ./summary)")
    s.add_argument("--metric", default=None, help="headline metric (default: accuracy, else perplexity)")
    s.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    s.add_argument("--wandb", choices=("auto", "offline", "online", "disabled"), default="disabled",
                   help="also log a W&B summary run (job_type=summary, the sweep's group); "
                        "auto = the mode the sweep's jobs used (default: disabled)")
    s.add_argument("--group", default=None, help="W&B group (default: the group the jobs logged to)")
    s.add_argument("-q", "--quiet", action="store_true", help="do not print the Markdown tables")
    from topovlm.listing import REGISTRIES

    ls = sub.add_parser("list", help="registered scorers, statistics, evaluators, adapters or data sources",
                        description="Names, modules and parameters (with defaults) of what a registry holds.")
    ls.add_argument("kind", choices=sorted(REGISTRIES))
    ls.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'topo*'")
    wr = sub.add_parser("wandb-report", help="a W&B Report of a sweep (wandb-workspaces); offline: its spec",
                        description="Metric vs sparsity per task (one line per scorer), kept layers, efficiency vs "
                                    "accuracy and the summary run's tables, as a W&B Report.")
    wr.add_argument("sweep_dir", type=Path)
    wr.add_argument("--entity", required=True)
    wr.add_argument("--project", default="topovlm")
    wr.add_argument("--title", default=None)
    wr.add_argument("--offline", action="store_true", help="only write the spec (wandb_report.json)")
    ex = sub.add_parser("export", help="a finished job's pruned model as a Hugging Face directory with a model card",
                        description="Writes the pruned checkpoint of JOB_DIR (its saved pruned_model, or rebuilt from "
                                    "the base model and the removed layers) with provenance in config.json and a "
                                    "model card README.md.")
    ex.add_argument("job_dir", type=Path)
    ex.add_argument("-o", "--out", type=Path, default=None, help="default: JOB_DIR/export")
    ex.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload (needs network and a login)")
    return p


def summarize(args: argparse.Namespace) -> int:
    from topovlm.summary import build_summary

    out = args.out
    if out is None:
        out = args.dirs[0] if len(args.dirs) == 1 and args.dirs[0].is_dir() else Path("summary")
    try:
        summary = build_summary(args.dirs, out, metric=args.metric, plots=not args.no_plots)
    except (FileNotFoundError, ValueError) as err:
        print(f"topovlm summarize: {err}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(summary.terminal_markdown())
    if args.wandb != "disabled":
        from topovlm.wandb_summary import log_summary_run, wandb_settings_from_jobs

        settings = wandb_settings_from_jobs(summary.jobs)
        if args.wandb != "auto":
            settings.update(enabled=True, mode=args.wandb)
        path = log_summary_run(summary, settings, group=args.group)
        if path:
            print(f"W&B summary run: {path}")
    print(f"summary written to {summary.out_dir} ({len(summary.jobs)} jobs)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    if args.command == "summarize":
        return summarize(args)
    if args.command == "wandb-report":
        from topovlm.wandb_report import publish

        try:
            print(publish(args.sweep_dir, args.entity, args.project, offline=args.offline, title=args.title)[0])
        except FileNotFoundError as err:
            print(f"topovlm wandb-report: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "export":
        from topovlm.export import export_job

        try:
            print(export_job(args.job_dir, args.out, args.push_to_hub))
        except (FileNotFoundError, ValueError, RuntimeError) as err:
            print(f"topovlm export: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "list":
        from topovlm.listing import format_rows, rows

        print(format_rows(rows(args.kind, args.pattern)))
        return 0
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
