"""Effective persistence image (EPI) and per-layer topological activity.

The EPI of a set of layer bars ``[B, D)`` is an image over (birth layer, persistence
``D - B``): each bar adds a Gaussian of standard deviation ``sigma`` (in layers)
centred on its (B, D - B) cell, weighted by ``(persistence / L) ** power`` so that long
bars count more (``power = 1`` is the linear ramp of Adams et al.'s persistence
images; ``power = 0`` weighs all bars equally). Summing the image along persistence
gives each layer's topological activity: a smoothed, persistence-weighted count of
the features born at that layer.
"""
from __future__ import annotations

import numpy as np


def bar_weights(bars: np.ndarray, num_layers: int, power: float = 1.0) -> np.ndarray:
    bars = np.asarray(bars, dtype=np.float64).reshape(-1, 2)
    return ((bars[:, 1] - bars[:, 0]) / float(num_layers)) ** float(power)


def _kernel(centres: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """(n, G) Gaussian weights of each centre on an integer grid (sigma = 0: one-hot)."""
    if sigma <= 0:
        return (np.rint(centres)[:, None] == grid[None, :]).astype(np.float64)
    z = (grid[None, :] - centres[:, None]) / sigma
    return np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * sigma)


def effective_persistence_image(bars: np.ndarray, num_layers: int, sigma: float = 1.0,
                                power: float = 1.0) -> np.ndarray:
    """``(L, L)`` image, axis 0 = birth layer ``0..L-1``, axis 1 = persistence ``1..L``."""
    bars = np.asarray(bars, dtype=np.float64).reshape(-1, 2)
    grid_b = np.arange(num_layers, dtype=np.float64)
    grid_p = np.arange(1, num_layers + 1, dtype=np.float64)
    if len(bars) == 0:
        return np.zeros((num_layers, num_layers))
    w = bar_weights(bars, num_layers, power)
    kb = _kernel(bars[:, 0], grid_b, sigma)  # (n, L)
    kp = _kernel(bars[:, 1] - bars[:, 0], grid_p, sigma)  # (n, L)
    return (kb * w[:, None]).T @ kp


def topological_activity(image: np.ndarray) -> np.ndarray:
    """Per-layer activity: the EPI summed along the persistence axis."""
    return np.asarray(image).sum(axis=1)
