"""SLEB (Song et al., ICML 2024, arXiv 2402.09025): remove decoder layers one at a time, each time
the layer whose removal gives the lowest calibration loss given the layers removed so far.

Where the paper is silent, the public code's choices (github.com/jiwonsong-dev/SLEB, ``sleb.py``):
the first and the last remaining block are never candidates (``early_barrier=1``,
``latter_barrier=1``), the loss is the summed NLL (token-weighted), ties go to the first
candidate. The removal order is the ranking, so one run serves every swept sparsity: the first
``max_removed`` steps are searched (sum of (L - 2 - i) passes), and the layers after them are
ordered by the last step's losses (a one-shot continuation, recorded in ``extra.sleb.searched``).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from baselines.ppl import check_against_calibration, check_num_samples, cost
from topovlm.api import LayerScorer, ScoreResult, ScoringContext
from topovlm.registry import register_scorer


@register_scorer("sleb")
class SLEBScorer(LayerScorer):
    """redundancy: L - position in the removal order (the first removed is the most redundant)."""

    needs_removal_loss = True

    def __init__(
        self,
        # [project] the public code calibrates on 128 sequences of 2048 text tokens; the first 32
        # calibration samples keep a pass at a few seconds on 2 CPU cores (None: every sample)
        num_samples: int | None = 32,
        # [project] the steps searched, as a fraction of L: the largest sparsity of the default
        # sweep (0.3); beyond it the order continues by the last step's losses (recorded in results.json)
        max_removed: float = 0.3,
        # [ancestor: the public code's sleb.py defaults] the first and the last remaining block
        # are never candidates
        early_barrier: int = 1,
        latter_barrier: int = 1,
    ) -> None:
        check_num_samples(num_samples)
        if not 0 < float(max_removed) <= 1:
            raise ValueError(f"max_removed={max_removed!r}; allowed: a fraction of the layers in (0, 1]")
        for key, value in (("early_barrier", early_barrier), ("latter_barrier", latter_barrier)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{key}={value!r}; allowed: an integer >= 0")
        self.num_samples = num_samples
        self.max_removed = float(max_removed)
        self.early_barrier = early_barrier
        self.latter_barrier = latter_barrier

    def check_config(self, cfg: Any) -> None:
        check_against_calibration(self.num_samples, cfg)

    def removal_loss_samples(self, samples: Sequence[Any]) -> Sequence[Any]:
        return samples[: self.num_samples] if self.num_samples else samples

    def steps(self, num_layers: int) -> int:
        candidates = num_layers - self.early_barrier - self.latter_barrier
        return max(0, min(candidates, math.ceil(self.max_removed * num_layers)))

    def score(self, capture: Any, ctx: ScoringContext) -> ScoreResult:
        loss, n = ctx.removal_loss, ctx.num_layers
        alive, order, step_loss = list(range(n)), [], []
        last: dict[int, float] = {}
        steps = self.steps(n)
        bar = tqdm(total=sum(len(alive) - i - self.early_barrier - self.latter_barrier for i in range(steps)),
                   desc="sleb: candidate removals", leave=False)
        for _ in range(steps):
            candidates = alive[self.early_barrier:len(alive) - self.latter_barrier]
            last = {}
            for layer in candidates:
                last[layer] = loss(order + [layer])
                bar.update()
            best = min(candidates, key=lambda layer: last[layer])  # min() keeps the first of equal losses
            order.append(best)
            step_loss.append(last[best])
            alive.remove(best)
        bar.close()
        # the rest: by the last step's losses (lowest first), then the barrier layers, removed last
        rest = sorted((layer for layer in alive if layer in last and layer not in order), key=lambda layer: last[layer])
        redundancy = np.full(n, -np.inf)
        for position, layer in enumerate(order + rest):
            redundancy[layer] = n - position
        scores = np.full(n, np.nan)  # the calibration loss after the step that removed the layer
        scores[order] = step_loss
        return ScoreResult(scores=scores, redundancy=redundancy,
                           extra={"sleb": {"order": order, "step_loss": step_loss, "searched": len(order),
                                           "continued_by_last_step": rest,
                                           "cost": cost(loss)}})
