"""``knn_overlap``: topo without homology. The Jaccard overlap of the k-NN edge sets of a
layer's input and output clouds (topo's clouds and topo's k-NN graphs: the same ``k``,
symmetrisation and metric), i.e. the 1-skeletons of topo's complexes compared directly.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from baselines.consecutive import ConsecutiveScorer, _choice
from topovlm.registry import register_scorer
from topovlm.topo.complexes import SYMMETRISATIONS, knn_edges


def jaccard(a: np.ndarray, b: np.ndarray, n: int) -> float:
    """|A ∩ B| / |A ∪ B| of two ``(E, 2)`` edge lists over ``n`` vertices (1 when both are empty)."""
    ka, kb = np.unique(a[:, 0] * n + a[:, 1]), np.unique(b[:, 0] * n + b[:, 1])
    union = np.union1d(ka, kb).size
    return float(np.intersect1d(ka, kb, assume_unique=True).size / union) if union else 1.0


@register_scorer("knn_overlap")
class KnnOverlapScorer(ConsecutiveScorer):
    """Jaccard overlap of consecutive representations' k-NN graphs; higher = more redundant."""

    # Every default: [project: same as topo, so the ablation isolates homology]. k < N - 1 is
    # checked before the capture (a complete graph overlaps 1 everywhere).
    def __init__(self, activations: str = "post_attention_norm", pooling: str = "last", center: bool = False,
                 normalize: str = "none", pca_dim: int | None = None, num_points: int | None = None,
                 k: int = 15, symmetrize: str = "union", metric: str = "euclidean") -> None:
        super().__init__(activations, pooling, center, normalize, pca_dim, num_points)
        self.k = int(k)
        if self.k < 1:
            raise ValueError("k must be >= 1")
        self.symmetrize = _choice("symmetrize", symmetrize, SYMMETRISATIONS)
        self.metric = str(metric)

    def check_config(self, cfg: Any) -> None:
        from omegaconf import OmegaConf

        n = int(OmegaConf.select(cfg, "calibration.n"))
        points = min(n, self.num_points) if self.num_points else n
        if self.k >= points - 1:
            raise ValueError(f"scorer.k={self.k} >= N - 1 = {points - 1} (calibration.n={n}): every k-NN graph "
                             "would be complete and every overlap 1; lower scorer.k or raise calibration.n")

    def similarity(self, clouds: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        from threadpoolctl import threadpool_limits

        n = clouds.shape[1]
        if self.k >= n - 1:
            raise ValueError(f"scorer.k={self.k} >= N - 1 = {n - 1} usable calibration samples: every k-NN graph "
                             "would be complete; lower scorer.k or raise calibration.n")
        with threadpool_limits(limits=1):  # as topo's complexes: small matrices, a busy 2-core machine
            edges = [knn_edges(layer, self.k, self.symmetrize, self.metric) for layer in clouds]
        overlap = np.array([jaccard(a, b, n) for a, b in zip(edges[:-1], edges[1:])])
        return overlap, {"edges_per_representation": [len(e) for e in edges]}
