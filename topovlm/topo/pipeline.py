"""The topology pipeline end to end: clouds -> complexes -> zigzag -> scores.

:func:`compute_topology` works on a plain ``(L, N, d)`` array so that it can be used
without a model or a capture (tests, benchmarks, re-analysis of ``clouds.npz``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from topovlm.topo.complexes import complex_size, flag_complex, knn_edges
from topovlm.topo.consistency import FORMULAS, combine_dimensions
from topovlm.topo.epi import effective_persistence_image, topological_activity
from topovlm.topo.ranking import score_bars
from topovlm.topo.zigzag import build_zigzag, snap_bars, zigzag_bars


log = logging.getLogger(__name__)

#: above this zigzag size a run logs a warning with its expected time (the reduction's cost grows
#: faster than its size: 394k simplices, 33 x 512 independent clouds at k=15, took 105 s on 2 cores)
WARN_ZIGZAG_SIMPLICES = 250_000
#: the default cap, "auto": AUTO_CAP_FACTOR x the size independent clouds of this L, N and k give
#: (auto_zigzag_cap); peak memory stays near 600 bytes per simplex (measured: 540-620), so the
#: cap of a 33 x 512, k=15 capture (1.5 M simplices) bounds the reduction's memory at ~0.9 GB
MAX_ZIGZAG_SIMPLICES = "auto"
AUTO_CAP_FACTOR = 2.0


def expected_zigzag_size(num_layers: int, n: int, k: int, max_dim: int = 1) -> int:
    """The zigzag size of independent clouds (no shared structure between layers, the largest
    complexes in practice): per layer and point one vertex, about k edges and k^2/8 triangles
    (measured: 23-28 simplices per point and layer at k=15, 12 x 256 and 33 x 512 points)."""
    per_point = 1 + k + (k * k / 8 if max_dim >= 1 else 0) + (k ** 3 / 48 if max_dim >= 2 else 0)
    return int(num_layers * n * per_point)


def auto_zigzag_cap(num_layers: int, n: int, k: int, max_dim: int = 1) -> int:
    """The ``auto`` cap: twice the independent-cloud size, never below the warning size."""
    return max(WARN_ZIGZAG_SIMPLICES, int(AUTO_CAP_FACTOR * expected_zigzag_size(num_layers, n, k, max_dim)))


@dataclass
class TopologyConfig:
    k: int = 15
    symmetrize: str = "union"
    metric: str = "euclidean"
    max_dim: int = 1
    variant: str = "intersection"
    alpha: float = 1.0
    formula: str = "topovlm_reconstruction"
    # H1 only, the ancestor's score; H0 and H2 are computed and reported
    dim_weights: dict[int, float] = field(default_factory=lambda: {0: 0.0, 1: 1.0, 2: 0.0})
    empty: str = "skip"
    epi_sigma: float = 1.0
    epi_power: float = 1.0
    flag_backend: str = "numpy"
    zigzag_method: str = "fast"
    max_zigzag_simplices: int | str | None = MAX_ZIGZAG_SIMPLICES  # an int, "auto" (from L, N, k) or None

    def __post_init__(self) -> None:
        if self.max_dim not in (0, 1, 2):
            raise ValueError("max_dim must be 0, 1 or 2")
        if self.k < 1:
            raise ValueError("k must be >= 1")
        if isinstance(self.max_zigzag_simplices, str) and self.max_zigzag_simplices != "auto":
            raise ValueError(f"max_zigzag_simplices={self.max_zigzag_simplices!r}: an integer, auto or null")
        if self.formula not in FORMULAS:
            raise ValueError(f"formula must be one of {FORMULAS}, got {self.formula!r}")


@dataclass
class TopologyResult:
    num_layers: int
    num_points: int
    raw_bars: dict[int, np.ndarray]  # zigzag-position bars [b, d)
    bars: dict[int, np.ndarray]  # layer bars [B, D), single-layer ones dropped
    betti: dict[int, np.ndarray]
    consistency: dict[int, np.ndarray]
    combined: np.ndarray
    epi: dict[int, np.ndarray]
    activity: dict[int, np.ndarray]
    activity_combined: np.ndarray
    timings: dict[str, float]
    sizes: dict[str, Any]


def build_complexes(clouds: np.ndarray, cfg: TopologyConfig) -> tuple[list[list[np.ndarray]], list[int]]:
    """Flag complexes (simplices up to dimension ``max_dim + 1``) of every layer."""
    from threadpoolctl import threadpool_limits

    complexes, edge_counts = [], []
    n = clouds.shape[1]
    # one BLAS/OpenMP thread: the per-layer distance matrices are small, and thread
    # start-up and oversubscription made k-NN search 15x slower on a busy 2-core machine
    with threadpool_limits(limits=1):
        for layer in clouds:
            edges = knn_edges(layer, cfg.k, cfg.symmetrize, cfg.metric)
            edge_counts.append(len(edges))
            complexes.append(flag_complex(n, edges, cfg.max_dim + 1, backend=cfg.flag_backend))
    return complexes, edge_counts


def compute_topology(clouds: np.ndarray, cfg: TopologyConfig | None = None) -> TopologyResult:
    cfg = cfg or TopologyConfig()
    clouds = np.asarray(clouds)
    if clouds.ndim != 3:
        raise ValueError(f"clouds must be (L, N, d), got shape {clouds.shape}")
    num_layers, n = clouds.shape[:2]
    dims = list(range(cfg.max_dim + 1))

    t0 = time.perf_counter()
    complexes, edge_counts = build_complexes(clouds, cfg)
    zz = build_zigzag(complexes, n, cfg.variant)
    t1 = time.perf_counter()
    cap = cfg.max_zigzag_simplices
    if cap == "auto":
        cap = auto_zigzag_cap(num_layers, n, cfg.k, cfg.max_dim)
    if cap is not None and zz.size > int(cap):
        raise RuntimeError(
            f"zigzag has {zz.size} simplices (> max_zigzag_simplices={cap}"
            f"{' derived from L, N, k' if cfg.max_zigzag_simplices == 'auto' else ''}); "
            "lower k, use symmetrize=mutual, fewer points or max_dim=0, or raise the cap"
        )
    if zz.size > WARN_ZIGZAG_SIMPLICES:
        log.warning("topo: the zigzag has %d simplices (%d layers x %d points, k=%d): expect minutes "
                    "(394k took 105 s on 2 cores); lower k or the points to go faster", zz.size, num_layers, n, cfg.k)
    raw = zigzag_bars(zz, cfg.max_dim, method=cfg.zigzag_method)
    t2 = time.perf_counter()

    bars = {p: snap_bars(raw[p]) for p in dims}
    weights = {p: float(cfg.dim_weights.get(p, 0.0)) for p in dims}
    scored = score_bars(bars, num_layers, cfg.formula, cfg.alpha, weights, cfg.empty)
    betti, cons, combined = scored.betti, scored.consistency, scored.combined
    epi = {p: effective_persistence_image(bars[p], num_layers, cfg.epi_sigma, cfg.epi_power) for p in dims}
    activity = {p: topological_activity(epi[p]) for p in dims}
    activity_combined = combine_dimensions(activity, weights)
    t3 = time.perf_counter()

    sizes = {
        "edges_per_layer": edge_counts,
        "simplices_per_layer": [complex_size(c) for c in complexes],
        "top_simplices_per_layer": [len(c[-1]) for c in complexes],
        "zigzag_simplices": zz.size,
        "zigzag_events": zz.num_events,
    }
    timings = {"complexes": t1 - t0, "zigzag": t2 - t1, "post": t3 - t2, "total": t3 - t0}
    return TopologyResult(
        num_layers=num_layers, num_points=n, raw_bars={p: raw[p] for p in dims}, bars=bars, betti=betti,
        consistency=cons, combined=combined, epi=epi, activity=activity,
        activity_combined=activity_combined, timings=timings, sizes=sizes,
    )
