"""A scorer with a config-only check (``LayerScorer.check_config``), for the preflight tests."""
from __future__ import annotations

from typing import Any

import numpy as np

from topovlm.registry import register_scorer
from topovlm.api import LayerScorer, ScoreResult


@register_scorer("needs_many")
class NeedsManySamples(LayerScorer):
    checked: list[int] = []

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        cls.checked.append(int(cfg.calibration.n))
        if cfg.calibration.n < 10:
            raise ValueError(f"calibration.n={cfg.calibration.n} < 10, the samples this scorer needs")

    def score(self, capture, ctx):
        r = np.arange(capture.num_layers, dtype=float)
        return ScoreResult(scores=r, redundancy=r)
