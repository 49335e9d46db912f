"""The evaluator interface (:class:`topovlm.api.Evaluator`) and helpers evaluators share."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch

from topovlm.api import Evaluator  # noqa: F401 - the interface, re-exported here

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.data.types import VQASample


@torch.inference_mode()
def choice_loglikelihoods(adapter: "ModelAdapter", samples: Sequence["VQASample"],
                          choices: Sequence[Sequence[str]], batch_size: int = 16) -> list[list[float]]:
    """``log p(choice | prompt)`` of every candidate answer of every sample, summed over the
    choice's tokens, as lm-evaluation-harness scores multiple-choice tasks. The prompt is the
    adapter's (the chat template, ending where the answer starts); each candidate is appended
    and the model's log-likelihood of exactly its tokens is read from one forward pass."""
    pairs = [(i, c) for i, cs in enumerate(choices) for c in cs]
    prompt_len = {}
    for start in range(0, len(samples), batch_size):
        batch = list(samples[start:start + batch_size])
        lengths = adapter.build_inputs(batch)["attention_mask"].sum(dim=1).tolist()
        prompt_len.update({start + j: int(n) for j, n in enumerate(lengths)})
    scores: list[list[float]] = [[] for _ in samples]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        inputs = adapter.build_inputs([samples[i] for i, _ in chunk], answers=[c for _, c in chunk])
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        cont = [int(n) - prompt_len[i] for (i, _), n in zip(chunk, lengths)]
        keep = max(cont) + 1  # left padding: the continuation is each row's last tokens
        logits = adapter.forward(inputs, logits_to_keep=keep).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
        targets = inputs["input_ids"][:, -keep + 1:]
        for row, ((i, _), m) in enumerate(zip(chunk, cont)):
            if m < 1:
                raise ValueError(f"sample {samples[i].id}: a candidate answer adds no token to the prompt")
            token_logp = logp[row, -m:].gather(-1, targets[row, -m:, None]).squeeze(-1)
            scores[i].append(float(token_logp.sum()))
    return scores
