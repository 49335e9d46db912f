"""ShortGPT block influence (arXiv 2403.03853): BI[l] = 1 - E[cos(h_in[l], h_out[l])] over tokens."""
from __future__ import annotations

import numpy as np

from topovlm.registry import register_scorer
from topovlm.api import CaptureLike, CaptureSpec, LayerScorer, ScoreResult, ScoringContext, StatRequest

TOKENS = ("all", "text", "vision")


@register_scorer("shortgpt")
class ShortGPTScorer(LayerScorer):
    """Remove the layers with the lowest block influence, independently.

    The expectation is over samples of the per-sample mean over tokens (``tokens``:
    all, text or vision tokens); a NaN cosine (no such tokens) is ignored.
    """

    def __init__(self, tokens: str = "all") -> None:
        if tokens not in TOKENS:
            raise ValueError(f"tokens={tokens!r}; allowed: {', '.join(TOKENS)}")
        self.tokens = tokens

    def capture_spec(self) -> CaptureSpec:
        return CaptureSpec((StatRequest.make("token_cos", tokens=self.tokens),))

    def score(self, capture: CaptureLike, ctx: ScoringContext) -> ScoreResult:
        cos = capture.stat(StatRequest.make("token_cos", tokens=self.tokens))
        bi = 1.0 - np.nanmean(cos, axis=1)
        return ScoreResult(scores=bi, redundancy=-bi)
