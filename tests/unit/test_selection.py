"""Selection policies, usable with any scorer."""
from __future__ import annotations

import numpy as np
import pytest

from topovlm.selection import SelectionConfig, SelectionError, num_to_remove, select_layers

R = np.array([0.9, 0.1, 0.5, 0.8, 0.7, 0.2, 0.95, 0.3])


def test_topk_protects_the_first_layer_by_default():
    removed, policy = select_layers(R, 0.25, SelectionConfig())
    assert policy == "topk" and removed == [3, 6]  # layer 0 (0.9) is protected
    removed, _ = select_layers(R, 0.25, SelectionConfig(protect=[]))
    assert removed == [0, 6]
    removed, _ = select_layers(R, 0.25, SelectionConfig(protect=[0, -2]))
    assert removed == [3, 4]


def test_k_is_rounded_fraction_of_layers():
    assert num_to_remove(0.1, 30) == 3 and num_to_remove(0.3, 30) == 9 and num_to_remove(0.0, 30) == 0
    # floor(s * L + 0.5): halves round up, never to even (round() gave 4 and 8 here)
    assert num_to_remove(0.15, 30) == 5 and num_to_remove(0.25, 30) == 8 and num_to_remove(0.05, 30) == 2
    assert num_to_remove(0.25, 10) == 3 and num_to_remove(0.35, 10) == 4
    assert select_layers(R, 0.0, SelectionConfig())[0] == []


def test_block_without_block_cost_maximises_summed_redundancy():
    removed, _ = select_layers(R, 0.375, SelectionConfig(policy="block"))
    assert removed == [2, 3, 4]


def test_threshold_is_adaptive():
    removed, policy = select_layers(R, 0.0, SelectionConfig(policy="threshold", eps=0.8, protect=[]))
    assert policy == "threshold" and removed == [0, 3, 6]  # >= 0.1 + 0.8 * (0.95 - 0.1) = 0.78


def test_threshold_means_the_same_whatever_the_sign_or_offset():
    rng = np.random.default_rng(0)
    for _ in range(50):
        r = rng.normal(size=12)
        for eps in (0.3, 0.6, 0.9):
            cfg = SelectionConfig(policy="threshold", eps=eps)
            base = select_layers(r, 0.0, cfg)[0]
            for a, b in ((1.0, -5.0), (3.0, 100.0), (0.01, 0.0), (1.0, -r.max() - 1)):  # all negative too
                assert select_layers(a * r + b, 0.0, cfg)[0] == base
    # a shortgpt-like profile (redundancy = -BI, every value negative): eps keeps its meaning,
    # the top of the range of the unprotected layers; layer 0's outlier (protected) does not stretch it
    bi = np.array([5.0, 0.30, 0.10, 0.02, 0.03, 0.01, 0.20, 0.40])
    removed = select_layers(-bi, 0.0, SelectionConfig(policy="threshold", eps=0.9))[0]
    assert removed == [3, 4, 5]  # -BI >= -0.4 + 0.9 * 0.39 = -0.049
    assert select_layers(-bi, 0.0, SelectionConfig(policy="threshold", eps=1.0))[0] == [5]


def test_threshold_on_flat_scores_removes_nothing():
    for flat in (np.zeros(6), np.full(6, 0.4)):
        assert select_layers(flat, 0.0, SelectionConfig(policy="threshold", protect=[]))[0] == []


@pytest.mark.parametrize("policy", ["topk", "block", "threshold", "spacing"])
def test_non_finite_redundancy_raises_naming_scorer_and_layers(policy):
    r = np.array([0.1, np.nan, 0.5, np.inf, 0.3, -np.inf])
    with pytest.raises(SelectionError, match=r"scorer shortgpt gave non-finite redundancy for layers \[1, 3\] of 6"):
        select_layers(r, 0.3, SelectionConfig(policy=policy), scorer="shortgpt")
    with pytest.raises(SelectionError, match=r"layers \[0, 1, 2, 3, 4, 5\]"):
        select_layers(np.full(6, np.nan), 0.3, SelectionConfig(policy=policy), scorer="shortgpt")
    # -inf is a scorer's explicit "remove last" (the tail baseline's final layer)
    removed, _ = select_layers(np.array([0.0, 1.0, 2.0, 3.0, -np.inf]), 0.4, SelectionConfig(policy=policy))
    assert 4 not in removed


def test_unknown_policy_and_impossible_budget():
    with pytest.raises(SelectionError, match="allowed"):
        select_layers(R, 0.25, SelectionConfig(policy="best"))
    with pytest.raises(SelectionError, match="protected"):
        select_layers(R, 0.9, SelectionConfig(protect=[0, 1, 2]))


def test_budget_check_needs_only_the_config():
    from topovlm.selection import check_budget

    check_budget(0.3, 30, SelectionConfig())
    with pytest.raises(SelectionError, match="at least one must stay"):
        check_budget(0.99, 30, SelectionConfig(protect=[]))
    with pytest.raises(SelectionError, match="protects all 4 layers"):
        check_budget(0.25, 4, SelectionConfig(protect=[0, 1, 2, 3]))
    with pytest.raises(SelectionError, match="at most"):
        check_budget(0.6, 10, SelectionConfig(policy="spacing", min_gap=3))


# ---------------------------------------------------------------- ties: said, with the rule that broke them

def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "topovlm.selection" and r.levelname == "WARNING"]


@pytest.mark.parametrize("policy", ["topk", "block", "spacing", "threshold"])
def test_constant_scores_warn_naming_the_tie_break(policy, caplog):
    notes: list[str] = []
    removed, _ = select_layers(np.full(12, 0.4), 0.25, SelectionConfig(policy=policy, min_gap=2), scorer="flat",
                               notes=notes)
    warned = _warnings(caplog)
    assert len(warned) == 1 and notes == warned
    assert "flat" in warned[0] and "same redundancy (0.4)" in warned[0]
    if policy == "threshold":
        assert removed == [] and "removes nothing" in warned[0]
    else:  # which layers went is the index rule's choice, and the warning says which rule
        assert removed and f"tie-break rule of selection.policy={policy}" in warned[0]
        assert "lower layer index removed first" in warned[0] or "first (lowest-index) block" in warned[0]


def test_a_tie_across_the_cut_warns_and_names_the_tied_layers(caplog):
    r = np.array([0.0, 0.9, 0.5, 0.5, 0.5, 0.1, 0.2, 0.3])
    notes: list[str] = []
    removed, _ = select_layers(r, 0.25, SelectionConfig(policy="topk"), scorer="plug", notes=notes)
    assert removed == [1, 2]  # 0.9, then the lowest index of the three 0.5s
    assert len(notes) == 1 and "layers [2, 3, 4] have equal redundancy (0.5)" in notes[0]
    assert "removed ([2])" in notes[0] and "lower layer index removed first" in notes[0]
    assert _warnings(caplog) == notes


def test_ties_that_do_not_decide_anything_stay_quiet(caplog):
    # equal scores on the same side of the cut, or only among protected layers, or nothing removed
    r = np.array([0.7, 0.9, 0.8, 0.5, 0.5, 0.1, 0.2, 0.3])
    notes: list[str] = []
    assert select_layers(r, 0.25, SelectionConfig(policy="topk"), notes=notes)[0] == [1, 2]
    assert select_layers(np.array([0.5, 0.5, 0.9, 0.1]), 0.25, SelectionConfig(protect=[0, 1]), notes=notes)[0] == [2]
    assert select_layers(np.full(8, 1.0), 0.0, SelectionConfig(), notes=notes)[0] == []
    assert select_layers(np.full(8, 1.0), 0.25, SelectionConfig(policy="spacing", even=True), notes=notes)[0]
    assert notes == [] and _warnings(caplog) == []


def test_equal_blocks_warn(caplog):
    r = np.array([0.0, 0.6, 0.6, 0.1, 0.6, 0.6, 0.1, 0.2])
    removed, _ = select_layers(r, 0.25, SelectionConfig(policy="block"), scorer="plug")
    assert removed == [1, 2]
    assert len(_warnings(caplog)) == 1 and "starting at [1, 4]" in _warnings(caplog)[0]


def test_the_budget_check_on_placeholder_scores_does_not_warn(caplog):
    from topovlm.selection import check_budget

    check_budget(0.25, 12, SelectionConfig())
    assert _warnings(caplog) == []
