"""The evaluator interface (:class:`topovlm.api.Evaluator`) and helpers evaluators share."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch


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


def continuation_token_ids(adapter: "ModelAdapter", samples: Sequence["VQASample"],
                           choices: Sequence[Sequence[str]]) -> list[list[list[int] | None]]:
    """The tokens each candidate adds to its sample's prompt, as :func:`choice_loglikelihoods`
    reads them: the tokens of prompt + candidate after the prompt's own. None where tokenizing
    them together changes the prompt's tokens (a merge across the boundary): such a candidate
    is no continuation of the prompt's cache and is scored by a full forward instead."""
    tok = adapter.tokenizer
    prompts = [adapter.prompt(s) for s in samples]
    base = tok(prompts, add_special_tokens=False)["input_ids"]
    joined = iter(tok([p + c for p, cs in zip(prompts, choices) for c in cs], add_special_tokens=False)["input_ids"])
    out: list[list[list[int] | None]] = []
    for s, b, cs in zip(samples, base, choices):
        row: list[list[int] | None] = []
        for _ in cs:
            ids = next(joined)
            if len(ids) <= len(b) and ids[:len(b)] == b:
                raise ValueError(f"sample {s.id}: a candidate answer adds no token to the prompt")
            row.append(ids[len(b):] if ids[:len(b)] == b else None)
        out.append(row)
    return out


def prompt_pass_loglikelihoods(adapter: "ModelAdapter", samples: Sequence["VQASample"],
                               choices: Sequence[Sequence[str]], prompt: Any,
                               batch_size: int = 16) -> list[list[float]]:
    """:func:`choice_loglikelihoods` from the prompt pass of a generation (``prompt``, the
    :class:`~topovlm.adapters.base.PromptPass` of ``samples`` in this order): single-token
    candidates are read from the first step's logits, longer ones run over the prompt's cached
    keys/values, so the prompt is computed once per question, not once per candidate."""
    cont = continuation_token_ids(adapter, samples, choices)
    pairs = [(i, j) for i, row in enumerate(cont) for j, ids in enumerate(row)
             if ids is not None and (len(ids) == 1 or prompt.cache is not None)]
    values = adapter.continuation_logprobs(prompt, [i for i, _ in pairs], [cont[i][j] for i, j in pairs],
                                           batch_size)
    scores: list[list[float | None]] = [[None] * len(cs) for cs in choices]
    for (i, j), v in zip(pairs, values):
        scores[i][j] = v
    # the rest (boundary merges; multi-token candidates where the cache cannot be reused): full forwards
    rest = [i for i, row in enumerate(scores) if any(v is None for v in row)]
    if rest:
        todo = [[c for c, v in zip(choices[i], scores[i]) if v is None] for i in rest]
        filled = choice_loglikelihoods(adapter, [samples[i] for i in rest], todo, batch_size)
        for i, values_i in zip(rest, filled):
            it = iter(values_i)
            scores[i] = [v if v is not None else next(it) for v in scores[i]]
    return scores  # type: ignore[return-value]
