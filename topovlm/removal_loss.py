"""The calibration loss of the model with some decoder layers removed: what the data-driven
scorers (``ppl``, ``sleb``) rank by, measured by the harness so that scorers never touch the model.

The loss is the mean next-token negative log-likelihood over the *target* tokens of the
calibration samples, token-weighted over the whole set: the answer of a question, or, for a
sample without an answer (a caption source puts the caption in ``question``), the caption as
the reply to its image alone. Prompt, image and padding tokens are never scored. Each call
removes the layers (:func:`topovlm.pruning.layers_removed`), runs every batch and restores the
model, whatever happens.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Sequence

import torch

from topovlm.pruning import layers_removed

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.data.types import VQASample

log = logging.getLogger(__name__)


def _prompt_and_target(sample: "VQASample") -> tuple["VQASample", str]:
    if sample.answer:
        return sample, sample.answer
    return dataclasses.replace(sample, question=""), sample.question


class CalibrationLoss:
    """``loss(removed)``: the calibration loss without ``removed`` (original layer indices).

    Batches are tokenised once. ``passes`` counts calls (one pass over the set each) and
    ``seconds`` their wall time, so a scorer can report its cost."""

    def __init__(self, adapter: "ModelAdapter", samples: Sequence["VQASample"], batch_size: int) -> None:
        if not samples:
            raise ValueError("the calibration loss needs at least one calibration sample")
        self.adapter = adapter
        self.passes = 0
        self.seconds = 0.0
        self.num_samples = len(samples)
        self.batches = [self._batch(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
        self.num_tokens = int(sum(int(mask.sum()) for _, mask in self.batches))
        if self.num_tokens == 0:
            raise ValueError("the calibration samples have no answer or caption tokens to score")

    def _batch(self, samples: Sequence["VQASample"]) -> tuple[dict[str, Any], torch.Tensor]:
        """Model inputs of prompt + target (left-padded) and a mask of the target tokens' positions."""
        pairs = [_prompt_and_target(s) for s in samples]
        prompts, targets = [p for p, _ in pairs], [t for _, t in pairs]
        inputs = self.adapter.build_inputs(prompts, answers=targets)
        tok = self.adapter.tokenizer
        ids = inputs["input_ids"]
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, (prompt, target) in enumerate(zip(prompts, targets)):
            # the target's token count: the prompt's tokens with and without it (the same
            # tokenizer call, so special tokens and image placeholders cancel out)
            text = self.adapter.prompt(prompt)
            n = len(tok(text + target, add_special_tokens=False)["input_ids"]) - \
                len(tok(text, add_special_tokens=False)["input_ids"])
            if n > 0:  # left padding: every row ends with its target
                mask[row, ids.shape[1] - n:] = True
        return inputs, mask

    @torch.inference_mode()
    def __call__(self, removed: Sequence[int] = ()) -> float:
        start = time.perf_counter()
        nll = 0.0
        with layers_removed(self.adapter, removed):
            for inputs, mask in self.batches:
                logits = self.adapter.forward(inputs).logits.float()
                targets = inputs["input_ids"][:, 1:]
                scored = mask[:, 1:].to(logits.device)
                losses = torch.nn.functional.cross_entropy(logits[:, :-1][scored], targets[scored], reduction="sum")
                nll += float(losses)
        self.passes += 1
        self.seconds += time.perf_counter() - start
        return nll / self.num_tokens


#: the per-question 0/1 field of an evaluator's records behind each accuracy metric
CORRECT_FIELD = {"accuracy": "correct", "accuracy_mc": "correct_mc"}


@dataclasses.dataclass
class DevResult:
    value: float          # the task metric on the development split
    correct: list[bool]   # each question's 0/1 result behind it
    loss: float           # the mean NLL of the development answers (the tie-break of equal metrics)


class DevMetric:
    """``dev(removed)``: the task metric on the development split without ``removed``, each
    question's 0/1 result and the answers' loss. The oracle analysis measures real removal damage
    with it; the dev split is disjoint from the test questions and from the calibration samples."""

    def __init__(self, adapter: "ModelAdapter", task_cfg: Any, metric: str) -> None:
        from topovlm.data.sources import load_samples
        from topovlm.evaluation import build_evaluator

        if metric not in CORRECT_FIELD:
            raise ValueError(f"metric={metric!r}; allowed: {', '.join(CORRECT_FIELD)}")
        self.adapter, self.metric = adapter, metric
        self.evaluator = build_evaluator(task_cfg)
        self.loss = CalibrationLoss(adapter, load_samples(task_cfg.dataset), int(task_cfg.batch_size))
        self.passes, self.seconds = 0, 0.0

    def __call__(self, removed: Sequence[int] = ()) -> DevResult:
        start = time.perf_counter()
        with layers_removed(self.adapter, removed):
            metrics = self.evaluator.evaluate(self.adapter)
        records = self.evaluator.sample_records() or []
        loss = self.loss(removed)
        self.passes += 1
        self.seconds += time.perf_counter() - start
        return DevResult(float(metrics[self.metric]), [bool(r[CORRECT_FIELD[self.metric]]) for r in records], loss)
