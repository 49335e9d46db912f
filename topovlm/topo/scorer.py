"""``scorer=topo``: TopoVLM-style inter-layer topological consistency.

Layers whose topology (zigzag H0/H1 bars of k-NN flag complexes over the calibration
samples' pooled states) is carried on by the other layers are redundant and removed
first. See ``conf/scorer/topo.yaml`` for every hyperparameter and the README's
"Method: topo" section for the construction.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from topovlm.registry import register_scorer
from topovlm.scoring import LayerScorer, ScoreResult, ScoringContext
from topovlm.topo.clouds import NORMALISATIONS, TOPO_POOLINGS, layer_clouds
from topovlm.topo.complexes import FLAG_BACKENDS, SYMMETRISATIONS
from topovlm.topo.consistency import EMPTY_POLICIES
from topovlm.topo.pipeline import TopologyConfig, TopologyResult, compute_topology
from topovlm.topo.zigzag import METHODS, VARIANTS

if TYPE_CHECKING:
    from topovlm.capture import Capture

#: H1 (and H2) only by default, as in the ancestor: H0 of a union k-NN graph is usually a
#: single bar across all layers, i.e. S_0 = 1 everywhere, which adds nothing to the
#: ranking but lifts every layer towards eps * max in the adaptive rule.
DEFAULT_DIM_WEIGHTS = {"h0": 1.0, "h1": 1.0, "h2": 1.0}


def _choice(name: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(map(str, allowed))}")
    return value


def parse_dim_weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    """``{"h0": w0, "h1": w1, ...}`` (keys ``h<p>`` or ints) -> plain ``{"h<p>": float}``."""
    out = dict(DEFAULT_DIM_WEIGHTS)
    for key, value in dict(weights or {}).items():
        name = f"h{key}" if isinstance(key, int) else str(key)
        if not (name.startswith("h") and name[1:].isdigit()):
            raise ValueError(f"dim_weights key {key!r}; use h0, h1, h2")
        if float(value) < 0:
            raise ValueError("dim_weights must be >= 0")
        out[name] = float(value)
    return out


def adaptive_decision(redundancy: np.ndarray, eps: float) -> dict[str, Any]:
    """Layers the shared threshold policy selects (``topovlm.selection``), nothing protected.

    A vector with no positive value (no layer carries any other layer's features) selects
    nothing.
    """
    from topovlm.selection import select_threshold, threshold_cut

    r = np.asarray(redundancy, dtype=np.float64)
    finite = r[np.isfinite(r)]
    layers = select_threshold(r, eps, set()) if finite.size and finite.max() > 0 else []
    cut = threshold_cut(r, eps, set())
    cut = float("nan") if cut is None else cut
    return {"eps": float(eps), "threshold": cut, "layers": [int(i) for i in layers], "count": len(layers)}


@register_scorer("topo")
class TopoScorer(LayerScorer):
    """Zigzag persistent homology over per-layer point clouds (TopoVLM, arXiv 2604.16502)."""

    def __init__(
        self,
        pooling: str = "last",
        center: bool = False,
        normalize: str = "none",
        pca_dim: int | None = None,
        num_points: int | None = None,
        k: int = 15,
        symmetrize: str = "union",
        metric: str = "euclidean",
        max_dim: int = 1,
        zigzag: str = "intersection",
        alpha: float = 1.0,
        dim_weights: Mapping[str, float] | None = None,
        empty_layers: str = "skip",
        epi_sigma: float = 1.0,
        epi_power: float = 1.0,
        epi_mix: float = 0.0,
        eps: float = 0.9,
        max_zigzag_simplices: int | None = 250_000,
        flag_backend: str = "numpy",
        zigzag_method: str = "fast",
    ) -> None:
        self.pooling = _choice("pooling", pooling, TOPO_POOLINGS)
        self.center = bool(center)
        self.normalize = _choice("normalize", normalize, NORMALISATIONS)
        self.pca_dim = None if pca_dim in (None, 0) else int(pca_dim)
        self.num_points = None if num_points is None else int(num_points)
        self.k = int(k)
        if self.k < 1:
            raise ValueError("k must be >= 1")
        self.symmetrize = _choice("symmetrize", symmetrize, SYMMETRISATIONS)
        self.metric = str(metric)
        self.max_dim = int(_choice("max_dim", int(max_dim), (0, 1, 2)))
        self.zigzag = _choice("zigzag", zigzag, VARIANTS)
        self.alpha = float(alpha)
        self.dim_weights = parse_dim_weights(dim_weights)
        if not any(self.dim_weights.get(f"h{p}", 0.0) > 0 for p in range(self.max_dim + 1)):
            raise ValueError(f"dim_weights give zero weight to every dimension up to max_dim={self.max_dim}"
                             + (" (max_dim=0 needs dim_weights.h0 > 0)" if self.max_dim == 0 else ""))
        self.empty_layers = _choice("empty_layers", empty_layers, EMPTY_POLICIES)
        self.epi_sigma = float(epi_sigma)
        self.epi_power = float(epi_power)
        self.epi_mix = float(epi_mix)
        self.eps = float(eps)
        self.max_zigzag_simplices = None if max_zigzag_simplices is None else int(max_zigzag_simplices)
        self.flag_backend = _choice("flag_backend", flag_backend, FLAG_BACKENDS)
        self.zigzag_method = _choice("zigzag_method", zigzag_method, METHODS)

    def config(self) -> TopologyConfig:
        return TopologyConfig(
            k=self.k, symmetrize=self.symmetrize, metric=self.metric, max_dim=self.max_dim,
            variant=self.zigzag, alpha=self.alpha,
            dim_weights={int(key[1:]): w for key, w in self.dim_weights.items()},
            empty=self.empty_layers, epi_sigma=self.epi_sigma, epi_power=self.epi_power,
            flag_backend=self.flag_backend, zigzag_method=self.zigzag_method,
            max_zigzag_simplices=self.max_zigzag_simplices,
        )

    def score(self, capture: "Capture", ctx: ScoringContext) -> ScoreResult:
        lc = layer_clouds(capture, self.pooling, center=self.center, normalize=self.normalize,
                          pca_dim=self.pca_dim, num_points=self.num_points, seed=ctx.seed)
        topo = compute_topology(lc.clouds, self.config())
        scores = topo.combined
        redundancy = scores.copy()
        if self.epi_mix:
            act = topo.activity_combined
            top = float(np.max(act)) if act.size else 0.0
            redundancy = scores - self.epi_mix * (act / top if top > 0 else act)
        section = self._section(topo, redundancy, lc.sample_ids, lc.dropped_ids)
        arrays = {
            "clouds": lc.clouds.astype(np.float32),
            "epi": np.stack([topo.epi[p] for p in sorted(topo.epi)]).astype(np.float32),
        }
        return ScoreResult(scores=scores, redundancy=redundancy, extra={"topology": section}, arrays=arrays)

    def _section(self, topo: TopologyResult, redundancy: np.ndarray, ids: list[str],
                 dropped: list[str]) -> dict[str, Any]:
        dims = sorted(topo.bars)

        def per_dim(values: Mapping[int, np.ndarray], cast=float) -> dict[str, list]:
            return {f"h{p}": [cast(v) for v in values[p]] for p in dims}

        return {
            "pooling": self.pooling,
            "num_points": topo.num_points,
            "dropped_samples": list(dropped),
            "sample_order": "sorted by sample id (clouds.npz rows)",
            "dims": [f"h{p}" for p in dims],
            "dim_weights": {f"h{p}": self.dim_weights.get(f"h{p}", 0.0) for p in dims},
            "consistency": per_dim(topo.consistency),
            "consistency_combined": [float(v) for v in topo.combined],
            "betti": per_dim(topo.betti, int),
            "activity": [float(v) for v in topo.activity_combined],
            "activity_by_dim": per_dim(topo.activity),
            "bars": {f"h{p}": topo.bars[p].astype(int).tolist() for p in dims},
            "bars_note": "[birth_layer, death_layer): alive on layers birth..death-1; death = L: never dies",
            "adaptive": adaptive_decision(redundancy, self.eps),
            "epi": {"sigma": self.epi_sigma, "power": self.epi_power, "mix": self.epi_mix},
            "zigzag": {"variant": self.zigzag, "simplices": int(topo.sizes["zigzag_simplices"]),
                       "events": int(topo.sizes["zigzag_events"]),
                       "edges_per_layer": [int(v) for v in topo.sizes["edges_per_layer"]],
                       "simplices_per_layer": [int(v) for v in topo.sizes["simplices_per_layer"]]},
            "timings_s": {key: round(float(v), 4) for key, v in topo.timings.items()},
        }

    def write_diagnostics(self, result: ScoreResult, out_dir: Path) -> list[Path]:
        from topovlm.topo.plots import write_topology_plots

        section = result.extra.get("topology")
        if not section:
            return []
        return write_topology_plots(section, result.arrays.get("epi"), Path(out_dir))
