"""Log-likelihood multiple choice: each candidate's tokens scored as lm-evaluation-harness does."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import compose, make_samples, tiny_overrides
from topovlm.evaluation.base import choice_loglikelihoods, continuation_token_ids, prompt_pass_loglikelihoods


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


def _uneven(samples):
    """Questions of different lengths, so that every row of a batch has its own left padding."""
    from dataclasses import replace

    return [replace(s, question=s.question + " yes" * (3 * i % 7)) for i, s in enumerate(samples)]


#: single-token candidates and multi-token ones (the tiny tokenizer splits "13", "purple" and phrases)
CHOICES = [["red", "blue", "purple"], ["1", "2", "13"], ["yes", "no", "orange juice"], ["7", "triangle star"],
           ["0", "lazy dog", "3"], ["green", "yellow"]]


def test_prompt_pass_scores_equal_the_per_candidate_forward(tiny_llava):
    samples = _uneven(make_samples(len(CHOICES)))
    cont = continuation_token_ids(tiny_llava, samples, CHOICES)
    lengths = {len(ids) for row in cont for ids in row}
    assert 1 in lengths and max(lengths) > 2  # both paths are exercised
    reference = choice_loglikelihoods(tiny_llava, samples, CHOICES, batch_size=4)
    for bs in (len(samples), 4):  # one batch; batches whose rows pad differently
        got = []
        for start in range(0, len(samples), bs):
            batch = samples[start:start + bs]
            texts, prompt = tiny_llava.generate_with_prompt_pass(tiny_llava.build_inputs(batch), max_new_tokens=3)
            assert texts == tiny_llava.generate(batch, max_new_tokens=3)  # the answers are unchanged
            got += prompt_pass_loglikelihoods(tiny_llava, batch, CHOICES[start:start + bs], prompt, batch_size=3)
        for ref_row, row in zip(reference, got):
            assert row == pytest.approx(ref_row, abs=1e-4)


def test_prompt_pass_without_a_reusable_cache_falls_back_to_full_forwards(tiny_llava):
    samples = _uneven(make_samples(3))
    choices = CHOICES[:3]
    _, prompt = tiny_llava.generate_with_prompt_pass(tiny_llava.build_inputs(samples), max_new_tokens=2)
    prompt.cache = None  # as for Qwen2-VL's multi-axis positions or sliding-window caches
    got = prompt_pass_loglikelihoods(tiny_llava, samples, choices, prompt)
    reference = choice_loglikelihoods(tiny_llava, samples, choices)
    for ref_row, row in zip(reference, got):
        assert row == pytest.approx(ref_row, abs=1e-4)


def test_evaluator_picks_equal_the_per_candidate_reference(tiny_llava):
    from omegaconf import OmegaConf

    from topovlm.config import DatasetConfig, TaskConfig
    from topovlm.data.sources import load_samples
    from topovlm.evaluation.vqa import VQAEvaluator, candidate_answers, pick_answers

    cfg = OmegaConf.structured(TaskConfig(name="shapes", dataset=DatasetConfig(n=20), limit=20, batch_size=8,
                                          max_new_tokens=3, options={"multiple_choice": True}))
    ev = VQAEvaluator(cfg)
    metrics = ev.evaluate(tiny_llava)
    samples = load_samples(cfg.dataset)[:20]
    choices = candidate_answers(samples)
    picks = pick_answers(choices, choice_loglikelihoods(tiny_llava, samples, choices, batch_size=8))
    assert [r["prediction_mc"] for r in ev.predictions] == picks
    assert metrics["accuracy_mc"] == pytest.approx(sum(r["correct_mc"] for r in ev.predictions) / 20)
    # the generated answers are those of the evaluation without multiple choice
    plain = VQAEvaluator(OmegaConf.merge(cfg, {"options": {"multiple_choice": False}}))
    plain.evaluate(tiny_llava)
    assert [r["prediction"] for r in plain.predictions] == [r["prediction"] for r in ev.predictions]


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


def test_accuracy_mc_gets_per_sample_intervals_like_exact_match():
    from topovlm.samples import join_reference
    from topovlm.summary.statistics import _reference_view, cell_interval, cell_samples, metric_samples

    def rec(i, correct, correct_mc, category):
        return {"key": f"k{i}", "prediction": "x", "correct": correct, "correct_mc": correct_mc,
                "domain": "non_math", "category": category}

    pruned = [rec(0, False, True, "colour"), rec(1, False, False, "colour"), rec(2, True, True, "shape")]
    unpruned = {r["key"]: r for r in [rec(0, True, True, "colour"), rec(1, True, False, "colour"),
                                      rec(2, True, True, "shape")]}
    joined = join_reference(pruned, unpruned)
    assert [r["reference_correct_mc"] for r in joined] == [True, False, True]
    assert metric_samples(joined, "accuracy_mc") == ("proportion", {"k0": 1.0, "k1": 0.0, "k2": 1.0})
    assert metric_samples(joined, "accuracy_mc/colour") == ("proportion", {"k0": 1.0, "k1": 0.0})
    assert metric_samples(joined, "accuracy") == ("proportion", {"k0": 0.0, "k1": 0.0, "k2": 1.0})
    # the unpruned model's view reads the reference fields of the same records
    assert metric_samples(_reference_view(joined), "accuracy_mc")[1] == {"k0": 1.0, "k1": 0.0, "k2": 1.0}
    assert metric_samples(_reference_view(joined), "accuracy")[1] == {"k0": 1.0, "k1": 1.0, "k2": 1.0}
    ci = cell_interval(cell_samples([joined], "accuracy_mc"), "accuracy_mc")
    assert ci.low < 2 / 3 < ci.high
