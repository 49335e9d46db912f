"""Which scorer differences on the embedded default are real: the calibration-variance sweep,
summarised with intervals, paired verdicts, draw variance, regimes and cost.

    .venv/bin/python bench/scorer_statistics.py --run            # runs experiment=calibration_variance, then summarises
    .venv/bin/python bench/scorer_statistics.py --sweep-dir DIR  # summarises a (partly) finished sweep

``--run`` launches ``launch.py -m experiment=calibration_variance num_threads=1 logger=none``
(one process, jobs in order: every scorer for calibration draw 0, then 1, then 2); running it
again with the same ``--sweep-dir`` and ``--cache-dir`` resumes (finished jobs are skipped). The
summary goes to ``bench/results/scorer_statistics_<date>/`` (summary.md with the date, the
machine and how many of the 72 jobs finished; the CSVs; the plots).
"""
from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.compare_scorers import machine  # noqa: E402 - after the sys.path set-up above
from topovlm.summary import SUMMARY_MD, build_summary  # noqa: E402 - after the sys.path set-up above

EXPECTED_JOBS = 8 * 3 * 3  # scorers x sparsities x calibration draws


def compact_table(summary) -> str:
    """Headline accuracy per scorer x sparsity: mean ± std over draws [95% interval over samples],
    the paired verdict against the best, and the agreement with the unpruned model."""
    out = []
    for (model, task), metric in sorted(summary.headlines.items()):
        rows = summary.stats.of(model, task, metric) if summary.stats else []
        if not rows:
            continue
        sps = sorted({c.sparsity for c in rows})
        lines = ["| scorer | " + " | ".join(f"{s:.0%} removed" for s in sps) + " |", "|---|" + "---|" * len(sps)]
        order = {}
        for c in rows:
            order.setdefault(c.label, []).append(c.mean)
        for lab in sorted(order, key=lambda k: -sum(order[k])):
            cells = []
            for s in sps:
                c = next((c for c in rows if c.label == lab and c.sparsity == s), None)
                if c is None:
                    cells.append("—")
                    continue
                text = f"{c.mean:.3f}" + (f" ± {c.std or 0.0:.3f}" if c.n_draws > 1 else "")
                if c.interval is not None:
                    text += f" [{c.interval.low:.3f}, {c.interval.high:.3f}]"
                verdict = " **best**" if c.verdict == "best" else f" ({c.verdict_text})"
                agree = f"; agree {c.agreement.value:.2f}" if c.agreement is not None else ""
                cells.append(text + verdict + agree)
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        out.append(f"{model} · {task} · {metric}:\n\n" + "\n".join(lines))
    return "\n\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep-dir", default=str(ROOT / "multirun" / "calibration_variance" / "evidence"),
                    help="the sweep --run writes (and the summary reads)")
    ap.add_argument("--also", action="append", default=[], metavar="DIR",
                    help="further finished sweeps to summarise with it (e.g. a selection.policy=spacing variant)")
    ap.add_argument("--cache-dir", default=None, help="cache_dir of the jobs (default: the harness cache)")
    ap.add_argument("--run", action="store_true", help="run (or resume) the sweep first")
    ap.add_argument("--out", default=None, help="default bench/results/scorer_statistics_<date>")
    args, extra = ap.parse_known_args()
    sweep = Path(args.sweep_dir)
    cmd = [sys.executable, "launch.py", "-m", "experiment=calibration_variance", "num_threads=1", "logger=none",
           f"hydra.sweep.dir={sweep}", *([f"cache_dir={args.cache_dir}"] if args.cache_dir else []), *extra]
    if args.run:
        print("+", " ".join(cmd), flush=True)
        start = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        print(f"sweep wall time {(time.time() - start) / 60:.1f} min", flush=True)
    out = Path(args.out or ROOT / "bench" / "results" / f"scorer_statistics_{dt.date.today().isoformat()}")
    summary = build_summary([sweep, *map(Path, args.also)], out_dir=out, plots=True)
    jobs = summary.jobs
    job_minutes = sum(sum((j.get("timings") or {}).values()) for j in jobs) / 60
    draws = sorted({j["_flat"].get("calibration.seed") for j in jobs}, key=repr)
    header = [
        f"# Which scorer differences are real on the embedded default ({dt.date.today().isoformat()})", "",
        f"Machine: {machine()}. {len(jobs)} jobs finished ({EXPECTED_JOBS} in the full grid"
        + (f", plus the sweeps {', '.join(args.also)}" if args.also else "") + f"; calibration draws {draws}); "
        f"summed job time {job_minutes:.1f} min, one job at a time, one thread.", "",
        "Command (resumes: finished jobs are skipped): `.venv/bin/python bench/scorer_statistics.py --run "
        + (f"--cache-dir {args.cache_dir} " if args.cache_dir else "") + f"--sweep-dir {sweep}`, i.e. `"
        + " ".join(Path(c).name if c == sys.executable else c for c in cmd) + "`", "",
        "`topo` rows use the scorer's defaults as of this commit (H0 + H1 weighted equally, k = 15, "
        "last-token pooling), before the change of its defaults made elsewhere.", "",
    ]
    (out / "compact_table.md").write_text(compact_table(summary) + "\n")
    text = (out / SUMMARY_MD).read_text()
    (out / SUMMARY_MD).write_text("\n".join(header) + "\n" + text)
    print("\n".join(header))
    print(summary.terminal_markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
