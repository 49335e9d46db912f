"""Persistence similarity, Betti curves and inter-layer consistency from layer bars.

Bars are ``(n, 2)`` int arrays ``[B, D)`` over layers (alive on layers ``B..D-1``),
as returned by :func:`topovlm.topo.zigzag.snap_bars`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

EMPTY_POLICIES = ("skip", "zero", "nan")
#: how persistence similarity becomes one score per representation (see :func:`consistency_from_ps`)
FORMULAS = ("gardinazzi", "ilp", "topovlm_reconstruction")


def persistence_similarity(bars: np.ndarray, num_layers: int) -> np.ndarray:
    """``PS[i, j]`` = number of bars alive on every layer of ``[min(i,j), max(i,j)]``.

    The diagonal is the Betti curve. Computed as a sum of square indicator blocks
    ``[B, D) x [B, D)`` with a 2-D difference array (O(n + L^2)).
    """
    diff = np.zeros((num_layers + 1, num_layers + 1), dtype=np.int64)
    bars = np.asarray(bars, dtype=np.int64).reshape(-1, 2)
    if len(bars):
        b, d = np.clip(bars[:, 0], 0, num_layers), np.clip(bars[:, 1], 0, num_layers)
        np.add.at(diff, (b, b), 1)
        np.add.at(diff, (b, d), -1)
        np.add.at(diff, (d, b), -1)
        np.add.at(diff, (d, d), 1)
    return diff.cumsum(axis=0).cumsum(axis=1)[:num_layers, :num_layers]


def betti_curve(bars: np.ndarray, num_layers: int) -> np.ndarray:
    """``beta[l]`` = number of bars alive on layer ``l`` (= ``PS[l, l]``)."""
    layers = np.arange(num_layers)
    bars = np.asarray(bars, dtype=np.int64).reshape(-1, 2)
    return ((bars[:, :1] <= layers) & (layers < bars[:, 1:])).sum(axis=0).astype(np.int64)


def consistency_from_ps(ps: np.ndarray, formula: str = "topovlm_reconstruction", alpha: float = 1.0,
                        empty: str = "skip") -> np.ndarray:
    """Per-representation consistency from a persistence-similarity matrix, in ``[0, 1]``.

    With ``beta = diag(PS)`` and ``w(i, j) = |i - j|^alpha``:

    * ``gardinazzi`` (the ancestor's pruning code): ``r(i) = mean_j PS(i,j) / beta(j)``
      over every j, j = i included, no distance weight (``alpha`` unused);
    * ``ilp`` (the ancestor's figures): ``sum_j w PS(i,j) / beta(i) / sum_j w``;
    * ``topovlm_reconstruction`` (this project's reading of TopoVLM):
      ``sum_{j != i} w PS(i,j) / beta(j) / sum_{j != i} w``.

    A representation j with ``beta(j) = 0`` has no features (its terms are 0/0, and
    then ``PS(i, j) = 0`` for every i). ``empty="skip"`` leaves such j out of both sums;
    ``"zero"`` counts their terms as 0 and keeps their weight; ``"nan"`` is the
    ancestor's code, which has no guard: a 0/0 term makes the score NaN. Under
    ``skip`` and ``zero`` an empty representation's own score is 0, as is one whose
    sums are empty.
    """
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
    ps = np.asarray(ps, dtype=np.float64)
    n = ps.shape[0]
    beta = np.diag(ps).copy()
    has = beta > 0
    idx = np.arange(n)
    if formula == "gardinazzi":
        w = np.ones((n, n))
    else:
        # numpy gives 0 ** 0 = 1: with alpha = 0 the ilp sum keeps its j = i term, as written
        w = np.abs(idx[:, None] - idx[None, :]).astype(np.float64) ** float(alpha)
        if formula == "topovlm_reconstruction":
            np.fill_diagonal(w, 0.0)
    norm = beta[:, None] if formula == "ilp" else beta[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = ps / np.broadcast_to(norm, ps.shape)
    defined = np.isfinite(ratio)
    if empty == "nan":
        num = (w * ratio).sum(axis=1)  # NaN wherever a 0/0 term has weight
        den = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return num / den
    ratio = np.where(defined, ratio, 0.0)
    keep = np.broadcast_to(has[None, :], ps.shape) if empty == "skip" else np.ones_like(ps, dtype=bool)
    num = (w * ratio).sum(axis=1)
    den = (w * keep).sum(axis=1)
    out = np.divide(num, den, out=np.zeros(n), where=den > 0)
    return np.where(has, out, 0.0)


def consistency(bars: np.ndarray, num_layers: int, alpha: float = 1.0, empty: str = "skip",
                formula: str = "topovlm_reconstruction") -> np.ndarray:
    """:func:`consistency_from_ps` of the persistence similarity of ``bars``."""
    return consistency_from_ps(persistence_similarity(bars, num_layers), formula, alpha, empty)


def combine_dimensions(per_dim: Mapping[int, np.ndarray], weights: Mapping[int, float]) -> np.ndarray:
    """Weighted mean over homology dimensions: ``sum_p lambda_p S_p / sum_p lambda_p``."""
    dims = [p for p in per_dim if float(weights.get(p, 0.0)) != 0.0]
    if not dims:
        raise ValueError("all homology-dimension weights are zero")
    total = sum(float(weights[p]) for p in dims)
    return sum(float(weights[p]) * np.asarray(per_dim[p], dtype=np.float64) for p in dims) / total
