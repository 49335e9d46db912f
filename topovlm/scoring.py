"""The scorer interface (kept for imports): everything lives in :mod:`topovlm.api`."""
from topovlm.api import (POOLINGS, CaptureLike, CaptureSpec, LayerScorer, ScoreResult, ScoringContext,  # noqa: F401
                         StatRequest)
