"""Evaluators: ``task.evaluator`` name -> class with ``evaluate(adapter) -> metrics``."""
from __future__ import annotations

from typing import Any

from topovlm.evaluation.base import Evaluator
from topovlm.evaluation.perplexity import PerplexityEvaluator
from topovlm.evaluation.vqa import VQAEvaluator

EVALUATORS: dict[str, str] = {
    "vqa": "topovlm.evaluation.vqa:VQAEvaluator",
    "perplexity": "topovlm.evaluation.perplexity:PerplexityEvaluator",
    "lmms": "topovlm.evaluation.lmms:LmmsEvalEvaluator",
}


def build_evaluator(task_cfg: Any) -> Evaluator:
    import importlib

    module, cls = EVALUATORS[task_cfg.evaluator].split(":")
    return getattr(importlib.import_module(module), cls)(task_cfg)


__all__ = ["EVALUATORS", "Evaluator", "PerplexityEvaluator", "VQAEvaluator", "build_evaluator"]
