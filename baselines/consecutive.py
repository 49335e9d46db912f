"""Shared by the topo ablations ``knn_overlap`` and ``cka``: topo's point clouds, compared
between consecutive representations, without homology.

The clouds are topo's own (:func:`topovlm.topo.clouds.layer_clouds`, the same parameters
and defaults as ``scorer=topo``): representation ``l`` is what layer ``l``
produces (its post-attention norm output, or its output ``h_out[l]`` with
``activations=residual``). A layer's input is therefore representation ``l - 1``, and its
redundancy is the similarity of representations ``l - 1`` and ``l``; higher = more redundant.
Layer 0's input is not among topo's representations: it gets no score (NaN) and is removed
last (redundancy ``-inf``; the harness protects it by default anyway). The final norm's
representation belongs to no decoder layer and is not used.
"""
from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import numpy as np

from topovlm.api import CaptureSpec, LayerScorer, ScoreResult, ScoringContext
from topovlm.topo.clouds import ACTIVATIONS, NORMALISATIONS, TOPO_POOLINGS, layer_clouds

if TYPE_CHECKING:
    from topovlm.api import CaptureLike


def _choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


class ConsecutiveScorer(LayerScorer):
    """Per-layer similarity of a layer's input and output clouds (subclasses: :meth:`similarity`)."""

    # Every default: [project: same as topo, so the ablation isolates homology] (topo's own
    # reasons are beside TopoScorer.__init__). For cka, center changes nothing: CKA centres the
    # features itself [paper: Kornblith et al.]. num_points None: all calibration.n samples.
    def __init__(self, activations: str = "post_attention_norm", pooling: str = "last", center: bool = False,
                 normalize: str = "none", pca_dim: int | None = None, num_points: int | None = None) -> None:
        self.activations = _choice("activations", activations, ACTIVATIONS)
        self.pooling = _choice("pooling", pooling, TOPO_POOLINGS)
        self.center = bool(center)
        self.normalize = _choice("normalize", normalize, NORMALISATIONS)
        self.pca_dim = None if pca_dim in (None, 0) else int(pca_dim)
        self.num_points = None if num_points is None else int(num_points)
        if self.num_points is not None and self.num_points < 3:
            raise ValueError(f"num_points={self.num_points} must be >= 3 (or null: every calibration sample)")

    def capture_spec(self) -> CaptureSpec:
        return CaptureSpec(norms=self.activations == "post_attention_norm")

    @abc.abstractmethod
    def similarity(self, clouds: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """``(R, N, d)`` clouds -> ``(R - 1,)`` similarity of representations ``i`` and ``i + 1``,
        and JSON-serialisable details for results.json."""

    def score(self, capture: "CaptureLike", ctx: ScoringContext) -> ScoreResult:
        lc = layer_clouds(capture, self.pooling, center=self.center, normalize=self.normalize,
                          pca_dim=self.pca_dim, num_points=self.num_points, seed=ctx.seed,
                          activations=self.activations, include_final_norm=False)
        sim, details = self.similarity(lc.clouds)
        scores = np.concatenate([[np.nan], sim])[: capture.num_layers]  # layer l: representations l-1, l
        redundancy = np.where(np.isnan(scores), -np.inf, scores)  # layer 0 (no input cloud): removed last
        section = {"activations": self.activations, "pooling": self.pooling, "num_points": lc.num_points,
                   "dropped_samples": list(lc.dropped_ids),
                   "pairs": "layer l: representation l-1 (its input) vs l (its output); layer 0 unscored",
                   "similarity": [float(v) for v in sim], **details}
        return ScoreResult(scores=scores, redundancy=redundancy, extra={self.name: section})
