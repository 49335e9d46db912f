"""The last layers before the final one go first (a depth-only sanity baseline)."""
from __future__ import annotations

import numpy as np

from topovlm.registry import register_scorer
from topovlm.api import CaptureLike, LayerScorer, ScoreResult, ScoringContext


@register_scorer("tail")
class TailScorer(LayerScorer):
    def score(self, capture: CaptureLike, ctx: ScoringContext) -> ScoreResult:
        n = capture.num_layers
        order = np.arange(n, dtype=np.float64)
        order[-1] = -np.inf  # the final layer is removed last
        return ScoreResult(scores=order, redundancy=order)
