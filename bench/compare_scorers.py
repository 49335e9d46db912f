"""Every built-in scorer on the embedded default model and benchmark, in one sweep.

Runs ``launch.py -m``: every built-in scorer at sparsity 0.1 / 0.2 / 0.3 (``topo_llm`` with
``selection.policy=topk``), the random scorer over three seeds (``--full``: also the
short_lvlm SCP and domain_aware math / non_math variants); the unpruned
model is every job's reference. Then it writes the sweeps' summary tables, with the date and the machine, to
``bench/results/compare_scorers_<date>.md``. The quality bar of the embedded benchmark
(random 30% removal loses >= 10 points over 3 seeds; best - worst scorer at 30% >= 10
points, on the mean over the calibration draws run) is checked and printed.

    .venv/bin/python bench/compare_scorers.py [--sweep-dir DIR] [--out FILE] [extra Hydra overrides]

With ``--summarize-only`` the header lists every sweep's overrides as its multirun.yaml recorded
them, so sweeps run by hand stay traceable from the results file alone.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from topovlm.default_model.build import weights_digest  # noqa: E402 - after the sys.path set-up above
from topovlm.summary import build_summary  # noqa: E402 - after the sys.path set-up above

SPARSITIES = "0.1,0.2,0.3"
# (label, overrides): the default grid fits a CPU session; --full sweeps every scorer at every sparsity
SWEEPS = [
    ("main", ["scorer=topo,cosine,shortgpt,short_lvlm,domain_aware,angular,tail", f"sparsity={SPARSITIES}"]),
    # the ancestor prunes by its own rule; topk makes it comparable at each budget
    ("topo_llm", ["scorer=topo_llm", "selection.policy=topk", f"sparsity={SPARSITIES}"]),
    ("random", ["scorer=random", "seed=0,1,2", f"sparsity={SPARSITIES}"]),
]
# --draws: two more calibration draws at 30% (the discrimination bar's sparsity), so that the bar
# is checked on the mean over three draws rather than on one; random already has three seeds.
# --draws-at names other sparsities; their sweeps get their own labels next to the 30% ones.
def draws(sparsities: str = "0.3") -> list[tuple[str, list[str]]]:
    tag = "" if sparsities == "0.3" else "_at_" + sparsities.replace(",", "_")
    return [
        ("draws" + tag, ["scorer=topo,cosine,shortgpt,short_lvlm,domain_aware,angular,tail",
                         "calibration.seed=1,2", f"sparsity={sparsities}"]),
        ("topo_llm_draws" + tag, ["scorer=topo_llm", "selection.policy=topk", "calibration.seed=1,2",
                                  f"sparsity={sparsities}"]),
    ]


DRAWS = draws()
FULL = [
    *SWEEPS[:2],
    ("scp", ["scorer=short_lvlm", "scorer.compensation=scp", f"sparsity={SPARSITIES}"]),
    ("domains", ["scorer=domain_aware", "scorer.ranking=math,non_math", f"sparsity={SPARSITIES}"]),
    ("random", ["scorer=random", "seed=0,1,2", f"sparsity={SPARSITIES}"]),
]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep-dir", default=None, help="where the sweeps go (default multirun/compare_<time>)")
    ap.add_argument("--only", default=None,
                    help="comma-separated sweep labels to run: " + ",".join(s for s, _ in SWEEPS + DRAWS))
    ap.add_argument("--full", action="store_true", help="every scorer at every sparsity (about 3x longer)")
    ap.add_argument("--draws", action="store_true",
                    help="also calibration draws 1 and 2 of every deterministic scorer at 30%% "
                         "(or at --draws-at)")
    ap.add_argument("--draws-at", default="0.3", help="the sparsities of --draws (comma-separated)")
    ap.add_argument("--summarize-only", action="store_true",
                    help="run nothing: summarize the sweeps already under --sweep-dir (e.g. run by hand)")
    ap.add_argument("--out", default=None,
                    help="results file (default bench/results/compare_scorers_<date>.md)")
    args, extra = ap.parse_known_args()
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    root = Path(args.sweep_dir or ROOT / "multirun" / f"compare_{stamp}")
    grid = (FULL if args.full else SWEEPS) + (draws(args.draws_at) if args.draws else [])
    todo = [s for s in grid if not args.only or s[0].split("_at_")[0] in args.only.split(",")]
    if args.summarize_only:
        if not args.sweep_dir:
            ap.error("--summarize-only needs --sweep-dir")
        todo = [(p.name, []) for p in sorted(root.iterdir()) if (p / "multirun.yaml").is_file()]
    start = time.time()
    for label, overrides in ([] if args.summarize_only else todo):
        cmd = [sys.executable, "launch.py", "-m", *overrides, "logger=none", f"hydra.sweep.dir={root / label}",
               "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "num_threads=1",
               "hydra.callbacks.summary.enabled=false", *extra]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.time() - start
    summary = build_summary([root / label for label, _ in todo], out_dir=root, plots=True)
    jobs = summary.jobs
    ran = (f"Wall time of the sweeps: {wall / 60:.1f} min." if not args.summarize_only else
           "Sweeps run beforehand, each with the overrides below (from its multirun.yaml):")
    lines = [f"# Scorer comparison on the embedded default ({dt.date.today().isoformat()})", "",
             f"Machine: {machine()}. Embedded weights when written: sha256 {weights_digest()[:16]}. {ran}", ""]
    if args.summarize_only:
        lines += [f"- {label}: `{sweep_overrides(root / label)}`" for label, _ in todo] + [""]
    lines += ["Command: `.venv/bin/python bench/compare_scorers.py " + " ".join(sys.argv[1:]) + "`", ""]
    lines += quality_bar(jobs)
    lines += ["", summary.full_markdown()]
    out = Path(args.out or ROOT / "bench" / "results" / f"compare_scorers_{dt.date.today().isoformat()}.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:20]))
    print(f"wrote {out}")
    return 0


def sweep_overrides(sweep_dir: Path) -> str:
    """The command-line overrides a sweep ran with, as Hydra recorded them."""
    import yaml

    overrides = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]
    return " ".join(o for o in overrides["task"] + overrides["hydra"]
                    if not o.startswith(("hydra.mode=", "hydra.sweep.dir=")))


def quality_bar(jobs: list, metrics: tuple[str, ...] = ("accuracy", "accuracy_mc")) -> list[str]:
    """The embedded benchmark's discrimination bar, on exact match and on multiple choice."""
    out: list[str] = []
    for metric in metrics:
        ref = [j.reference_metrics[metric] for j in jobs if metric in (j.reference_metrics or {})]
        if not ref:
            out += [f"(no reference {metric} recorded)", ""]
            continue
        unpruned = statistics.fmean(ref)
        at30 = defaultdict(list)
        for j in jobs:  # the oracle is a yardstick, not a scorer of the bar
            if abs(float(j.sparsity) - 0.3) < 1e-9 and metric in j.metrics and j.scorer != "oracle":
                at30[j.label].append(j.metrics[metric])
        means = {k: statistics.fmean(v) for k, v in at30.items()}
        out.append(f"**{metric}**: unpruned {unpruned:.3f}.")
        if "random" in means:
            drop = unpruned - means["random"]
            out.append(f"- Random 30% removal: {means['random']:.3f} (mean of {len(at30['random'])} seeds), "
                       f"a loss of {100 * drop:.1f} points (bar: >= 10): {'met' if drop >= 0.10 else 'NOT met'}.")
        if means:
            best, worst = max(means, key=means.get), min(means, key=means.get)
            gap = means[best] - means[worst]
            lo, hi = min(map(len, at30.values())), max(map(len, at30.values()))
            draws = f" (mean of {lo} jobs each)" if lo == hi else f" (means of {lo} to {hi} jobs)"
            out.append(f"- At 30%{draws}: best {best} {means[best]:.3f}, worst {worst} {means[worst]:.3f}, gap "
                       f"{100 * gap:.1f} points (bar: >= 10): {'met' if gap >= 0.10 else 'NOT met'}. A descriptive "
                       "bar on point estimates: the spread's 95% interval is in the regimes table below.")
        out.append("")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
