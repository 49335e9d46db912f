#!/usr/bin/env python
"""Does storing calibration states in float16 change any scorer's ranking?

One calibration pass of the embedded default (N=128, every built-in scorer's statistics and
the post-attention norms), then every built-in scorer scores the capture as computed
(float32) and after a float16 round trip of the pooled states and norm outputs (what the
capture cache stores). Reported per scorer: the largest score difference, Kendall's tau
between the two redundancy orders and whether the layers removed at 10 / 20 / 30% are the
same. Writes ``bench/results/capture_precision_<date>.md``.

    python bench/capture_precision.py
"""
from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.default_model_speed import machine  # noqa: E402 - after the sys.path set-up above
from bench.throughput import _compose  # noqa: E402 - after the sys.path set-up above


def main() -> int:
    import torch
    from scipy.stats import kendalltau

    from topovlm.adapters.loading import load_adapter
    from topovlm.capture import Capture, run_capture
    from topovlm.config import build_scorer
    from topovlm.data.sources import load_samples
    from topovlm.registry import SCORERS
    from topovlm.api import CaptureSpec, ScoringContext
    from topovlm.selection import SelectionConfig, num_to_remove, select_layers

    torch.set_num_threads(1)
    cfg = _compose()
    adapter = load_adapter(cfg.model)
    samples = load_samples(cfg.calibration.dataset, n=cfg.calibration.n, seed=cfg.calibration.seed)
    names = [n for n in SCORERS if n not in ("random", "tail")]
    scorers = {n: build_scorer(_compose([f"scorer={n}"]).scorer) for n in names}
    spec = CaptureSpec()
    for s in scorers.values():
        spec = spec | s.capture_spec()
    cap = run_capture(adapter, samples, spec, batch_size=cfg.calibration.batch_size)
    def rounded(norms_too: bool) -> Capture:
        r16 = lambda d: {k: v.astype(np.float16).astype(np.float32) for k, v in d.items()}  # noqa: E731 - a one-line local helper
        return Capture(cap.num_layers, cap.sample_ids, cap.domains, r16(cap.pooled), dict(cap.stats), cap.meta,
                       norms=r16(cap.norms) if norms_too else dict(cap.norms))

    sel = SelectionConfig()
    tables, same_everywhere = {}, True
    for label, norms_too in (("stored: pooled states float16, norm outputs float32", False),
                             ("both float16 (not stored so: see topo_llm)", True)):
        half, rows = rounded(norms_too), []
        for name, scorer in scorers.items():
            ctx = ScoringContext(seed=0, num_layers=cap.num_layers)
            a, b = scorer.score(cap, ctx), scorer.score(half, ctx)
            diff = float(np.nanmax(np.abs(a.scores - b.scores)))
            tau = kendalltau(a.redundancy, b.redundancy, nan_policy="omit").statistic
            same = []
            for s in (0.1, 0.2, 0.3):
                ra, _ = select_layers(a.redundancy, s, sel, "topk", a.block_cost)
                rb, _ = select_layers(b.redundancy, s, sel, "topk", b.block_cost)
                same.append(ra == rb)
            same.append(a.decision == b.decision)
            if not norms_too:
                same_everywhere &= all(same) and tau == 1.0
            rows.append(f"| {name} | {diff:.2e} | {tau:.4f} | {' / '.join('yes' if x else 'NO' for x in same)} |")
        tables[label] = rows
    pooled = sum(v.nbytes for v in cap.pooled.values()) + sum(v.nbytes for v in cap.norms.values())
    text = "\n".join([
        f"# Calibration states in float16 ({dt.date.today().isoformat()})", "",
        f"Machine: {machine()}. Embedded default, N={cap.num_samples}, {cap.num_layers} layers; removal by top-k "
        f"(k = {', '.join(str(num_to_remove(s, cap.num_layers)) for s in (0.1, 0.2, 0.3))}), layer 0 protected.", "",
        *[line for label, rows in tables.items() for line in (
            f"### {label}", "",
            "| scorer | max score difference | Kendall tau (redundancy) | same removed at 10 / 20 / 30% / same adaptive set |",
            "| --- | --- | --- | --- |", *rows, "")],
        f"Pooled states and norm outputs: {pooled / 2**20:.1f} MiB in float32, {pooled / 2**21:.1f} MiB in float16. "
        f"Every ranking unchanged as stored (tau = 1, same removals): {same_everywhere}.", ""])
    print(text)
    out = ROOT / "bench" / "results" / f"capture_precision_{dt.date.today().isoformat()}.md"
    out.write_text(text)
    print(f"written: {out}")
    return 0 if same_everywhere else 1


if __name__ == "__main__":
    sys.exit(main())
