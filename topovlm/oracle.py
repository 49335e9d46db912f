"""The oracle analysis: what removing each layer really costs, measured on a development split.

``scorer=oracle`` is an ordinary scorer whose "scores" are measurements, not predictions:

* **leave-one-out damage**: the development metric of the unpruned model minus the metric
  with each layer alone removed (``scores``; protected layers are measured too);
* **greedy-oracle removal order**: repeatedly, the unprotected layer whose removal (given the
  ones already removed) leaves the best development metric; equal metrics (frequent with
  exact match on a small split) are decided by the development answers' loss, then by the
  lower index. The
  order is the ranking, so a sweep evaluates the greedy set of every swept budget on the test
  questions like any scorer's.

The development split is disjoint from the test questions and from the calibration samples
(on the embedded benchmark: ``split=dev``, scenes never seen in training either), and nothing
here feeds another scorer. Cost, stated before it runs: ``L + sum_{i=1}^{k-1} (L - p - i)``
evaluations of ``dev_n`` questions, ``k`` the searched steps, ``p`` the protected layers.
The per-question results of every leave-one-out evaluation are kept (``arrays.loo_correct``)
so that the summary can put bootstrap intervals on each scorer's rank correlation with the
damage (:mod:`topovlm.summary.validity`).
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from topovlm.api import LayerScorer, ScoreResult, ScoringContext
from topovlm.registry import register_scorer
from topovlm.removal_loss import CORRECT_FIELD, DevMetric  # noqa: F401 - DevMetric: part of this scorer's code identity

log = logging.getLogger(__name__)


def evaluations(num_layers: int, protected: int, steps: int) -> int:
    """Development evaluations of one oracle run: the unpruned model, every layer alone, then
    the greedy steps after the first."""
    return 1 + num_layers + sum(max(0, num_layers - protected - i) for i in range(1, steps))


@register_scorer("oracle")
class OracleScorer(LayerScorer):
    needs_dev_metric = True

    def __init__(
        self,
        metric: str = "accuracy",  # accuracy | accuracy_mc: the task's headline metric [project]
        dev_split: str = "dev",  # the embedded benchmark's development split (scenes unseen in training)
        # [project] 60 questions, sized so that the whole analysis fits about 30 minutes on 2 cores:
        # on the embedded default it is 227 evaluations (30 layers, 9 greedy steps), measured at 57
        # minutes on one thread beside another sweep, an estimated 20 minutes on 2 idle cores at 12.5
        # questions/s (bench/results/oracle_2026-12-05.md). One question is 1.7 points; the 95%
        # bootstrap interval of a leave-one-out drop of 0.27 is about +-0.12, of 0.05 about +-0.07
        dev_n: int = 60,
        max_removed: float = 0.3,  # [project] the largest sparsity of the default sweep
    ) -> None:
        if metric not in CORRECT_FIELD:
            raise ValueError(f"metric={metric!r}; allowed: {', '.join(CORRECT_FIELD)}")
        if not isinstance(dev_n, int) or isinstance(dev_n, bool) or dev_n < 1:
            raise ValueError(f"dev_n={dev_n!r}; allowed: a positive integer")
        if not 0 < float(max_removed) <= 1:
            raise ValueError(f"max_removed={max_removed!r}; allowed: a fraction of the layers in (0, 1]")
        self.metric, self.dev_split, self.dev_n, self.max_removed = metric, dev_split, dev_n, float(max_removed)
        self.protect: list[int] = [0]

    def check_config(self, cfg: Any) -> None:
        task = cfg.task
        if task.evaluator != "vqa" or task.dataset.source != "shapes":
            raise ValueError(f"the oracle needs a development split: task={task.name} (evaluator={task.evaluator}, "
                             f"source={task.dataset.source}) has none; allowed: a vqa task on the shapes source")
        if cfg.task.dataset.split == self.dev_split or cfg.calibration.dataset.split == self.dev_split:
            raise ValueError(f"dev_split={self.dev_split!r} is also the test or calibration split; "
                             "the development split must be disjoint from both")
        if self.metric == "accuracy_mc" and not (task.options or {}).get("multiple_choice"):
            raise ValueError("metric=accuracy_mc needs task.options.multiple_choice=true")
        self.protect = [int(p) for p in cfg.selection.protect]  # the layers no policy removes

    def dev_task(self, task_cfg: Any) -> Any:
        """The job's task on the development split (every other setting the same)."""
        task = OmegaConf.create(OmegaConf.to_container(task_cfg, resolve=True))
        task.dataset.split, task.dataset.n, task.limit = self.dev_split, self.dev_n, None
        return task

    def steps(self, num_layers: int) -> int:
        return min(num_layers - len(self.protect), math.ceil(self.max_removed * num_layers))

    def score(self, capture: Any, ctx: ScoringContext) -> ScoreResult:
        dev, n = ctx.dev_metric, ctx.num_layers
        protected = {p % n for p in self.protect}
        steps = self.steps(n)
        total = evaluations(n, len(protected), steps)
        log.info("oracle: %d evaluations of %d development questions (%d layers, %d greedy steps)",
                 total, self.dev_n, n, steps)
        bar = tqdm(total=total, desc="oracle: development evaluations", leave=False)
        base = dev(())
        bar.update()
        loo = []
        for layer in range(n):  # leave-one-out, also the greedy search's first step
            loo.append(dev((layer,)))
            bar.update()
        loo_correct = np.array([base.correct] + [r.correct for r in loo], dtype=np.int8)
        damage = np.array([base.value - r.value for r in loo])
        order: list[int] = []
        step_values: list[float] = []
        last = {layer: loo[layer] for layer in range(n) if layer not in protected}
        for step in range(steps):
            if step > 0:
                last = {}
                for layer in (l for l in range(n) if l not in protected and l not in order):
                    last[layer] = dev(order + [layer])
                    bar.update()
            best = min(last, key=lambda l: (-last[l].value, last[l].loss, l))
            order.append(best)
            step_values.append(last[best].value)
        bar.close()
        rest = sorted((l for l in last if l not in order), key=lambda l: (-last[l].value, last[l].loss, l))
        redundancy = np.full(n, -np.inf)
        for position, layer in enumerate(order + rest):
            redundancy[layer] = n - position
        return ScoreResult(
            scores=damage, redundancy=redundancy,
            extra={"oracle": {"metric": self.metric, "dev_split": self.dev_split, "dev_n": len(base.correct),
                              "unpruned": base.value, "loo_damage": damage.tolist(),
                              "unpruned_loss": base.loss, "loo_loss_increase": [r.loss - base.loss for r in loo],
                              "order": order,
                              "step_values": step_values, "continued_by_last_step": rest,
                              "protected": sorted(protected),
                              "cost": {"evaluations": dev.passes, "seconds": round(dev.seconds, 3)}}},
            arrays={"loo_correct": loo_correct})
