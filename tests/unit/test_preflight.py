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
    (tmp_path / "ckpt" / "config.json").write_text('{"model_type": "llava"}')
    (tmp_path / "ckpt" / "model.safetensors").write_bytes((2).to_bytes(8, "little") + b"{}")  # whole, no tensors
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
    ids = lambda seed: [s.id for s in load_samples(ds, n=4, seed=seed)]  # noqa: E731 - a one-line local helper
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


# ---------------------------------------------------------------- each class of bad input, before any model loads


def _tiny_checkpoint(folder, builder="tiny_llama"):
    """A real (tiny, random) transformers checkpoint on disk."""
    from topovlm.adapters.tiny import TINY_BUILDERS, tiny_llama

    model, processor = (tiny_llama if builder == "tiny_llama" else TINY_BUILDERS[builder])(num_layers=4)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


LOCAL = ["model.device=cpu", "model.device_map=null", "model.dtype=float32"]


def test_checkpoint_model_type_must_fit_the_family(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path / "llama")
    with pytest.raises(ConfigError) as err:  # a causal LM under a VLM family
        validate(compose(["model=llava-1.5-7b", f"model.path={ckpt}", *LOCAL, "calibration=shapes"]))
    assert str(err.value) == (f"model.path='{ckpt}': config.json has model_type='llama', but model.family=llava "
                              "loads llava, llava_next; use model.family=causal_lm")
    with pytest.raises(ConfigError, match="model_type='llama', but model.family=qwen2_vl loads qwen2_vl, qwen2_5_vl"):
        validate(compose(["model=qwen2-vl-7b", f"model.path={ckpt}", *LOCAL, "calibration=shapes"]))
    validate(compose(["model=llama-2-7b", f"model.path={ckpt}", *LOCAL, "task=text_ppl", "calibration=text"]))
    (ckpt / "config.json").write_text('{"model_type": "llama",\n "hidden_size": 64,,}')
    with pytest.raises(ConfigError, match=r"config.json:2: not valid JSON"):
        validate(compose(["model=llama-2-7b", f"model.path={ckpt}", *LOCAL, "task=text_ppl", "calibration=text"]))


def test_truncated_checkpoint_is_named_in_the_preflight_and_at_load(tmp_path):
    from topovlm.adapters.loading import load_pretrained

    ckpt = _tiny_checkpoint(tmp_path / "llama")
    over = ["model=llama-2-7b", f"model.path={ckpt}", *LOCAL, "task=text_ppl", "calibration=text"]
    validate(compose(over))
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])  # a copy cut short
    with pytest.raises(ConfigError) as err:
        validate(compose(over))
    assert f"{weights}: its tensors need {len(data)} bytes, the file has {len(data) - 1000}" in str(err.value)
    with pytest.raises(ConfigError, match="model.safetensors: its tensors need") as err:  # at load, one line too
        load_pretrained("causal_lm", str(ckpt))
    assert "\n" not in str(err.value)
    weights.write_bytes(b"\x10")  # less than a header
    with pytest.raises(ConfigError, match="less than a safetensors header"):
        validate(compose(over))
    weights.unlink()
    with pytest.raises(ConfigError, match="has no weight files"):
        validate(compose(over))


def test_device_must_exist_on_this_machine():
    import torch

    with pytest.raises(ConfigError, match=r"model.device='gpu': not a device \(allowed: cpu, cuda"):
        validate(compose(["model=tiny_llava", "model.device=gpu"]))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="model.device='cuda': cuda is not available on this machine"):
            validate(compose(["model=tiny_llava", "model.device=cuda"]))
        with pytest.raises(ConfigError, match="model.device_map='cuda:0': cuda is not available"):
            validate(compose(["model=tiny_llava", "model.device_map=cuda:0"]))
    else:
        n = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=f"this machine has {n} cuda device"):
            validate(compose(["model=tiny_llava", f"model.device=cuda:{n}"]))
    if not torch.backends.mps.is_available():
        with pytest.raises(ConfigError, match="model.device='mps': mps is not available"):
            validate(compose(["model=tiny_llava", "model.device=mps"]))
    validate(compose(["model=tiny_llava", "model.device_map=auto"]))  # placement by accelerate: any machine


def _write_jsonl(folder, lines: list[str], images=range(6)):
    folder.mkdir(exist_ok=True)
    for i in images:
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / f"{i}.png")
    (folder / "calibration.jsonl").write_bytes(b"\n".join(l.encode("latin-1") if isinstance(l, str) else l
                                                           for l in lines))


def _rec(i, **kw):
    return json.dumps({"id": f"r{i}", "question": f"q{i}", "answer": "a", "image": f"{i}.png", **kw})


JSONL = ["calibration.dataset.source=jsonl", "calibration.n=2", "model=tiny_llava"]


@pytest.mark.parametrize("lines, needle", [
    ([_rec(0), _rec(1), "", '{"id": "r3", "question": "q3",, }', _rec(4)], r"calibration.jsonl:4: not valid JSON"),
    ([_rec(0), _rec(1), _rec(2).replace("q2", "caf\xe9").encode("latin-1")],
     r"calibration.jsonl:3: byte 0xe9 at column \d+ is not UTF-8"),
    ([_rec(0), _rec(1, image="missing.png")], r"calibration.jsonl:2: record id='r1': image .*missing.png not found"),
    ([_rec(0), _rec(1), _rec(0)], r"calibration.jsonl:3: id 'r0' repeats line 1"),
    ([_rec(0), json.dumps({"id": "r1", "answer": "a"})], r"calibration.jsonl:2: the record has no question"),
    ([_rec(0), "[1, 2]"], r"calibration.jsonl:2: a record is a JSON object, not list"),
    ([_rec(0), _rec(1, answer=["red", "crimson"])], r"calibration.jsonl:2: answer must be a string or a number, not list"),
    ([_rec(0), _rec(1, question=7)], r"calibration.jsonl:2: question must be a non-empty string, not 7"),
])
def test_jsonl_source_is_parsed_in_the_preflight_naming_file_and_line(tmp_path, lines, needle):
    from topovlm.data.sources import SourceError

    _write_jsonl(tmp_path / "data", lines)
    cfg = compose([*JSONL, f"calibration.dataset.path={tmp_path / 'data'}"])
    with pytest.raises(ConfigError, match=needle) as err:
        validate(cfg)
    assert str(err.value).startswith(f"calibration.dataset.path='{tmp_path / 'data'}': {tmp_path / 'data'}")
    with pytest.raises(SourceError, match=needle):  # read outside the preflight: the same line
        load_samples(cfg.calibration.dataset, n=2, seed=0)


def test_unreadable_image_is_named_with_its_line(tmp_path):
    _write_jsonl(tmp_path / "data", [_rec(0), _rec(1)])
    (tmp_path / "data" / "1.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match=r"calibration.jsonl:2: record id='r1': image .*1.png cannot be read"):
        validate(compose([*JSONL, f"calibration.dataset.path={tmp_path / 'data'}"]))


def test_text_source_is_decoded_in_the_preflight(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes("first paragraph\n\nsecond\nline caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        validate(compose(["task=text_ppl", f"task.dataset.path={text}", "model=tiny_llava"]))
    assert str(err.value) == f"task.dataset.path='{text}': {text}:4: byte 0xe9 at column 9 is not UTF-8 (re-save the file as UTF-8)"
    text.write_text("first paragraph\n\nsecond, café\n")
    validate(compose(["task=text_ppl", f"task.dataset.path={text}", "model=tiny_llava"]))


def test_a_source_smaller_than_its_n_is_a_preflight_error(tmp_path):
    _write_jsonl(tmp_path / "data", [_rec(i) for i in range(5)])
    over = ["calibration.dataset.source=jsonl", f"calibration.dataset.path={tmp_path / 'data'}", "model=tiny_llava"]
    with pytest.raises(ConfigError, match=r"calibration.n=12, but calibration.dataset.path=.* holds only 5 samples"):
        validate(compose([*over, "calibration.n=12"]))
    text = tmp_path / "t.txt"
    text.write_text("a\n\nb\n\nc")
    with pytest.raises(ConfigError, match=r"task.dataset.n=16, but task.dataset.path=.* holds only 3 samples"):
        validate(compose(["task=text_ppl", f"task.dataset.path={text}", "task.dataset.n=16", "model=tiny_llava"]))


def test_bad_inputs_of_every_class_fail_before_the_model_loads(tmp_path, no_model_load):
    """Through the job itself: each class raises ConfigError at stage validate, nothing cached."""
    from topovlm.runner import run_job

    _write_jsonl(tmp_path / "data", [_rec(0), "{broken"])
    ckpt = _tiny_checkpoint(tmp_path / "llama")
    cases = [["+sparsty=0.3"], ["task.max_new_tokens=0"], ["seed=-1"], ["efficiency.repeats=0"],
             ["model.device=nodevice"], ["calibration.dataset.source=jsonl", f"calibration.dataset.path={tmp_path / 'data'}"],
             ["model=llava-1.5-7b", f"model.path={ckpt}", *LOCAL, "calibration=shapes"]]
    for extra in cases:
        cfg = compose(tiny_overrides(tmp_path, *extra))
        with pytest.raises(ConfigError) as err:
            run_job(cfg, tmp_path / "job")
        assert err.value.topovlm_stage == "validate" and "\n" not in str(err.value), extra
    assert not (tmp_path / "cache").exists()
