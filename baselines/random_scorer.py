"""Random layer order, seeded by the run's ``seed`` (plus an optional offset)."""
from __future__ import annotations

import numpy as np

from topovlm.registry import register_scorer
from topovlm.api import CaptureLike, LayerScorer, ScoreResult, ScoringContext


@register_scorer("random")
class RandomScorer(LayerScorer):
    def __init__(self, seed_offset: int = 0) -> None:
        self.seed_offset = seed_offset

    def score(self, capture: CaptureLike, ctx: ScoringContext) -> ScoreResult:
        rng = np.random.default_rng(ctx.seed + self.seed_offset)
        values = rng.random(capture.num_layers)
        return ScoreResult(scores=values, redundancy=values)
