"""``topo_h0``: ``scorer=topo`` scored on H0 alone (``dim_weights: {h0: 1, h1: 0}``), every
other step topo's own. An ablation: does H1, which topo scores, add anything over the
connected components of the same k-NN graphs?

A subclass only because a registered name belongs to one class; the constructor is topo's
with one default changed.
"""
from __future__ import annotations

import inspect
from typing import Any

from topovlm.registry import register_scorer
from topovlm.topo.scorer import TopoScorer

#: H0 only [project: the ablation]; topo scores H1 alone. max_dim stays 1 as in topo [project:
#: same as topo], so H1 is still computed and reported (topology.consistency.h1); max_dim=0 gives
#: the same H0 scores, cheaper (no triangles). empty_layers=skip changes nothing here: beta_0 >= 1
#: always. Every other default is topo's [project: same as topo, so the ablation isolates homology].
H0_DEFAULTS: dict[str, Any] = {"dim_weights": {"h0": 1.0, "h1": 0.0, "h2": 0.0}}


@register_scorer("topo_h0")
class TopoH0Scorer(TopoScorer):
    """TopoVLM's construction, consistency scored on H0 (components) instead of H1."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**{**H0_DEFAULTS, **params})


# the same keywords as topo with this default: say so to inspect (listing, error messages)
_base = inspect.signature(TopoScorer.__init__)
TopoH0Scorer.__init__.__signature__ = _base.replace(parameters=[  # type: ignore[attr-defined]
    p.replace(default=H0_DEFAULTS.get(p.name, p.default)) for p in _base.parameters.values()])
