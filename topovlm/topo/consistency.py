"""Persistence similarity, Betti curves and inter-layer consistency from layer bars.

Bars are ``(n, 2)`` int arrays ``[B, D)`` over layers (alive on layers ``B..D-1``),
as returned by :func:`topovlm.topo.zigzag.snap_bars`.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

EMPTY_POLICIES = ("skip", "zero")


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


def consistency(bars: np.ndarray, num_layers: int, alpha: float = 1.0, empty: str = "skip") -> np.ndarray:
    """Inter-layer consistency ``S_p(l)`` in ``[0, 1]``.

    ``S_p(l) = sum_{l' != l} w(l,l') PS(l,l') / beta(l') / sum_{l'} w(l,l')`` with
    ``w(l, l') = |l - l'|^alpha``: the weighted fraction of every other layer's
    features that stay alive all the way to layer ``l``.

    A layer ``l'`` with ``beta(l') = 0`` has no features to carry (0/0). ``empty="skip"``
    (default) leaves such layers out of both sums; ``"zero"`` counts them as 0 in the
    numerator and keeps their weight in the denominator. A layer whose sums are empty
    (no other layer has features) gets 0.
    """
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"empty must be one of {EMPTY_POLICIES}, got {empty!r}")
    ps = persistence_similarity(bars, num_layers).astype(np.float64)
    beta = np.diag(ps).copy()
    idx = np.arange(num_layers)
    w = np.abs(idx[:, None] - idx[None, :]).astype(np.float64) ** float(alpha)
    np.fill_diagonal(w, 0.0)
    has = beta > 0
    ratio = np.divide(ps, beta[None, :], out=np.zeros_like(ps), where=has[None, :])
    den_w = w * has[None, :] if empty == "skip" else w
    num = (w * ratio).sum(axis=1)
    den = den_w.sum(axis=1)
    return np.divide(num, den, out=np.zeros(num_layers), where=den > 0)


def combine_dimensions(per_dim: Mapping[int, np.ndarray], weights: Mapping[int, float]) -> np.ndarray:
    """Weighted mean over homology dimensions: ``sum_p lambda_p S_p / sum_p lambda_p``."""
    dims = [p for p in per_dim if float(weights.get(p, 0.0)) != 0.0]
    if not dims:
        raise ValueError("all homology-dimension weights are zero")
    total = sum(float(weights[p]) for p in dims)
    return sum(float(weights[p]) * np.asarray(per_dim[p], dtype=np.float64) for p in dims) / total
