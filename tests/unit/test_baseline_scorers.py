"""Baseline scorers: formulas checked against direct computations, on real captures."""
from __future__ import annotations

import numpy as np
import pytest

from baselines.angular import AngularScorer, block_distances
from baselines.cosine import CosineScorer
from baselines.random_scorer import RandomScorer
from baselines.shortgpt import ShortGPTScorer
from baselines.tail import TailScorer
from topovlm.capture import Capture
from topovlm.api import ScoringContext
from topovlm.selection import SelectionConfig, select_layers


def _synthetic_capture(states: np.ndarray) -> Capture:
    n = states.shape[1]
    pooled = {p: states for p in ("last", "text_mean", "vision_mean")}
    return Capture(states.shape[0] - 1, [f"s{i}" for i in range(n)], ["d"] * n, pooled)


def test_shortgpt_block_influence(tiny_capture):
    result = ShortGPTScorer().score(tiny_capture, ScoringContext())
    cos = tiny_capture.stat("token_cos(tokens=all)")
    np.testing.assert_allclose(result.scores, 1 - cos.mean(axis=1))
    np.testing.assert_allclose(result.redundancy, -result.scores)  # lowest BI removed first


def test_cosine_last_token(tiny_capture):
    result = CosineScorer(pooling="last").score(tiny_capture, ScoringContext())
    a, b = tiny_capture.h_in("last"), tiny_capture.h_out("last")
    expected = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    np.testing.assert_allclose(result.scores, expected.mean(axis=1), rtol=1e-5)
    tokens = CosineScorer(pooling="vision_tokens").score(tiny_capture, ScoringContext())
    np.testing.assert_allclose(tokens.scores, tiny_capture.stat("token_cos(tokens=vision)").mean(axis=1))


def test_scorer_rejects_unknown_pooling():
    with pytest.raises(ValueError, match="allowed"):
        CosineScorer(pooling="first")


def test_angular_finds_the_identity_block():
    rng = np.random.default_rng(0)
    L, N, d = 10, 16, 8
    states = np.empty((L + 1, N, d))
    states[0] = rng.normal(size=(N, d))
    for l in range(L):  # layers 4..6 barely change the stream; the others rotate it
        states[l + 1] = states[l] + (0.01 if 4 <= l <= 6 else 2.0) * rng.normal(size=(N, d))
    cap = _synthetic_capture(states)
    result = AngularScorer().score(cap, ScoringContext())
    cost = block_distances(states)
    assert np.isnan(cost[3, L - 2 + 1:]).all() and not np.isnan(cost[3, : L - 3 + 1]).any()
    removed, policy = select_layers(result.redundancy, 0.3, SelectionConfig(), "block", result.block_cost)
    assert policy == "block" and removed == [4, 5, 6]
    # d(l, n) by hand for one block
    cos = (states[2] * states[5]).sum(-1) / (np.linalg.norm(states[2], axis=-1) * np.linalg.norm(states[5], axis=-1))
    assert cost[3, 2] == pytest.approx(np.mean(np.arccos(np.clip(cos, -1, 1)) / np.pi))


def test_random_is_seeded(tiny_capture):
    a = RandomScorer().score(tiny_capture, ScoringContext(seed=1)).redundancy
    b = RandomScorer().score(tiny_capture, ScoringContext(seed=1)).redundancy
    c = RandomScorer().score(tiny_capture, ScoringContext(seed=2)).redundancy
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_tail_removes_the_last_layers_before_the_final_one(tiny_capture):
    r = TailScorer().score(tiny_capture, ScoringContext()).redundancy
    removed, _ = select_layers(r, 0.25, SelectionConfig(), "topk")
    assert removed == [5, 6]  # 8 layers, k = 2, the final layer 7 is kept
