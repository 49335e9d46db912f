"""Evaluators: ``task.evaluator`` name -> class with ``evaluate(adapter) -> metrics``."""
from __future__ import annotations

from typing import Any

from topovlm.api import Evaluator
from topovlm.registry import Registry
from topovlm.evaluation.perplexity import PerplexityEvaluator
from topovlm.evaluation.vqa import VQAEvaluator

EVALUATORS: Registry = Registry("evaluator", base=Evaluator, entry_point_group="topovlm.evaluators", lazy={
    "vqa": "topovlm.evaluation.vqa:VQAEvaluator",
    "perplexity": "topovlm.evaluation.perplexity:PerplexityEvaluator",
    "lmms": "topovlm.evaluation.lmms:LmmsEvalEvaluator",
})


def build_evaluator(task_cfg: Any) -> Evaluator:
    return EVALUATORS[task_cfg.evaluator](task_cfg)


__all__ = ["EVALUATORS", "Evaluator", "PerplexityEvaluator", "VQAEvaluator", "build_evaluator"]
