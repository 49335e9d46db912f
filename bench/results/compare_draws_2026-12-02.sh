#!/usr/bin/env bash
# Calibration draws at 10% and 20% on the embedded default: the scorers whose 30% removals
# changed between draws (compare_scorers_2026-12-01.md: topo, topo_llm, cosine), draws 0-2.
# Random removal at 10% and 20% too (3 seeds), not run then.
# Draw 0 repeats that comparison's single-draw cells, so the rerun also checks that they reproduce.
# Usage: bash bench/results/compare_draws_2026-12-02.sh ROOT   (ROOT: where the sweeps go)
set -euo pipefail
ROOT=${1:?sweep root}
PY=${PY:-.venv/bin/python}
common=(logger=none num_threads=1 hydra/launcher=joblib hydra.launcher.n_jobs=2
        hydra.callbacks.summary.enabled=false)
run() { label=$1; shift; echo "+ $label: $*"; "$PY" launch.py -m "$@" "${common[@]}" "hydra.sweep.dir=$ROOT/$label"; }
run draws_10_20 scorer=topo,cosine calibration.seed=0,1,2 sparsity=0.1,0.2
run topo_llm_draws_10_20 scorer=topo_llm selection.policy=topk calibration.seed=0,1,2 sparsity=0.1,0.2
run random_10_20 scorer=random seed=0,1,2 sparsity=0.1,0.2
"$PY" bench/compare_scorers.py --sweep-dir "$ROOT" --summarize-only \
    --out bench/results/compare_draws_2026-12-02.md
