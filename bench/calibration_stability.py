"""How stable is each calibration-based scorer's removal across calibration draws, as a function
of the calibration size? For every scorer, calibration size N and draw (``calibration.seed``),
the ranking is computed through the harness (capture, score, selection: cached like any job's),
then the removed layers at each sparsity are compared across draws: mean pairwise Jaccard.
No evaluation runs, so the whole grid costs the capture and scoring passes only.

    .venv/bin/python bench/calibration_stability.py [--sizes 128 256 512] [--draws 0 1 2]
        [--scorers topo cosine ...] [--out bench/results/calibration_stability_<date>.md]
"""
from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import compose  # noqa: E402 - the repository's own config composition
from topovlm import runner  # noqa: E402
from topovlm.model_pool import POOL  # noqa: E402
from topovlm.selection import select_layers  # noqa: E402
from topovlm.stats import jaccard  # noqa: E402

SCORERS = ("topo", "topo_llm", "topo_h0", "knn_overlap", "cka", "cosine", "shortgpt", "angular", "short_lvlm",
           "domain_aware", "ppl")
SPARSITIES = (0.1, 0.2, 0.3)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def removals(scorer: str, n: int, seed: int, extra: list[str]) -> tuple[dict[float, list[int]], float, bool]:
    """Removed layers at each sparsity for one (scorer, N, draw), the scoring time and whether it was cached."""
    cfg = compose([f"scorer={scorer}", f"calibration.n={n}", f"calibration.seed={seed}", "logger=none",
                   "efficiency.enabled=false", *extra])
    out = Path(cfg.cache_dir) / "bench_stability" / f"{scorer}-{n}-{seed}"
    job = runner.prepare(cfg, out, None, "bench", None)
    samples = runner.calibration_samples(job)
    adapter = runner.load_model(job)
    try:
        start = time.perf_counter()
        ranking = runner.score(job, adapter, runner.model_fingerprint(adapter), samples, runner.Timer())
        seconds = time.perf_counter() - start
        r = ranking.result
        sets = {s: select_layers(r.redundancy, s, job.selection, job.scorer.default_policy, r.block_cost,
                                 scorer=scorer, decision=r.decision, warn=False)[0] for s in SPARSITIES}
        return sets, seconds, ranking.from_cache
    finally:
        POOL.release(adapter)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scorers", nargs="+", default=list(SCORERS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / f"calibration_stability_{dt.date.today()}.md"))
    ap.add_argument("overrides", nargs="*", help="extra config overrides, e.g. num_threads=2")
    args = ap.parse_args()
    rows, details = [], []
    for scorer in args.scorers:
        for n in args.sizes:
            sets = {}
            seconds = []
            for seed in args.draws:
                got, secs, cached = removals(scorer, n, seed, args.overrides)
                sets[seed] = got
                seconds.append(secs)
                details.append(f"| {scorer} | {n} | {seed} | " + " | ".join(str(got[s]) for s in SPARSITIES)
                               + f" | {secs:.1f}{' (cached)' if cached else ''} |")
                print(details[-1], flush=True)
            jac = [sum(jaccard(sets[a][s], sets[b][s]) for a, b in itertools.combinations(args.draws, 2))
                   / max(1, len(args.draws) * (len(args.draws) - 1) // 2) for s in SPARSITIES]
            rows.append(f"| {scorer} | {n} | " + " | ".join(f"{j:.2f}" for j in jac) + f" | {max(seconds):.0f} |")
    head = " | ".join(f"{s:.0%}" for s in SPARSITIES)
    text = "\n".join([
        f"# Calibration stability on the embedded default, {dt.date.today()}", "",
        f"Machine: {machine()}. Command: `.venv/bin/python bench/calibration_stability.py "
        f"--sizes {' '.join(map(str, args.sizes))} --draws {' '.join(map(str, args.draws))} "
        f"--scorers {' '.join(args.scorers)}`.", "",
        f"Mean pairwise Jaccard of the removed layers across {len(args.draws)} calibration draws "
        "(`calibration.seed`), 1 = the same layers in every draw; scoring time of the slowest draw "
        "(capture included when it was not cached). ppl and sleb read their first `num_samples` "
        "calibration samples, so N changes their input only through the draw.", "",
        f"| scorer | N | {head} | s |", "| --- | --- | " + " | ".join("---" for _ in SPARSITIES) + " | --- |",
        *rows, "", "## Removed layers per draw", "",
        f"| scorer | N | draw | {head} | s |", "| --- | --- | --- | " + " | ".join("---" for _ in SPARSITIES) + " | --- |",
        *details, ""])
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
