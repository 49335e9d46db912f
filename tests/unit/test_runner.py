"""One job in-process: W&B failures, cleanup on errors, atomic results."""
from __future__ import annotations

import json

import pytest

from tests.helpers import compose, tiny_overrides
from topovlm.runner import run_job


def test_wandb_failure_never_fails_a_job(tmp_path, monkeypatch):
    import wandb

    def broken_init(*args, **kwargs):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    cfg = compose(tiny_overrides(tmp_path, "logger=wandb", "sparsity=0.25"))
    res = run_job(cfg, tmp_path / "out")
    assert res["metrics"]["accuracy"] >= 0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["removed_layers"] == res["removed_layers"]


def test_failed_job_closes_its_run_and_writes_no_result(tmp_path, monkeypatch):
    import wandb

    from topovlm.evaluation.vqa import VQAEvaluator

    def explode(self, adapter):
        raise RuntimeError("evaluation crashed")

    monkeypatch.setattr(VQAEvaluator, "evaluate", explode)
    cfg = compose(tiny_overrides(tmp_path, "logger=wandb", f"logger.wandb.dir={tmp_path}", "sparsity=0.25"))
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        run_job(cfg, tmp_path / "out")
    assert wandb.run is None  # the run was finished
    assert not (tmp_path / "out" / "results.json").exists()
    assert not list((tmp_path / "out").glob(".results.*"))


def test_saved_pruned_model_and_original_indices(tmp_path):
    from transformers import LlavaForConditionalGeneration

    cfg = compose(tiny_overrides(tmp_path, "sparsity=0.25", "save_model=true", "scorer=tail"))
    res = run_job(cfg, tmp_path / "out")
    assert res["removed_layers"] == [8, 9, 10]  # 12 layers, k=3, the final one kept
    assert res["kept_layers"] == [0, 1, 2, 3, 4, 5, 6, 7, 11]
    model = LlavaForConditionalGeneration.from_pretrained(tmp_path / "out" / "pruned_model")
    assert model.config.text_config.num_hidden_layers == 9


def test_text_only_model_with_perplexity(tmp_path):
    cfg = compose(tiny_overrides(tmp_path, "model=tiny_llama", "task=text_ppl", "calibration.dataset.source=text",
                                 "calibration.n=6", "scorer=shortgpt", "sparsity=0.25"))
    res = run_job(cfg, tmp_path / "out")
    assert res["metrics"]["perplexity"] > 1.0 and res["metrics"]["num_tokens"] > 100
    assert len(res["removed_layers"]) == 3
