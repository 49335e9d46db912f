"""The validity section's rank correlation with the measured damage."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from topovlm.summary.validity import _correlations, _ranked


def test_protected_layers_rank_as_never_removed_and_enter_the_correlation():
    damage = np.array([0.9, 0.1, 0.0, 0.2, 0.5])
    # results.json writes a protected layer's -inf as null, read back as NaN
    red = np.array([np.nan, 3.0, 4.0, 2.0, np.nan])
    ranked = _ranked(red)
    assert list(ranked) == [1.0, 3.0, 4.0, 2.0, 1.0]
    rho, tau = _correlations(red, damage)
    assert math.isclose(rho, sps.spearmanr(ranked, -damage).statistic)
    assert math.isclose(tau, sps.kendalltau(ranked, -damage).statistic) and rho > 0.8
    assert _ranked(np.array([-np.inf, 1.0, 2.0]))[0] == 0.0


def test_a_ranking_of_one_value_has_no_correlation():
    assert all(math.isnan(v) for v in _correlations(np.array([1.0, 1.0, 1.0]), np.array([0.1, 0.2, 0.3])))
