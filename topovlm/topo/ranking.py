"""From layer bars to per-representation scores, warnings and the removal decision.

The scorer (bars computed from clouds) and ``topovlm topo-score`` (bars read from a
file) both go through :func:`score_bars` and :func:`decide`, so a barcode gives the same
scores and the same removed layers whichever way it arrives.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from topovlm.topo.consistency import betti_curve, combine_dimensions, consistency

#: more than this fraction of representations with beta_p = 0 in a scored dimension warns
EMPTY_WARN_FRACTION = 0.25


@dataclass
class BarScores:
    """Per-dimension Betti curves and consistencies, and their weighted combination."""

    betti: dict[int, np.ndarray]
    consistency: dict[int, np.ndarray]
    combined: np.ndarray


def score_bars(bars: Mapping[int, np.ndarray], num_reps: int, formula: str, alpha: float,
               dim_weights: Mapping[int, float], empty: str) -> BarScores:
    """Betti curves, consistency per dimension and ``sum_p w_p S_p / sum_p w_p``."""
    dims = sorted(bars)
    betti = {p: betti_curve(bars[p], num_reps) for p in dims}
    cons = {p: consistency(bars[p], num_reps, alpha, empty, formula) for p in dims}
    combined = combine_dimensions(cons, {p: float(dim_weights.get(p, 0.0)) for p in dims})
    return BarScores(betti=betti, consistency=cons, combined=combined)


def empty_layer_warnings(betti: Mapping[int, np.ndarray], dim_weights: Mapping[int, float],
                         hint: str = "") -> list[dict[str, Any]]:
    """One warning per scored dimension whose Betti number is 0 in over a quarter of the
    representations: the score there rests on the ``empty_layers`` policy, not on topology."""
    out = []
    for p in sorted(betti):
        if float(dim_weights.get(p, 0.0)) == 0.0:
            continue
        b = np.asarray(betti[p])
        empty = [int(i) for i in np.flatnonzero(b == 0)]
        if len(empty) > EMPTY_WARN_FRACTION * len(b):
            out.append({
                "kind": "empty_layers", "dim": f"h{p}", "count": len(empty), "of": int(len(b)),
                "layers": empty,
                "message": (f"beta_{p} = 0 in {len(empty)} of {len(b)} representations: their H{p} "
                            f"consistency is undefined and set by empty_layers"
                            + (f"; {hint}" if hint else "")),
            })
    return out


def tie_warning(redundancy: np.ndarray, removable: list[int]) -> dict[str, Any] | None:
    """A warning when every removable layer scores the same: any removal is a tie-break by index."""
    r = np.asarray(redundancy, dtype=np.float64)[list(removable)]
    finite = r[np.isfinite(r)]
    if len(removable) > 1 and (finite.size == 0 or np.ptp(finite) <= 1e-12):
        value = float(finite[0]) if finite.size else float("nan")
        return {"kind": "constant_scores", "value": value,
                "message": (f"every removable layer has the same score ({value:g}): which layers are "
                            "removed is decided by layer index (tie-break), not by topology")}
    return None


def decide(redundancy: np.ndarray, removable: list[int], *, eps: float | None = None,
           remove: int | None = None) -> dict[str, Any]:
    """Layers to remove among ``removable``: ``remove`` most redundant (top-k), or every one
    with ``redundancy >= eps * max`` over the removable ones, the ancestor's and TopoVLM's
    adaptive rule (``selection.policy=adaptive``; nothing when no score is positive)."""
    from topovlm.selection import select_topk

    if (eps is None) == (remove is None):
        raise ValueError("give exactly one of eps (adaptive rule) or remove (a fixed count)")
    r = np.asarray(redundancy, dtype=np.float64)
    protected = set(range(len(r))) - set(removable)
    if remove is not None:
        layers = select_topk(r, int(remove), protected)
        return {"rule": "topk", "remove": int(remove), "layers": layers, "count": len(layers)}
    # the maximum is taken over the removable representations only
    values = [r[i] for i in removable if np.isfinite(r[i])]
    top = float(max(values)) if values else float("nan")
    cut = float(eps) * top
    layers = sorted(int(i) for i in removable if values and top > 0 and np.isfinite(r[i]) and r[i] >= cut)
    return {"rule": "eps * max", "eps": float(eps), "threshold": cut, "layers": layers, "count": len(layers)}
