"""The lmms-eval path: local shapes task end to end, fail-fast on missing datasets, presets, protocol."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.helpers import compose, lmms_agrees_with_vqa, lmms_task, tiny_overrides

# lmms-eval is part of the test environment (make setup): a broken install must fail here, not skip
import lmms_eval.evaluator  # noqa: F401 - imported for the failure, see above

from topovlm.evaluation.lmms import (
    DEFAULT_METRICS, LmmsDatasetUnavailable, LmmsEvalEvaluator, extract_metrics, leaf_task_configs, task_manager,
)

PRESETS = ["mme", "pope", "scienceqa_img", "gqa", "gqa_lite", "textvqa_val", "textvqa_val_lite", "mmmu_val",
           "mathvista_testmini", "seedbench", "seedbench_lite", "lmms_lite"]


def test_shapes_lmms_agrees_with_vqa_evaluator(tiny_llava, tmp_path):
    _, protocol = lmms_agrees_with_vqa(tiny_llava, tmp_path, n=8, limit=4, max_new_tokens=3)
    assert protocol["lmms_eval_version"] == "0.7.3"
    assert protocol["tasks"] == ["shapes_lmms"] and protocol["limit"] == 4 and protocol["batch_size"] == 1
    assert protocol["seeds"] == {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}
    assert protocol["prompt_variant"] == "llava_hf"
    assert protocol["generation_kwargs"]["shapes_lmms"]["max_new_tokens"] == 3
    assert protocol["n_samples"]["shapes_lmms"]["effective"] == 4
    saved = Path(protocol["datasets"]["shapes_lmms"]["local"])
    assert saved.is_relative_to(tmp_path) and (saved / "dataset_dict.json").is_file()


def test_missing_dataset_fails_fast_with_instructions(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("LMMS_EVAL_DATASETS_CACHE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")

    class NoModel:  # the check runs before the model is ever called
        family = "llava"

        def __getattr__(self, name):
            raise AssertionError(f"model touched: {name}")

    ev = LmmsEvalEvaluator(lmms_task("mme", tmp_path, options={"tasks": ["shapes_lmms", "mme"]}))
    start = time.perf_counter()
    with pytest.raises(LmmsDatasetUnavailable) as err:
        ev.evaluate(NoModel())
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "'mme'" in msg and "lmms-lab-encoder/MME" in msg
    assert "datasets.load_dataset('lmms-lab-encoder/MME'" in msg and "HF_DATASETS_OFFLINE=1" in msg

    # once the dataset is in the hub cache, the check passes
    snap = tmp_path / "hf" / "hub" / "datasets--lmms-lab-encoder--MME" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "x.parquet").write_text("")
    tm, _, leaves = ev.prepare("llava")
    assert set(leaves) == {"shapes_lmms", "mme"}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_compose_and_resolve(preset):
    cfg = compose([f"task={preset}", "model=tiny_llava"])
    task = cfg.task
    assert task.evaluator == "lmms" and task.batch_size == 16
    tasks = list(task.options.tasks)
    tm = task_manager(tasks, "llava_hf")
    leaves = leaf_task_configs(tm, tasks)
    assert leaves
    for name, conf in leaves.items():
        declared = {m["metric"] for m in conf.get("metric_list") or []}
        wanted = dict(task.options.metrics or {}).get(name) or DEFAULT_METRICS.get(name)
        assert wanted, f"{preset}: no metric keys for {name}"
        assert set(wanted) <= declared, f"{preset}: {set(wanted) - declared} not reported by {name}"


def test_several_tasks_and_metric_keys():
    results = {"results": {"mme": {"alias": "mme", "mme_perception_score,none": 1200.5,
                                   "mme_perception_score_stderr,none": "N/A", "mme_cognition_score,none": 300.0},
                           "pope": {"pope_accuracy,none": 0.8, "pope_f1_score,none": 0.7, "extra,none": 1.0}},
               "n-samples": {"mme": {"original": 10, "effective": 4}, "pope": {"original": 9, "effective": 4}}}
    wanted = {"mme": DEFAULT_METRICS["mme"], "pope": ["pope_accuracy"]}
    out = extract_metrics(results, wanted, prefix=True)
    assert out == {"mme/mme_perception_score": 1200.5, "mme/mme_cognition_score": 300.0,
                   "pope/pope_accuracy": 0.8, "num_samples/mme": 4.0, "num_samples/pope": 4.0}
    assert extract_metrics({"results": {"pope": results["results"]["pope"]}}, {}, prefix=False)["extra"] == 1.0
    cfg = compose(["task=mme", "task.options.tasks=[mme,pope]", "model=tiny_llava"])
    assert LmmsEvalEvaluator(cfg.task).tasks == ["mme", "pope"]


@pytest.mark.slow
def test_run_job_through_lmms_eval(tmp_path):
    from topovlm.runner import run_job

    cfg = compose(tiny_overrides(tmp_path, "task=shapes_lmms", "task.dataset.n=6", "task.limit=3",
                                 "task.max_new_tokens=2", "sparsity=0.25", "calibration.n=6"))
    res = run_job(cfg, tmp_path / "job")
    saved = json.loads((tmp_path / "job" / "results.json").read_text())
    assert saved["protocol"]["evaluator"] == "lmms" and saved["protocol"]["limit"] == 3
    assert saved["metrics"]["num_samples"] == 3 and 0.0 <= res["metrics"]["accuracy"] <= 1.0
    # the dataset went under the job's cache_dir
    assert Path(saved["protocol"]["datasets"]["shapes_lmms"]["local"]).is_relative_to(tmp_path / "cache")
    assert saved["efficiency"]["num_decoder_layers"] == 9
