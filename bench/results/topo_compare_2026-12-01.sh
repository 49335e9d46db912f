#!/usr/bin/env bash
# Scorer comparison on the embedded default with the faithful topo presets next to baselines.
# One embedded-model process at a time (Hydra's basic launcher runs a sweep's jobs in turn).
# Usage: bash bench/results/topo_compare_2026-12-01.sh ROOT   (ROOT: where the sweeps go)
set -euo pipefail
ROOT=${1:?sweep root}
PY=${PY:-.venv/bin/python}
common=(logger=none num_threads=1 hydra.callbacks.summary.enabled=false)
run() { label=$1; shift; echo "+ $label: $*"; "$PY" launch.py -m "$@" "${common[@]}" "hydra.sweep.dir=$ROOT/$label"; }
# fixed budgets: every scorer ranks, top-k removes
run main scorer=topo,topo_llm,cosine,shortgpt sparsity=0.1,0.2,0.3 selection.policy=topk
# the presets' own adaptive rule (S >= eps * max); the ancestor protects no decoder layer
run adaptive scorer=topo,topo_llm sparsity=0
run adaptive_noprotect scorer=topo_llm sparsity=0 'selection.protect=[]'
run random scorer=random seed=0,1,2 sparsity=0.3
# how EPI enters the decision (redundancy = S - epi_mix * activity / max activity)
run epi scorer=topo scorer.epi_mix=0.5,1.0 sparsity=0.3 selection.policy=topk
# TopoVLM's calibration size
run n512 scorer=topo calibration.n=512 sparsity=0.1,0.2,0.3 selection.policy=topk
run n512_adaptive scorer=topo calibration.n=512 sparsity=0
# the project's former activations, for the effect of activations alone
run residual scorer=topo scorer.activations=residual scorer.include_final_norm=false sparsity=0.3 selection.policy=topk
