"""The evaluator interface."""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


class Evaluator(abc.ABC):
    """Evaluates a (possibly pruned) model, through its adapter, on one task config."""

    def __init__(self, task_cfg: Any) -> None:
        self.cfg = task_cfg

    @abc.abstractmethod
    def evaluate(self, adapter: "ModelAdapter") -> dict[str, float]:
        """Metric name -> value. The headline metric is ``accuracy`` or ``perplexity``."""

    def protocol(self) -> dict[str, Any]:
        """How the numbers were obtained (written to results.json)."""
        return {"evaluator": self.cfg.evaluator, "limit": self.cfg.limit, "batch_size": self.cfg.batch_size}
