"""GQA's document mapping (``process_docs``) runs once per task version and input, then every
job reads it back from the cache: through lmms-eval's own task loading, on a tiny local dataset
built like GQA's (questions naming an image id, a separate image set)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import lmms_task
from topovlm.evaluation.lmms import LmmsEvalEvaluator, leaf_task_configs, task_manager
from topovlm.evaluation.lmms_tasks import doc_cache
from topovlm.evaluation.lmms_tasks.doc_cache import cached_process_docs, with_cached_docs

COLOURS = {"img0": (200, 30, 30), "img1": (30, 200, 30), "img2": (30, 30, 200)}


def _questions(datasets, first: str = "What colour is it?"):
    return datasets.Dataset.from_dict({"question": [first, "Is it red?", "Is it blue?", "Which colour?"],
                                       "imageId": ["img0", "img1", "img2", "img0"],
                                       "answer": ["red", "no", "yes", "red"]})


def _gqa_like(calls: list[int]):
    """GQA's process_docs in small: every image decoded, each question given its image."""
    def process_docs(dataset):
        calls.append(1)
        images = {k: Image.new("RGB", (8, 8), c) for k, c in COLOURS.items()}
        return dataset.map(lambda doc: {"image": images[doc["imageId"]]})
    return process_docs


def test_documents_are_mapped_once_and_read_back_equal(tmp_path):
    import datasets

    calls: list[int] = []
    docs = _questions(datasets)
    first = cached_process_docs("gqa", _gqa_like(calls), tmp_path, metadata={"version": 0.0})(docs)
    # a later job builds its own wrapper (a new task object): the mapping is read, not recomputed
    again = cached_process_docs("gqa", _gqa_like(calls), tmp_path, metadata={"version": 0.0})(docs)
    assert len(calls) == 1
    fresh = _gqa_like([])(docs)
    for got in (first, again):
        assert got["question"] == fresh["question"] and got["imageId"] == fresh["imageId"]
        for a, b in zip(got["image"], fresh["image"]):
            assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))
    entries = list((tmp_path / "lmms_docs").iterdir())
    assert [e.name.split("-")[0] for e in entries] == ["gqa"]  # one entry, no temporary folder left
    files = [f.name for f in entries[0].rglob("*") if f.is_file()]
    assert any(f.endswith(".arrow") for f in files) and (entries[0] / ".complete").is_file()
    assert not [f for f in files if f.endswith((".pkl", ".pickle"))]  # Arrow and JSON only


def test_other_documents_or_task_version_make_a_new_entry(tmp_path):
    import datasets

    calls: list[int] = []
    cached_process_docs("gqa", _gqa_like(calls), tmp_path, metadata={"version": 0.0})(_questions(datasets))
    changed = cached_process_docs("gqa", _gqa_like(calls), tmp_path, metadata={"version": 0.0})(
        _questions(datasets, first="What colour is the square?"))
    assert len(calls) == 2 and changed["question"][0] == "What colour is the square?"
    cached_process_docs("gqa", _gqa_like(calls), tmp_path, metadata={"version": 1.0})(_questions(datasets))
    assert len(calls) == 3 and len(list((tmp_path / "lmms_docs").iterdir())) == 3


UTILS = '''
from pathlib import Path
from PIL import Image

COLOURS = {"img0": (200, 30, 30), "img1": (30, 200, 30), "img2": (30, 30, 200)}


def process_docs(dataset):
    with open(Path(__file__).parent / "calls.txt", "a") as f:  # lmms-eval loads this file anew per task
        f.write("1\\n")
    images = {k: Image.new("RGB", (8, 8), c) for k, c in COLOURS.items()}
    return dataset.map(lambda doc: {"image": images[doc["imageId"]]})


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]
'''


@pytest.fixture
def tiny_gqa_task(tmp_path, monkeypatch) -> Path:
    """A local lmms-eval task folder: the questions saved to disk, a process_docs that logs its calls."""
    import datasets

    data = tmp_path / "data"
    datasets.DatasetDict({"test": _questions(datasets)}).save_to_disk(str(data))
    folder = tmp_path / "task"
    folder.mkdir()
    (folder / "utils.py").write_text(UTILS)
    (folder / "tiny_gqa.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_gqa
        dataset_path: {data}
        dataset_kwargs:
          load_from_disk: true
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        process_docs: !function utils.process_docs
        metric_list:
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 0.0
        """))
    monkeypatch.setitem(doc_cache.CACHED_TASKS, "tiny_gqa", None)
    return folder


def test_lmms_eval_tasks_read_the_cached_documents(tiny_gqa_task, tmp_path):
    """Two jobs load the task through lmms-eval (``get_task_dict``): the mapping runs in the first only."""
    from lmms_eval.tasks import TaskManager, get_task_dict

    seen = []
    for _ in range(2):  # two jobs
        tm = TaskManager("WARNING", include_path=[str(tiny_gqa_task)], include_defaults=False)
        specs = with_cached_docs(["tiny_gqa"], leaf_task_configs(tm, ["tiny_gqa"]), tmp_path / "cache")
        docs = get_task_dict(specs, tm)["tiny_gqa"].test_docs()
        seen.append([(d["question"], np.asarray(d["image"].convert("RGB"))[0, 0].tolist()) for d in docs])
    assert (tiny_gqa_task / "calls.txt").read_text().count("1") == 1
    assert seen[0] == seen[1] and seen[0][0] == ("What colour is it?", [200, 30, 30])


def test_calibration_documents_from_the_task_use_the_cache(tiny_gqa_task, tmp_path, monkeypatch):
    """``dataset.source=lmms_task`` draws from the same cached mapping (``options.data_dir``)."""
    from types import SimpleNamespace

    from lmms_eval.tasks import TaskManager

    from topovlm.evaluation import lmms
    from topovlm.evaluation.lmms_source import load_task_documents

    monkeypatch.setattr(lmms, "task_manager", lambda names, model_name: TaskManager(
        "WARNING", include_path=[str(tiny_gqa_task)], include_defaults=False, model_name=model_name))
    ds = SimpleNamespace(options={"task": "tiny_gqa", "data_dir": str(tmp_path / "cache")})
    first, again = load_task_documents(ds, 3, seed=0), load_task_documents(ds, 3, seed=0)
    assert (tiny_gqa_task / "calls.txt").read_text().count("1") == 1
    assert [s.question for s in first] == [s.question for s in again] and len(first) == 3
    assert all(s.image is not None for s in first)
    assert [p.name.split("-")[0] for p in (tmp_path / "cache" / "lmms_docs").iterdir()] == ["tiny_gqa"]


def test_the_evaluator_gives_gqa_the_cached_mapping(tmp_path):
    """lmms-eval's real GQA task (and gqa_lite) gets the wrapper of its own process_docs; other tasks are untouched."""
    ev = LmmsEvalEvaluator(lmms_task("gqa", tmp_path, options={"tasks": ["gqa", "gqa_lite", "mme"],
                                                              "check_datasets": False}))
    _, specs, _ = ev.prepare("llava")
    by_name = {s if isinstance(s, str) else s["task"]: s for s in specs}
    assert by_name["mme"] == "mme"
    for name in ("gqa", "gqa_lite"):
        fn = by_name[name]["process_docs"]
        assert fn.__name__ == "cached_gqa_process_docs" and fn.__wrapped__.__name__ == "gqa_process_docs"
        assert Path(fn.__wrapped__.__code__.co_filename).parent.name == "gqa"  # lmms-eval's own
    # a caller's own process_docs is kept
    tm = task_manager(["gqa"], "llava_hf")
    own = {"task": "gqa", "process_docs": len}
    assert with_cached_docs([own], leaf_task_configs(tm, ["gqa"]), tmp_path) == [own]


@pytest.fixture(autouse=True)
def _offline_hub(tmp_path, monkeypatch):
    """The hub revision is read from a cache folder of the test's own (none: recorded as such)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
