"""Perplexity over text samples (the sample's ``question`` field holds the text)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from topovlm.progress import bar

from topovlm.data.sources import load_samples
from topovlm.api import Evaluator

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


class PerplexityEvaluator(Evaluator):
    """Token-weighted perplexity of the raw text (no chat template), one sequence per sample."""

    HIGHER_IS_BETTER = {"perplexity": False, "nll": False}  # num_tokens: a count

    def __init__(self, task_cfg: Any) -> None:
        super().__init__(task_cfg)
        self.per_sample: list[dict[str, Any]] = []

    def sample_records(self) -> list[dict[str, Any]]:
        """One record per text of the last ``evaluate``: ``id``, ``domain``, ``category``, ``loss``
        (mean next-token NLL over the sample's tokens), ``nll_sum`` and ``num_tokens`` (the
        corpus perplexity is ``exp(sum nll_sum / sum num_tokens)``)."""
        return [{**r, "prediction": None, "target": None,
                 "loss": r["nll_sum"] / r["num_tokens"] if r["num_tokens"] else float("nan")} for r in self.per_sample]

    @torch.inference_mode()
    def evaluate(self, adapter: "ModelAdapter") -> dict[str, float]:
        samples = load_samples(self.cfg.dataset)
        if self.cfg.limit is not None:
            samples = samples[: self.cfg.limit]
        tok = adapter.tokenizer
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        total_nll, total_tokens = 0.0, 0
        self.per_sample = []
        bs = self.cfg.batch_size
        for start in bar(range(0, len(samples), bs), f"eval {self.cfg.name}", leave=False):
            texts = [s.question for s in samples[start:start + bs]]
            batch = tok(texts, return_tensors="pt", padding=True).to(adapter.device)
            logits = adapter.model(**batch, use_cache=False).logits.float()
            targets = batch["input_ids"][:, 1:]
            mask = batch["attention_mask"][:, 1:].bool()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), targets, reduction="none"
            )
            total_nll += float(nll[mask].sum())
            total_tokens += int(mask.sum())
            row_nll = (nll * mask).sum(dim=1)
            row_tokens = mask.sum(dim=1)
            for s, value, count in zip(samples[start:start + bs], row_nll.tolist(), row_tokens.tolist()):
                self.per_sample.append({"id": s.id, "domain": s.domain, "category": s.category,
                                        "nll_sum": float(value), "num_tokens": int(count)})
        mean = total_nll / max(total_tokens, 1)
        return {"perplexity": math.exp(mean), "nll": mean, "num_tokens": float(total_tokens)}
