"""``cka``: linear CKA (Kornblith et al., ICML 2019, arXiv 1905.00414) between a layer's
input and output clouds, on topo's point clouds; higher = more redundant.

CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear kernels K = X X^T,
L = Y Y^T and HSIC(K, L) = tr(K H L H) / (n - 1)^2, H the centring matrix (the paper's
eq. 3; the 1/(n-1)^2 cancels). Invariant to orthogonal transforms and isotropic scaling of
either cloud, not to arbitrary invertible linear maps.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from baselines.consecutive import ConsecutiveScorer
from topovlm.registry import register_scorer


def centred_gram(x: np.ndarray) -> np.ndarray:
    """H X X^T H for an ``(n, d)`` cloud: the Gram matrix of the column-centred points."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    return x @ x.T


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two clouds over the same ``n`` points; 0 when either has no variance."""
    k, l = centred_gram(x), centred_gram(y)
    hsic_kl, norm = float(np.sum(k * l)), float(np.sqrt(np.sum(k * k) * np.sum(l * l)))  # tr(KHLH) = <HKH, HLH>
    return hsic_kl / norm if norm > 0 else 0.0


@register_scorer("cka")
class CKAScorer(ConsecutiveScorer):
    """Linear CKA of consecutive representations; higher = more redundant."""

    def similarity(self, clouds: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return np.array([linear_cka(a, b) for a, b in zip(clouds[:-1], clouds[1:])]), {}
