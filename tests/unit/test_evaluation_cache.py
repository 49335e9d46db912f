"""A pruned model is evaluated once: a second job that builds the same network reuses the records."""
from __future__ import annotations

import json

from tests.helpers import compose, tiny_overrides
from topovlm import evaluation_cache
from topovlm.runner import run_job


def _run(tmp_path, name: str, *extra: str) -> tuple[dict, list[str]]:
    cfg = compose(tiny_overrides(tmp_path, "sparsity=0.25", *extra))
    res = run_job(cfg, tmp_path / name)
    return res, (tmp_path / name / "samples.jsonl").read_text().splitlines()


def test_same_removal_in_another_draw_reuses_the_evaluation(tmp_path, monkeypatch):
    from topovlm.evaluation.vqa import VQAEvaluator

    first, first_rows = _run(tmp_path, "draw0", "scorer=tail", "calibration.seed=0")
    assert "evaluation_reused" not in first
    evaluated = []
    real = VQAEvaluator.evaluate
    monkeypatch.setattr(VQAEvaluator, "evaluate", lambda self, adapter: evaluated.append(1) or real(self, adapter))
    second, second_rows = _run(tmp_path, "draw1", "scorer=tail", "calibration.seed=1")
    assert evaluated == []  # the unpruned reference and the pruned model: both from the cache
    assert second["removed_layers"] == first["removed_layers"]
    assert second["evaluation_reused"].endswith(".json")
    assert json.loads((tmp_path / "draw1" / "results.json").read_text())["evaluation_reused"]
    assert second["metrics"] == first["metrics"]
    assert second_rows == first_rows  # samples.jsonl, joined with the unpruned records, unchanged

    # other layers removed: another network, evaluated
    third, _ = _run(tmp_path, "other", "scorer=tail", "calibration.seed=2", "sparsity=0.5")
    assert evaluated and "evaluation_reused" not in third


def test_force_evaluates_again(tmp_path):
    _run(tmp_path, "a", "scorer=tail")
    again, _ = _run(tmp_path, "b", "scorer=tail", "calibration.seed=3", "+force=true")
    assert "evaluation_reused" not in again


def test_key_covers_weights_and_edits(tmp_path):
    ref = {"model": "m", "task": {"name": "t"}, "seed": 0, "code": "c", "versions": {}}
    base = evaluation_cache.entry(tmp_path, "m", ref, [3, 1], "w0", {}, "tail")[0]
    assert base == evaluation_cache.entry(tmp_path, "m", ref, [1, 3], "w0", {}, "cosine")[0]  # order, scorer: no
    assert base != evaluation_cache.entry(tmp_path, "m", ref, [1, 3], "w1", {}, "tail")[0]  # compensated weights
    assert base != evaluation_cache.entry(tmp_path, "m", ref, [1, 3], "w0", {"hook": 1}, "x")[0]  # an edit
    assert base != evaluation_cache.entry(tmp_path, "m", ref, [1, 4], "w0", {}, "tail")[0]
    assert base != evaluation_cache.entry(tmp_path, "m", {**ref, "seed": 1}, [1, 3], "w0", {}, "tail")[0]
