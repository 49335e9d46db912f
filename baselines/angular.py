"""Angular distance of a contiguous block (Gromov et al., arXiv 2403.17887).

d(l, n) = arccos(cos(h_in[l], h_in[l+n])) / pi on the last token, averaged over
samples; for a budget of n layers remove l*..l*+n-1 with l* = argmin_l d(l, n).
"""
from __future__ import annotations

import numpy as np

from baselines.cosine import pooled_cosine
from topovlm.registry import register_scorer
from topovlm.api import POOLINGS, CaptureLike, LayerScorer, ScoreResult, ScoringContext


def block_distances(states: np.ndarray) -> np.ndarray:
    """``states``: ``(L+1, N, d)`` layer-boundary states -> ``(L+1, L)`` mean angular distance
    of every block (NaN where ``l + n > L``; row 0 is all zeros)."""
    n_bound = states.shape[0]
    num_layers = n_bound - 1
    out = np.full((n_bound, num_layers), np.nan)
    out[0] = 0.0
    for n in range(1, n_bound):
        cos = pooled_cosine(states[: n_bound - n], states[n:])  # (L+1-n, N)
        d = np.arccos(np.clip(cos, -1.0, 1.0)) / np.pi
        out[n, : num_layers - n + 1] = np.nanmean(d, axis=1)
    return out


@register_scorer("angular")
class AngularScorer(LayerScorer):
    default_policy = "block"

    def __init__(self, pooling: str = "last") -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; allowed: {', '.join(POOLINGS)}")
        self.pooling = pooling

    def score(self, capture: CaptureLike, ctx: ScoringContext) -> ScoreResult:
        states = capture.pooled[self.pooling].astype(np.float64)
        cost = block_distances(states)
        single = cost[1]  # d(l, 1): how much one layer turns the residual stream
        return ScoreResult(scores=single, redundancy=-single, block_cost=cost)
