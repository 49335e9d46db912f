"""Log-likelihood multiple choice: each candidate's tokens scored as lm-evaluation-harness does."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import compose, make_samples, tiny_overrides
from topovlm.evaluation.base import choice_loglikelihoods


def _manual(adapter, sample, answer):
    """log p(answer | prompt) from one unbatched forward with full logits."""
    prompt = adapter.build_inputs([sample])["input_ids"][0]
    full = adapter.build_inputs([sample], answers=[answer])
    ids = full["input_ids"][0]
    n = len(prompt)
    with torch.no_grad():
        logits = adapter.model(**full).logits[0].float()
    logp = torch.log_softmax(logits[n - 1:-1], dim=-1)
    return float(logp.gather(-1, ids[n:, None]).sum())


def test_batched_scores_equal_an_unbatched_computation(tiny_llava):
    samples = make_samples(3)
    choices = [["red", "blue"], ["1", "2", "13"], ["yes", "no"]]
    scores = choice_loglikelihoods(tiny_llava, samples, choices, batch_size=4)
    for s, cs, sc in zip(samples, choices, scores):
        assert len(sc) == len(cs)
        for c, value in zip(cs, sc):
            assert value == pytest.approx(_manual(tiny_llava, s, c), abs=1e-4)


def test_accuracy_mc_in_results_and_sample_records(tmp_path):
    import json

    from topovlm.runner import run_job

    res = run_job(compose(tiny_overrides(tmp_path, "sparsity=0.25")), tmp_path / "job")
    m = res["metrics"]
    assert 0.0 <= m["accuracy_mc"] <= 1.0 and "accuracy_mc/count" in m and "accuracy_mc/math" in m
    recs = [json.loads(line) for line in (tmp_path / "job" / "samples.jsonl").read_text().splitlines()]
    assert all("prediction_mc" in r and isinstance(r["correct_mc"], bool) for r in recs)
    assert sum(r["correct_mc"] for r in recs) / len(recs) == pytest.approx(m["accuracy_mc"])
    # every pick is one of its category's answers
    answers = {}
    for r in recs:
        answers.setdefault(r["category"], set()).add(r["target"])
    assert all(r["prediction_mc"] in answers[r["category"]] for r in recs)
