"""Small, dependency-free evaluation helpers for the default model.

Used by the tests, the speed benchmark and the training script's final report; the
harness has its own evaluation pipeline that builds inputs the same way (LLaVA-1.5
style chat template, greedy decoding, normalised exact match).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn



def build_prompt(processor, question: str) -> str:
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)


@torch.no_grad()
def generate_answers(model, processor, samples: Sequence, batch_size: int = 32,
                     max_new_tokens: int = 4) -> list[str]:
    """Greedy answers (decoded text, special tokens removed) for ``samples``."""
    processor.tokenizer.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i: i + batch_size]
        inputs = processor(images=[s.image for s in chunk],
                           text=[build_prompt(processor, s.question) for s in chunk],
                           return_tensors="pt", padding=True)
        gen = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out += processor.batch_decode(gen[:, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True)
    return out


def accuracy(samples: Sequence, predictions: Iterable[str]) -> dict[str, float]:
    """Exact match as the harness's VQA evaluator scores it (overall, per domain, per category)."""
    from topovlm.evaluation.vqa import exact_match_metrics

    return exact_match_metrics(samples, predictions)


def evaluate(model, processor, samples: Sequence, batch_size: int = 32) -> dict[str, float]:
    return accuracy(samples, generate_answers(model, processor, samples, batch_size))


def drop_layers(model, drop: Iterable[int]) -> list[int]:
    """Remove decoder layers ``drop`` from a LLaVA model in place; returns kept indices."""
    lm = model.model.language_model
    n = len(lm.layers)
    drop = set(drop)
    keep = [i for i in range(n) if i not in drop]
    lm.layers = nn.ModuleList([lm.layers[i] for i in keep])
    for new, layer in enumerate(lm.layers):
        layer.self_attn.layer_idx = new
    tc = model.config.text_config
    if getattr(tc, "layer_types", None):
        tc.layer_types = [tc.layer_types[i] for i in keep]
    tc.num_hidden_layers = len(keep)
    return keep
