"""Report of the topo presets' comparison on the embedded default (after its sweeps ran).

    bash bench/results/topo_compare_2026-12-01.sh ROOT     # the sweeps (one model process at a time)
    .venv/bin/python bench/topo_compare.py ROOT [--out bench/results/topo_compare_<date>.md]

Writes the sweeps' summary tables, the per-representation beta_0 / beta_1 / S_0 / S_1 curves
of every topo-family job, the warnings they raised, and the effect of ``epi_mix`` and of the
formula on the ranking (recomputed from each run's own bars with the scorer's ranking code).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from topovlm.summary import build_summary  # noqa: E402 - after the sys.path set-up above
from topovlm.topo.consistency import FORMULAS  # noqa: E402 - after the sys.path set-up above

EPI_MIXES = (0.0, 0.25, 0.5, 1.0)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"


def topo_jobs(root: Path) -> list[tuple[str, dict]]:
    out = []
    for path in sorted(root.rglob("results.json")):
        r = json.loads(path.read_text())
        if "topology" in r:
            out.append((str(path.parent.relative_to(root)), r))
    return out


def curves(name: str, r: dict) -> list[str]:
    t = r["topology"]
    removed = set(r["removed_layers"])
    adaptive = set(t["adaptive"]["layers"])
    cal = r["config"]["calibration"]["n"]
    sc = r["config"]["scorer"]
    lines = [f"### {name}: {r['scorer']} (k = {sc['k']}, formula = {sc['formula']}, activations = "
             f"{sc['activations']}, N = {cal}, epi_mix = {sc['epi_mix']}), sparsity {r['sparsity']:g}, "
             f"policy {r['selection_policy']}", "",
             f"accuracy {r['metrics']['accuracy']:.3f} (unpruned {r['reference_metrics']['accuracy']:.3f}); "
             f"removed {sorted(removed)}; adaptive set (S >= {t['adaptive']['eps']} max) {sorted(adaptive)}; "
             f"scoring {t['timings_s']['total']:.2f} s in the zigzag pipeline"
             f"{' (scores from the cache of an earlier job)' if r.get('scores_from_cache') else ''}, "
             f"{t['zigzag']['simplices']} zigzag simplices", ""]
    for w in t.get("warnings", []):
        lines.append(f"warning: {w['message']}")
    lines += ["", "| rep | beta_0 | beta_1 | S_0 | S_1 | score | removed |", "|---|---|---|---|---|---|---|"]
    final = t.get("final_norm_index")
    for i in range(t["representations"]):
        tag = "final norm" if i == final else ("yes" if i in removed else "")
        lines.append(f"| {i} | {t['betti']['h0'][i]} | {t['betti']['h1'][i]} | {t['consistency']['h0'][i]:.3f} | "
                     f"{t['consistency']['h1'][i]:.3f} | {t['consistency_combined'][i]:.3f} | {tag} |")
    return lines + [""]


def variants(name: str, r: dict, key: str, values: tuple) -> list[str]:
    """Top-k and adaptive sets with one scorer setting varied, from the run's own bars
    (the scorer's ranking code: no model, no new zigzag)."""
    from topovlm.config import build_scorer

    t = r["topology"]
    params = dict(r["config"]["scorer"])
    bars = {int(k[1:]): np.asarray(v, dtype=np.int64).reshape(-1, 2) for k, v in t["bars"].items()}
    reps = t["representations"]
    num_layers = r["num_layers"]
    k = round(0.3 * num_layers)
    lines = [f"{name} ({r['scorer']}, k = {params['k']}, N = {r['config']['calibration']['n']}): "
             f"top-{k} (30%) and adaptive set", "", f"| {key} | top-k | adaptive |", "|---|---|---|"]
    for value in values:
        scorer = build_scorer({**params, key: value})
        ranking = scorer.rank_bars(bars, reps, t.get("final_norm_index") is not None)
        red = ranking.redundancy[:num_layers]
        order = sorted(range(1, num_layers), key=lambda i: (-red[i], i))  # layer 0 protected, as in the runs
        lines.append(f"| {value} | {sorted(order[:k])} | {ranking.adaptive['layers']} |")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dirs = sorted(p for p in args.root.iterdir() if p.is_dir())
    summary = build_summary(dirs, out_dir=args.root, plots=False)
    jobs = topo_jobs(args.root)
    date = dt.date.today().isoformat()
    lines = [f"# topo presets on the embedded default ({date})", "",
             f"Machine: {machine()}.", "",
             f"Commands: `bash bench/results/topo_compare_2026-12-01.sh {args.root}` then "
             f"`.venv/bin/python bench/topo_compare.py {args.root}`.", "",
             summary.full_markdown(), ""]
    distinct, seen = [], set()
    for name, r in jobs:
        key = (r["scorer"], r["config"]["calibration"]["n"], r["config"]["scorer"]["activations"])
        if r["config"]["scorer"]["epi_mix"] == 0 and key not in seen:
            seen.add(key)
            distinct.append((name, r))
    lines += ["## Effect of epi_mix on the ranking", ""]
    for name, r in distinct:
        lines += variants(name, r, "epi_mix", EPI_MIXES)
    lines += ["## Effect of the formula on the same bars", ""]
    for name, r in distinct:
        lines += variants(name, r, "formula", FORMULAS)
    lines += ["## The ancestor's two thresholds (p = 0.8, 0.9)", ""]
    for name, r in distinct:
        lines += variants(name, r, "eps", (0.8, 0.9))
    lines += ["## Per-representation curves (diagnostics)", ""]
    for name, r in jobs:
        lines += curves(name, r)
    out = args.out or ROOT / "bench" / "results" / f"topo_compare_{date}.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
