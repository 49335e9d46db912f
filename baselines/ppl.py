"""Shortened LLaMA's PPL criterion (Kim et al. 2024, arXiv 2402.02834): remove each decoder layer
alone; the calibration loss without it is its importance. The layers whose removal raises the
loss least go first (one-shot). For a VLM the loss is over the answer or caption tokens of the
image-text calibration samples (:mod:`topovlm.removal_loss`). Cost: L + 1 calibration passes."""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from topovlm.api import LayerScorer, ScoreResult, ScoringContext
from topovlm.registry import register_scorer
from topovlm.removal_loss import CalibrationLoss


def check_num_samples(num_samples: Any) -> None:
    if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                                    or num_samples < 1):
        raise ValueError(f"num_samples={num_samples!r}; allowed: a positive integer, or null (every calibration sample)")


def check_against_calibration(num_samples: int | None, cfg: Any) -> None:
    n = int(cfg.calibration.n)
    if num_samples is not None and num_samples > n:
        raise ValueError(f"num_samples={num_samples} > calibration.n={n}; set scorer.num_samples<={n}")


def cost(loss: CalibrationLoss) -> dict[str, Any]:
    """What the scorer spent, for results.json: passes over the calibration subset and their time."""
    return {"passes": loss.passes, "seconds": round(loss.seconds, 3), "samples": loss.num_samples,
            "target_tokens": loss.num_tokens}


@register_scorer("ppl")
class PPLScorer(LayerScorer):
    """score[l] = perplexity of the calibration targets without layer l; redundancy = -loss."""

    needs_removal_loss = True

    # [project] the paper calibrates on a small set of text sequences; the first 32 calibration
    # samples keep one pass at a few seconds on 2 CPU cores (None: every calibration sample)
    def __init__(self, num_samples: int | None = 32) -> None:
        check_num_samples(num_samples)
        self.num_samples = num_samples

    def check_config(self, cfg: Any) -> None:
        check_against_calibration(self.num_samples, cfg)

    def removal_loss_samples(self, samples: Sequence[Any]) -> Sequence[Any]:
        return samples[: self.num_samples] if self.num_samples else samples

    def score(self, capture: Any, ctx: ScoringContext) -> ScoreResult:
        loss = ctx.removal_loss
        full = loss(())
        without = np.array([loss((layer,)) for layer in tqdm(range(ctx.num_layers), desc="ppl: one layer removed",
                                                               leave=False)])
        return ScoreResult(scores=np.exp(without), redundancy=-without,
                           extra={"ppl": {"unpruned_loss": full, "unpruned_ppl": math.exp(full),
                                          "loss_without": without.tolist(), "cost": cost(loss)}})
