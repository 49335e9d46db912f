"""Spacing-aware selection: removed layers never closer than the gap, clear failures, the sparsity switch."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from topovlm.selection import SelectionConfig, SelectionError, num_to_remove, select_layers, select_spaced


def _gaps_ok(layers: list[int], gap: int) -> bool:
    return all(b - a >= gap for a, b in zip(layers, layers[1:]))


def _capacity(n: int, protected: set[int], gap: int) -> int:
    count, last = 0, None
    for i in range(n):
        if i not in protected and (last is None or i - last >= gap):
            count, last = count + 1, i
    return count


@pytest.mark.parametrize("even", [False, True])
def test_never_closer_than_the_gap_or_a_clear_error(even: bool) -> None:
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(4, 33))
        gap = int(rng.integers(1, 5))
        sparsity = float(rng.uniform(0.05, 0.7))
        protect = [0] if trial % 3 else [0, -1]
        redundancy = rng.normal(size=n)
        cfg = SelectionConfig(policy="spacing", min_gap=gap, even=even, protect=protect)
        k = num_to_remove(sparsity, n)
        protected = {p % n for p in protect}
        try:
            removed, policy = select_layers(redundancy, sparsity, cfg)
        except SelectionError as err:
            assert k > _capacity(n, protected, gap) or even, (n, gap, k)
            assert "apart" in str(err) and "min_gap" in str(err)
            continue
        assert policy == "spacing"
        assert len(removed) == k and removed == sorted(set(removed))
        assert _gaps_ok(removed, gap), (removed, gap)
        assert not protected & set(removed)


def test_feasible_budget_always_met_without_even() -> None:
    """Whenever k layers fit at the gap, the min-gap policy finds k (the greedy pass may not)."""
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(4, 25))
        gap = int(rng.integers(2, 4))
        cap = _capacity(n, {0}, gap)
        k = int(rng.integers(1, cap + 1))
        removed = select_spaced(rng.normal(size=n), k, {0}, gap, even=False)
        assert len(removed) == k and _gaps_ok(removed, gap) and 0 not in removed


def test_greedy_stuck_falls_back_to_the_best_feasible_set() -> None:
    # layers 1..5 unprotected, gap 2, k 3: only {1, 3, 5} fits; greedy would start at 2
    redundancy = np.array([0.0, 0.1, 0.9, 0.2, 0.8, 0.3])
    assert select_spaced(redundancy, 3, {0}, 2, even=False) == [1, 3, 5]
    # with room to spare it keeps the most redundant feasible set (exhaustive check)
    r = np.array([0.0, 0.5, 0.9, 0.6, 0.1, 0.95, 0.7, 0.2, 0.4])
    got = select_spaced(r, 3, {0}, 2, even=False)
    feasible = [c for c in itertools.combinations(range(1, 9), 3) if _gaps_ok(list(c), 2)]
    best = max(feasible, key=lambda c: r[list(c)].sum())
    assert _gaps_ok(got, 2) and r[got].sum() == pytest.approx(r[list(best)].sum())


def test_top_k_kept_when_it_already_respects_the_gap() -> None:
    redundancy = np.array([0.0, 0.1, 0.9, 0.2, 0.1, 0.8, 0.1, 0.7])
    assert select_spaced(redundancy, 3, {0}, 2, even=False) == [2, 5, 7]


def test_infeasible_budget_fails_clearly() -> None:
    cfg = SelectionConfig(policy="spacing", min_gap=2)
    with pytest.raises(SelectionError, match="at most 4 fit among 8 layers"):
        select_layers(np.arange(8.0), 5 / 8, cfg)  # 5 removals, only 1, 3, 5, 7 fit
    with pytest.raises(SelectionError, match="evenly spaced"):
        select_layers(np.arange(8.0), 5 / 8, SelectionConfig(policy="spacing", min_gap=2, even=True))


def test_even_spacing_is_even_and_respects_the_gap() -> None:
    removed, _ = select_layers(np.zeros(30), 0.1, SelectionConfig(policy="spacing", even=True))
    assert removed == [5, 15, 25]
    removed, _ = select_layers(np.zeros(30), 0.5, SelectionConfig(policy="spacing", even=True, min_gap=2))
    assert removed == list(range(1, 30, 2))  # 15 of 29 unprotected layers: every other one


def test_spacing_above_switches_only_past_the_threshold() -> None:
    # the most redundant layers are adjacent: top-k takes them, spacing may not
    redundancy = np.array([0.0, 0.1, 0.2, 0.9, 0.95, 0.92, 0.3, 0.1, 0.2, 0.1])
    cfg = SelectionConfig(policy="topk", spacing_above=0.25, min_gap=2)
    low, policy = select_layers(redundancy, 0.2, cfg)
    assert policy == "topk" and low == [4, 5]
    high, policy = select_layers(redundancy, 0.3, cfg)
    # greedy: the most redundant first (4), then the best that keep the gap (6, then 2 before 8 on a tie)
    assert policy == "spacing" and _gaps_ok(high, 2) and high == [2, 4, 6]


def test_infinite_redundancy_does_not_break_the_fallback() -> None:
    redundancy = np.array([0.0, 0.1, 0.9, 0.2, 0.8, -np.inf])  # e.g. the tail scorer's last layer
    assert select_spaced(redundancy, 3, {0}, 2, even=False) == [1, 3, 5]
