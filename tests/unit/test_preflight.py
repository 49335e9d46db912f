"""Inputs a job reads are checked before any model loads; real calibration sources draw seeded samples."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from tests.helpers import compose, tiny_overrides
from topovlm.config import ConfigError, validate
from topovlm.data.sources import load_samples


@pytest.fixture
def no_model_load(monkeypatch):
    import topovlm.adapters.loading as loading

    def refuse(*a, **kw):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(loading, "load_adapter", refuse)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LMMS_EVAL_DATASETS_CACHE", raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")


def test_missing_local_model_dir_says_so(tmp_path):
    with pytest.raises(ConfigError, match="model.path=.*no such local directory") as err:
        validate(compose(["model=llava-1.5-7b", f"model.path={tmp_path / 'nope'}"]))
    assert "Repo id" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        validate(compose(["model=llava-1.5-7b", f"model.path={tmp_path / 'empty'}"]))


def test_uncached_hub_model_names_the_download_command(empty_hf_cache):
    with pytest.raises(ConfigError) as err:
        validate(compose(["model=qwen2-vl-7b", "calibration=shapes"]))
    assert "model.path='Qwen/Qwen2-VL-7B-Instruct'" in str(err.value)
    assert "hf download Qwen/Qwen2-VL-7B-Instruct" in str(err.value)


def test_real_calibration_set_is_checked_too(empty_hf_cache, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as err:
        validate(compose(["model=llava-1.5-7b", f"model.path={tmp_path / 'ckpt'}"]))  # coco_captions by default
    assert "calibration.dataset.path='lmms-lab/COCO-Caption2017'" in str(err.value)
    assert "datasets.load_dataset('lmms-lab/COCO-Caption2017', split='val')" in str(err.value)


def test_missing_lmms_dataset_fails_before_the_model_loads(empty_hf_cache, tmp_path, no_model_load):
    from topovlm.runner import run_job

    cfg = compose(tiny_overrides(tmp_path, "task=pope", "sparsity=0.25"))
    with pytest.raises(ConfigError) as err:
        run_job(cfg, tmp_path / "job")
    assert "task=pope" in str(err.value) and "lmms-lab-encoder/POPE" in str(err.value)
    assert "datasets.load_dataset('lmms-lab-encoder/POPE'" in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_missing_jsonl_and_text_paths(tmp_path):
    with pytest.raises(ConfigError, match=r"calibration.dataset.path=.*no .*calibration.jsonl"):
        validate(compose(["calibration.dataset.source=jsonl", f"calibration.dataset.path={tmp_path}",
                          "calibration.dataset.split=calibration"]))
    with pytest.raises(ConfigError, match="task.dataset.path=.*no such text file"):
        validate(compose(["task=text_ppl", f"task.dataset.path={tmp_path / 'x.txt'}"]))


def _jsonl_folder(tmp_path, n=10):
    lines = []
    for i in range(n):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(tmp_path / f"{i}.png")
        lines.append(json.dumps({"id": i, "question": f"q{i}", "answer": "a", "image": f"{i}.png"}))
    (tmp_path / "calibration.jsonl").write_text("\n".join(lines))
    return tmp_path


def test_jsonl_source_honours_its_seed(tmp_path):
    folder = _jsonl_folder(tmp_path)
    ds = compose(["calibration.dataset.source=jsonl", f"calibration.dataset.path={folder}"]).calibration.dataset
    ids = lambda seed: [s.id for s in load_samples(ds, n=4, seed=seed)]  # noqa: E731
    assert ids(0) == ids(0) and ids(0) != ids(1)
    with pytest.raises(ValueError, match="11 samples asked for, the source has 10"):
        load_samples(ds, n=11, seed=0)


def test_hf_source_draws_a_seeded_sample_after_the_excluded_rows(tmp_path):
    import datasets

    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(20)]
    data = datasets.Dataset.from_dict({"image": images, "caption": [[f"c{i}", "x"] for i in range(20)],
                                       "uid": [f"u{i}" for i in range(20)]})
    datasets.DatasetDict({"val": data}).save_to_disk(str(tmp_path / "caps"))
    cfg = compose(["calibration=coco_captions", f"calibration.dataset.path={tmp_path / 'caps'}",
                   "calibration.dataset.options.text_column=caption", "+calibration.dataset.options.id_column=uid",
                   "+calibration.dataset.options.exclude_first=5", "calibration.n=6"])
    validate(cfg)  # a local folder: nothing to fetch
    samples = load_samples(cfg.calibration.dataset, n=6, seed=0)
    assert len(samples) == 6 and all(int(s.id[1:]) >= 5 for s in samples)
    assert all(s.question == f"c{s.id[1:]}" and s.image.size == (8, 8) for s in samples)
    assert [s.id for s in load_samples(cfg.calibration.dataset, n=6, seed=1)] != [s.id for s in samples]


def test_task_holdout_is_disjoint_from_the_evaluated_documents(tmp_path):
    over = ["task=shapes_lmms", "calibration=task_holdout", f"task.options.data_dir={tmp_path}", "model=tiny_llava"]
    with pytest.raises(ConfigError, match="would overlap the evaluated ones; set task.limit"):
        validate(compose(over))
    from topovlm.evaluation.lmms import LmmsEvalEvaluator

    cfg = compose([*over, "task.limit=8", "task.dataset.n=20"])
    exported = LmmsEvalEvaluator(cfg.task).task_specs()[0]["dataset_path"]  # the local task's dataset
    cfg = compose([*over, "task.limit=8", "task.dataset.n=20", "calibration.n=6",
                   f"+calibration.dataset.options.dataset_path={exported}"])
    validate(cfg)
    opts = cfg.calibration.dataset.options
    assert opts.task == "shapes_lmms" and opts.exclude_first == 8
    samples = load_samples(cfg.calibration.dataset, n=6, seed=0)
    indices = [int(s.id.split(":")[1]) for s in samples]
    assert len(indices) == 6 and min(indices) >= 8
    assert all(s.image is not None and s.question for s in samples)
