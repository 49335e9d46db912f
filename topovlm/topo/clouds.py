"""Per-layer point clouds from pooled calibration states.

``X_l`` holds one point per calibration sample, read from what layer ``l`` produces, so
the cloud of layer ``l`` scores layer ``l``. ``activations`` picks what that is:

* ``post_attention_norm`` (the ancestor's): the output of layer ``l``'s post-attention
  norm (``Capture.norm_out``), a normalised mid-block state;
* ``residual``: the layer's output ``h_out[l]`` (``Capture.h_out``), whose scale grows
  with depth.

``include_final_norm`` appends the final norm's output as representation ``L`` (the
ancestor's L+1 representations): it is scored, and no policy can remove it. Samples are put in
a canonical order (sorted by sample id) before anything else, which makes every later
step, ties in nearest-neighbour search included, independent of the order in which the
capture lists its samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from topovlm.api import POOLINGS

if TYPE_CHECKING:
    from topovlm.api import CaptureLike

#: ``modality`` concatenates the text-mean and vision-mean vectors of each sample,
#: each block scaled to unit mean norm per layer (see :func:`modality_clouds`).
TOPO_POOLINGS = POOLINGS + ("modality",)
NORMALISATIONS = ("none", "l2", "standardize")
ACTIVATIONS = ("post_attention_norm", "residual")


@dataclass
class LayerClouds:
    """``clouds``: ``(L, N, d)`` float32; ``sample_ids``: the N samples, in cloud order."""

    clouds: np.ndarray
    sample_ids: list[str]
    dropped_ids: list[str]

    @property
    def num_layers(self) -> int:
        return int(self.clouds.shape[0])

    @property
    def num_points(self) -> int:
        return int(self.clouds.shape[1])


def canonical_order(sample_ids: list[str]) -> np.ndarray:
    """Indices that sort samples by id (stable for duplicate ids)."""
    return np.array(sorted(range(len(sample_ids)), key=lambda i: (str(sample_ids[i]), i)), dtype=np.int64)


def modality_clouds(text: np.ndarray, vision: np.ndarray) -> np.ndarray:
    """Concatenate ``(L, N, d)`` text and vision clouds into ``(L, N, 2d)``.

    Each block is divided by its mean row norm per layer so that neither modality
    dominates the distances (vision-token means and text-token means live at
    different scales in the residual stream).
    """
    def unit(x: np.ndarray) -> np.ndarray:
        scale = np.linalg.norm(x, axis=2, keepdims=True).mean(axis=1, keepdims=True)
        return x / np.where(scale > 0, scale, 1.0)

    return np.concatenate([unit(text), unit(vision)], axis=2)


def preprocess(clouds: np.ndarray, center: bool = False, normalize: str = "none",
               pca_dim: int | None = None, seed: int = 0) -> np.ndarray:
    """Optional per-layer centring, normalisation and PCA (in that order).

    ``normalize``: ``"l2"`` scales every point to unit norm (cosine geometry);
    ``"standardize"`` scales every feature to unit variance within the layer (after
    centring). ``pca_dim``: project each layer on its top principal components
    (scikit-learn, full SVD).
    """
    if normalize not in NORMALISATIONS:
        raise ValueError(f"normalize must be one of {NORMALISATIONS}, got {normalize!r}")
    x = np.asarray(clouds, dtype=np.float64)
    if center or normalize == "standardize":
        x = x - x.mean(axis=1, keepdims=True)
    if normalize == "l2":
        norm = np.linalg.norm(x, axis=2, keepdims=True)
        x = x / np.where(norm > 0, norm, 1.0)
    elif normalize == "standardize":
        std = x.std(axis=1, keepdims=True)
        x = x / np.where(std > 0, std, 1.0)
    if pca_dim:
        from sklearn.decomposition import PCA

        n_comp = int(min(pca_dim, x.shape[1], x.shape[2]))
        x = np.stack([
            PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit_transform(layer)
            for layer in x
        ])
    return x.astype(np.float32)


def representations(capture: "CaptureLike", pooling: str, activations: str = "residual",
                    include_final_norm: bool = False) -> np.ndarray:
    """``(R, N, d)`` pooled states, ``R = L`` (+ 1 with the final norm), in capture order."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")

    def stack(p: str) -> np.ndarray:
        body = capture.h_out(p) if activations == "residual" else capture.norm_out(p)[:-1]
        if include_final_norm:
            body = np.concatenate([body, capture.norm_out(p)[-1:]], axis=0)
        return np.asarray(body)

    if pooling == "modality":
        return modality_clouds(stack("text_mean"), stack("vision_mean"))
    return stack(pooling)


def layer_clouds(capture: "CaptureLike", pooling: str = "last", center: bool = False, normalize: str = "none",
                 pca_dim: int | None = None, num_points: int | None = None, seed: int = 0,
                 activations: str = "residual", include_final_norm: bool = False) -> LayerClouds:
    """Point clouds of every representation, samples in canonical (sorted-id) order.

    Samples whose pooled vector is not finite in some layer (``vision_mean`` of a
    sample without image tokens) are dropped from every layer, so all layers share
    one vertex set. ``num_points``: keep a seeded random subset of that many samples
    (drawn from the canonical order, so the subset does not depend on sample order).
    """
    if pooling not in TOPO_POOLINGS:
        raise ValueError(f"pooling must be one of {TOPO_POOLINGS}, got {pooling!r}")
    raw = representations(capture, pooling, activations, include_final_norm)
    order = canonical_order(list(capture.sample_ids))
    raw = np.asarray(raw)[:, order]
    ids = [str(capture.sample_ids[i]) for i in order]
    finite = np.isfinite(raw).all(axis=(0, 2))
    dropped = [i for i, ok in zip(ids, finite) if not ok]
    raw = raw[:, finite]
    ids = [i for i, ok in zip(ids, finite) if ok]
    if num_points is not None and num_points < len(ids):
        keep = np.sort(np.random.default_rng(seed).permutation(len(ids))[:num_points])
        raw = raw[:, keep]
        ids = [ids[i] for i in keep]
    if len(ids) < 3:
        raise ValueError(
            f"pooling {pooling!r} leaves {len(ids)} usable samples (need >= 3)"
            + (" -- do the calibration samples have images?" if pooling in ("vision_mean", "modality") else "")
        )
    clouds = preprocess(raw, center=center, normalize=normalize, pca_dim=pca_dim, seed=seed)
    return LayerClouds(clouds=clouds, sample_ids=ids, dropped_ids=dropped)
