"""Exact-match visual QA over (image, question, answer) records, overall and per domain."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from topovlm.data.normalize import normalize_answer
from topovlm.data.sources import load_samples
from topovlm.evaluation.base import Evaluator

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


class VQAEvaluator(Evaluator):
    """Greedy generation; a prediction is correct when its normalised form equals the answer's.

    Metrics: ``accuracy`` and ``accuracy/<domain>`` and ``accuracy/<category>`` (fractions).
    """

    def __init__(self, task_cfg: Any) -> None:
        super().__init__(task_cfg)
        self.predictions: list[dict[str, str]] = []

    def evaluate(self, adapter: "ModelAdapter") -> dict[str, float]:
        samples = load_samples(self.cfg.dataset)
        if self.cfg.limit is not None:
            samples = samples[: self.cfg.limit]
        if not samples:
            raise ValueError(f"task {self.cfg.name!r} has no samples")
        hits: dict[str, list[bool]] = defaultdict(list)
        self.predictions = []
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(samples), bs), desc=f"eval {self.cfg.name}", leave=False):
            batch = samples[start:start + bs]
            preds = adapter.generate(batch, max_new_tokens=self.cfg.max_new_tokens)
            for s, p in zip(batch, preds):
                ok = normalize_answer(p) == normalize_answer(s.answer)
                hits["accuracy"].append(ok)
                hits[f"accuracy/{s.domain}"].append(ok)
                if s.category:
                    hits[f"accuracy/{s.category}"].append(ok)
                self.predictions.append({"id": s.id, "prediction": p, "answer": s.answer, "correct": ok})
        metrics = {k: sum(v) / len(v) for k, v in hits.items()}
        metrics["num_samples"] = float(len(samples))
        return metrics
