"""``topovlm summarize <sweep_dir> [more dirs]``: the end-of-sweep summary from finished runs.
``topovlm list scorers [pattern]`` (statistics, evaluators, adapters, sources): what is registered.
``topovlm topo-score FILE ...``: re-analysis of a barcode file with the topo scorers' ranking.

Also ``python -m topovlm.cli summarize ...``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

SCORER_CONF = Path(__file__).resolve().parents[1] / "conf" / "scorer"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="topovlm", description="topovlm utilities")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "summarize", help="summary of finished sweeps: CSV, Markdown, plots, ranking agreement",
        description="Reads every results.json under the given directories (recursively) and writes "
                    "summary.csv, summary.md, agreement.csv and plots/ into --out. Checks each result against its "
                    "samples.jsonl; exits 1 when a job failed or a result is unreadable or inconsistent (listed "
                    "under Failures).")
    s.add_argument("dirs", nargs="+", type=Path, help="sweep directories (or results.json files)")
    s.add_argument("-o", "--out", type=Path, default=None,
                   help="where the summary goes (default: the sweep directory when there is one, else ./summary)")
    s.add_argument("--metric", default=None, help="headline metric (default: the optimized_metric the jobs record)")
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
    wr.add_argument("--entity", default=None, help="W&B entity (needed to publish; --offline: default $WANDB_ENTITY, "
                                                   "else a placeholder in the spec)")
    wr.add_argument("--project", default="topovlm")
    wr.add_argument("--title", default=None)
    wr.add_argument("--offline", action="store_true", help="only write the spec (wandb_report.json)")
    ex = sub.add_parser("export", help="a finished job's pruned model as a Hugging Face directory with a model card",
                        description="Writes the pruned checkpoint of JOB_DIR (its saved pruned_model, or rebuilt from "
                                    "the base model and the removed layers) with provenance in config.json and a "
                                    "model card README.md.")
    ex.add_argument("job_dir", type=Path)
    ex.add_argument("-o", "--out", type=Path, default=None, help="default: JOB_DIR/export")
    ex.add_argument("--overwrite", action="store_true",
                    help="write into a non-empty --out, replacing files of the same names (others are kept)")
    ex.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload (needs network and a login)")

    t = sub.add_parser(
        "topo-score", help="score a barcode file (the ancestor's CSV format) and print JSON",
        description="Reads bars (columns dimension,birth,death in zigzag positions, K_i at even offsets and "
                    "K_i ∩ K_i+1 between them; death inf = never dies), snaps them to representations and "
                    "scores them with the topo scorers' own code. Prints the per-representation consistency "
                    "and the removed layers as JSON. Scorer overrides are key=value (formula=ilp alpha=2 "
                    "dim_weights.h0=1).")
    t.add_argument("file", type=Path, help="barcode CSV")
    t.add_argument("overrides", nargs="*", help="scorer settings, key=value")
    t.add_argument("--preset", default="topo_llm", choices=("topo_llm", "topo"),
                   help="scorer preset the overrides apply to (default: topo_llm, the ancestor)")
    t.add_argument("--start-index", type=int, default=0,
                   help="zigzag position of K_0 in the file (default 0; 1 for files counted from 1)")
    t.add_argument("--exclude-last", action="store_true",
                   help="the last representation is the final norm's: scored, never removed")
    t.add_argument("--representations", type=int, default=None,
                   help="number of representations (default: inferred from the bars)")
    how = t.add_mutually_exclusive_group()
    how.add_argument("--remove", type=int, default=None, metavar="K", help="remove the K most redundant")
    how.add_argument("--eps", type=float, default=None, metavar="P",
                     help="remove every removable one with redundancy >= P * max (default: the scorer's eps)")
    return p


def _json_safe(obj: Any) -> Any:
    """NaN / inf become null: strict JSON has no such numbers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def build_topo_scorer(preset: str, overrides: Sequence[str]) -> Any:
    """The preset's YAML with ``key=value`` overrides, built like a run builds its scorer."""
    from omegaconf import OmegaConf

    from topovlm.config import build_scorer

    conf = OmegaConf.load(SCORER_CONF / f"{preset}.yaml")
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"scorer overrides must be key=value, got {', '.join(bad)}")
    return build_scorer(OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides))))


def topo_score(args: argparse.Namespace) -> int:
    from topovlm.topo.barcodes import rescore

    try:
        scorer = build_topo_scorer(args.preset, args.overrides)
        out = rescore(args.file, scorer, start_index=args.start_index, exclude_last=args.exclude_last,
                      num_reps=args.representations, remove=args.remove, eps=args.eps)
    except (OSError, ValueError, TypeError) as err:
        print(f"topovlm topo-score: {err}", file=sys.stderr)
        return 1
    for w in out["warnings"]:
        print(f"warning: {w['message']}", file=sys.stderr)
    print(json.dumps(_json_safe(out), indent=2))
    return 0


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
        from topovlm.summary.wandb import log_summary_run, wandb_settings_from_jobs

        settings = wandb_settings_from_jobs(summary.jobs)
        if args.wandb != "auto":
            settings.update(enabled=True, mode=args.wandb)
        path = log_summary_run(summary, settings, group=args.group)
        if path:
            print(f"W&B summary run: {path}")
    print(f"summary written to {summary.out_dir} ({len(summary.jobs)} jobs)")
    if summary.failures:  # failed jobs, or results that could not be read or do not add up
        print(f"topovlm summarize: {len(summary.failures)} job(s) failed or could not be trusted; see Failures in "
              f"{summary.files.get('markdown')}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "topo-score":  # key=value overrides may come after the options too
        args.overrides = list(args.overrides) + [e for e in extra if not e.startswith("-")]
        extra = [e for e in extra if e.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "summarize":
        return summarize(args)
    if args.command == "wandb-report":
        from topovlm.wandb_report import publish

        if not args.offline and not (args.entity or os.environ.get("WANDB_ENTITY")):
            print("topovlm wandb-report: --entity is needed to publish a report (or $WANDB_ENTITY); "
                  "--offline writes its spec without one", file=sys.stderr)
            return 2
        try:
            print(publish(args.sweep_dir, args.entity or os.environ.get("WANDB_ENTITY"), args.project,
                          offline=args.offline, title=args.title)[0])
        except FileNotFoundError as err:
            print(f"topovlm wandb-report: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "export":
        from topovlm.export import export_job

        try:
            print(export_job(args.job_dir, args.out, args.push_to_hub, overwrite=args.overwrite))
        except (OSError, ValueError, RuntimeError) as err:
            print(f"topovlm export: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "list":
        from topovlm.listing import format_rows, rows

        print(format_rows(rows(args.kind, args.pattern)))
        return 0
    if args.command == "topo-score":
        return topo_score(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    raise SystemExit(main())
