"""Per-layer cosine similarity between a layer's input and output; the most similar layers go first."""
from __future__ import annotations

import numpy as np

from topovlm.registry import register_scorer
from topovlm.api import POOLINGS, CaptureLike, CaptureSpec, LayerScorer, ScoreResult, ScoringContext, StatRequest

# token-level poolings: mean over those tokens of the per-token cosine
TOKEN_POOLINGS = {"all_tokens": "all", "text_tokens": "text", "vision_tokens": "vision"}


def pooled_cosine(h_in: np.ndarray, h_out: np.ndarray) -> np.ndarray:
    """Row-wise cosine of ``(L, N, d)`` arrays -> ``(L, N)``; NaN rows stay NaN."""
    num = np.einsum("lnd,lnd->ln", h_in, h_out)
    den = np.linalg.norm(h_in, axis=-1) * np.linalg.norm(h_out, axis=-1)
    return num / np.maximum(den, 1e-12)


def layer_cosine(capture: CaptureLike, pooling: str) -> np.ndarray:
    """``(L, N)`` cosine between each layer's input and output under a pooling."""
    if pooling in TOKEN_POOLINGS:
        return capture.stat(StatRequest.make("token_cos", tokens=TOKEN_POOLINGS[pooling]))
    return pooled_cosine(capture.h_in(pooling).astype(np.float64), capture.h_out(pooling).astype(np.float64))


def check_pooling(pooling: str) -> None:
    allowed = (*POOLINGS, *TOKEN_POOLINGS)
    if pooling not in allowed:
        raise ValueError(f"pooling={pooling!r}; allowed: {', '.join(allowed)}")


def token_spec(pooling: str) -> CaptureSpec:
    if pooling in TOKEN_POOLINGS:
        return CaptureSpec((StatRequest.make("token_cos", tokens=TOKEN_POOLINGS[pooling]),))
    return CaptureSpec()


@register_scorer("cosine")
class CosineScorer(LayerScorer):
    """score[l] = mean over samples of cos(h_in[l], h_out[l]); prune the most similar."""

    def __init__(self, pooling: str = "last") -> None:  # last | text_mean | vision_mean | all_tokens | text_tokens | vision_tokens
        check_pooling(pooling)
        self.pooling = pooling

    def capture_spec(self) -> CaptureSpec:
        return token_spec(self.pooling)

    def score(self, capture: CaptureLike, ctx: ScoringContext) -> ScoreResult:
        cos = np.nanmean(layer_cosine(capture, self.pooling), axis=1)
        return ScoreResult(scores=cos, redundancy=cos)
