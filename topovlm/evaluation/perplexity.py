"""Perplexity over text samples (the sample's ``question`` field holds the text)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from topovlm.data.sources import load_samples
from topovlm.evaluation.base import Evaluator

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


class PerplexityEvaluator(Evaluator):
    """Token-weighted perplexity of the raw text (no chat template), one sequence per sample."""

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
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(samples), bs), desc=f"eval {self.cfg.name}", leave=False):
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
        mean = total_nll / max(total_tokens, 1)
        return {"perplexity": math.exp(mean), "nll": mean, "num_tokens": float(total_tokens)}
