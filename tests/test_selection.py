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
    assert select_layers(R, 0.0, SelectionConfig())[0] == []


def test_block_without_block_cost_maximises_summed_redundancy():
    removed, _ = select_layers(R, 0.375, SelectionConfig(policy="block"))
    assert removed == [2, 3, 4]


def test_threshold_is_adaptive():
    removed, policy = select_layers(R, 0.0, SelectionConfig(policy="threshold", eps=0.8, protect=[]))
    assert policy == "threshold" and removed == [0, 3, 6]  # >= 0.8 * 0.95


def test_threshold_on_flat_scores_removes_nothing():
    for flat in (np.zeros(6), np.full(6, 0.4)):
        assert select_layers(flat, 0.0, SelectionConfig(policy="threshold", protect=[]))[0] == []


def test_nan_scores_are_removed_last():
    r = np.array([0.1, np.nan, 0.5, 0.4])
    assert select_layers(r, 0.5, SelectionConfig(protect=[]))[0] == [2, 3]


def test_unknown_policy_and_impossible_budget():
    with pytest.raises(SelectionError, match="allowed"):
        select_layers(R, 0.25, SelectionConfig(policy="best"))
    with pytest.raises(SelectionError, match="protected"):
        select_layers(R, 0.9, SelectionConfig(protect=[0, 1, 2]))
