"""A real Hydra multirun in a subprocess: every baseline at two sparsities plus the unpruned model."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT, tiny_overrides

pytestmark = pytest.mark.slow  # every test reads one launch.py sweep

REQUIRED = {"model", "task", "scorer", "sparsity", "num_layers", "removed_layers", "scores", "metrics",
            "timings", "config", "versions", "seed"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    sweep_dir = tmp / "multirun"
    proc = subprocess.run(
        [sys.executable, "launch.py", "-m", *tiny_overrides(tmp), "scorer=cosine,shortgpt,angular,random,tail",
         "sparsity=0,0.25", "logger=wandb", f"logger.wandb.dir={tmp / 'wandb'}", f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    return tmp, sweep_dir, results


def test_every_job_writes_complete_results(sweep):
    _, sweep_dir, results = sweep
    assert len(results) == 10
    for r in results:
        assert REQUIRED <= set(r)
        assert len(r["scores"]) == r["num_layers"] == 12
        assert 0.0 <= r["metrics"]["accuracy"] <= 1.0
        assert {"accuracy/math", "accuracy/non_math"} <= set(r["metrics"])
        expected_k = round(r["sparsity"] * 12)
        assert len(r["removed_layers"]) == expected_k and r["num_layers_kept"] == 12 - expected_k
        assert 0 not in r["removed_layers"]  # the first layer is protected
    rows = [json.loads(line) for line in (sweep_dir / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 10


def test_sweep_calibrates_once_and_scores_once_per_scorer(sweep):
    tmp, _, results = sweep
    assert len([p for p in (tmp / "cache" / "captures").iterdir() if p.is_dir()]) == 1
    by_scorer = {}
    for r in results:
        by_scorer.setdefault(r["scorer"], []).append(r)
    for scorer, runs in by_scorer.items():
        runs.sort(key=lambda r: r["sparsity"])
        assert [r["scores_from_cache"] for r in runs] == [False, True], scorer
        assert runs[0]["scores"] == runs[1]["scores"]
    assert by_scorer["angular"][1]["selection_policy"] == "block"
    removed = by_scorer["angular"][1]["removed_layers"]
    assert removed == list(range(removed[0], removed[0] + 3))


def test_unpruned_reference_rows_agree(sweep):
    _, _, results = sweep
    unpruned = [r["metrics"]["accuracy"] for r in results if r["sparsity"] == 0]
    assert len(set(unpruned)) == 1  # same model, same questions, whatever the scorer
    # every pruned job carries the unpruned reference (evaluated once, cached)
    assert {r["reference_metrics"]["accuracy"] for r in results} == set(unpruned)


def test_wandb_offline_runs_are_written(sweep):
    tmp, _, results = sweep
    runs = list((tmp / "wandb").rglob("offline-run-*"))
    assert len(runs) == 10
