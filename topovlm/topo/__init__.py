"""Topology-aware layer scoring (TopoVLM and its ancestor): zigzag persistent homology over
per-layer point clouds.

Pipeline (one module per step):

* :mod:`~topovlm.topo.clouds` -- pooled calibration states -> per-layer point clouds;
* :mod:`~topovlm.topo.complexes` -- symmetrised k-NN graphs and their flag complexes;
* :mod:`~topovlm.topo.zigzag` -- the layer zigzag, its bars, snapping to layers;
* :mod:`~topovlm.topo.consistency` -- persistence similarity, Betti curves, the consistency
  formulas (``gardinazzi``, ``ilp``, ``topovlm_reconstruction``);
* :mod:`~topovlm.topo.epi` -- effective persistence image and topological activity;
* :mod:`~topovlm.topo.pipeline` -- the steps above end to end, with timings;
* :mod:`~topovlm.topo.ranking` -- bars -> scores, warnings and the removal decision (shared);
* :mod:`~topovlm.topo.barcodes` -- the ancestor's barcode CSV format and ``topovlm topo-score``;
* :mod:`~topovlm.topo.plots` -- diagnostic figures;
* :mod:`~topovlm.topo.scorer` -- ``scorer=topo`` (:class:`TopoScorer`) and ``scorer=topo_llm``
  (:class:`TopoLLMScorer`).
"""
from topovlm.topo.consistency import betti_curve, combine_dimensions, consistency, persistence_similarity
from topovlm.topo.pipeline import TopologyConfig, TopologyResult, compute_topology

__all__ = [
    "TopologyConfig",
    "TopologyResult",
    "betti_curve",
    "combine_dimensions",
    "compute_topology",
    "consistency",
    "persistence_similarity",
]
