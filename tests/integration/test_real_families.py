"""Each real architecture the presets load, as a new user meets it: a tiny random replica built
from the real config and processor classes (the embedded model's tokenizer plus the family's
special tokens), saved to disk and loaded through its family's preset like a real checkpoint."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import assert_cache_consistent, compose, make_samples
from topovlm.adapters.loading import load_adapter
from topovlm.adapters.processors import torchvision_usable
from topovlm.adapters.tiny import REPLICAS
from topovlm.capture import run_capture
from topovlm.data.types import VQASample
from topovlm.pruning import remove_layers

pytestmark = pytest.mark.integration  # the embedded model's tokenizer


@pytest.fixture(scope="module")
def embedded_tokenizer():
    from transformers import AutoTokenizer

    from topovlm.default_model import ensure_default_model

    return AutoTokenizer.from_pretrained(str(ensure_default_model()))


@pytest.fixture(scope="module", params=sorted(REPLICAS))
def checkpoint(request, embedded_tokenizer, tmp_path_factory):
    """(preset, directory of a saved replica)."""
    model, processor = REPLICAS[request.param](num_layers=6, tokenizer=embedded_tokenizer)
    if request.param.startswith("qwen"):
        model.config.text_config.max_window_layers = 4  # a per-layer field pruning must keep consistent
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return request.param, path


def _load(preset, path):
    cfg = compose([f"model={preset}", f"model.path={path}", "model.device=cpu", "model.device_map=null",
                   "model.dtype=float32", "model.attn_implementation=null"])
    return cfg, load_adapter(cfg.model)


def _samples() -> list[VQASample]:
    """Mixed image sizes: LLaVA-NeXT tiles each by its aspect ratio, Qwen keeps its resolution."""
    base = make_samples(3)
    wide = base[1].image.resize((64, 32))
    return [base[0], VQASample(base[1].id, wide, base[1].question, base[1].answer, base[1].domain), base[2]]


def _expected_image_tokens(adapter, inputs, samples) -> list[int]:
    proc = adapter.processor
    name = type(proc).__name__
    if name.startswith("Qwen"):
        merge = proc.image_processor.merge_size
        return (inputs["image_grid_thw"].prod(-1) // merge**2).tolist()
    if name == "LlavaNextProcessor":
        crop = proc.image_processor.crop_size
        drop_cls = proc.vision_feature_select_strategy == "default"
        return [proc._get_number_of_features(int(h), int(w), crop["height"], crop["width"]) - drop_cls
                for h, w in inputs["image_sizes"]]
    side = proc.image_processor.crop_size["height"] // proc.patch_size
    return [side * side + proc.num_additional_image_tokens - 1] * len(samples)


def test_preset_loads_the_checkpoint_and_records_its_protocol(checkpoint, caplog):
    preset, path = checkpoint
    with caplog.at_level(logging.INFO, logger="topovlm.adapters.processors"):
        cfg, adapter = _load(preset, path)
    proto = adapter.protocol()
    assert proto["family"] == cfg.model.family
    if preset.startswith("qwen"):
        assert proto["processor"] == ("Qwen2_5_VLProcessor" if "2.5" in preset else "Qwen2VLProcessor")
        size = adapter.processor.image_processor.size  # Qwen: pixel bounds as longest / shortest edge
        # lmms-eval's qwen2_vl resolution, from the preset, not the checkpoint's 64x64 bound
        assert (size["longest_edge"], size["shortest_edge"]) == (602112, 3136)
        assert proto["size"]["longest_edge"] == 602112
        if not torchvision_usable():
            assert proto["video"] is False and "image-only" in caplog.text


def test_capture_sees_exactly_the_inserted_image_tokens(checkpoint):
    _, adapter = _load(*checkpoint)
    samples = _samples()
    inputs = adapter.build_inputs(samples)
    counts = adapter.vision_mask(inputs["input_ids"]).sum(1).tolist()
    assert counts == _expected_image_tokens(adapter, inputs, samples)
    if type(adapter.processor).__name__ == "LlavaNextProcessor":
        assert counts[0] != counts[1]  # anyres: the wide image is tiled differently
    cap = run_capture(adapter, samples, batch_size=2)
    assert cap.meta["has_vision"] and cap.pooled["vision_mean"].shape[:2] == (adapter.num_layers + 1, 3)
    assert torch.isfinite(torch.from_numpy(cap.pooled["vision_mean"])).all()


def test_pruned_generation_save_and_reload(checkpoint, tmp_path):
    preset, path = checkpoint
    _, adapter = _load(preset, path)
    kept = remove_layers(adapter, [1, 4])
    assert kept == [0, 2, 3, 5]
    text_config = adapter.text_config()
    if preset.startswith("qwen"):
        # original layers 0-3 used full attention; of those, 0, 2, 3 remain
        assert text_config.max_window_layers == 3
        assert len(text_config.layer_types) == 4
    inputs = adapter.build_inputs(_samples())
    assert_cache_consistent(adapter, inputs)
    with torch.no_grad():
        before = adapter.model(**inputs).logits
    adapter.save_pretrained(tmp_path / "pruned")
    _, reloaded = _load(preset, tmp_path / "pruned")
    assert reloaded.num_layers == 4
    with torch.no_grad():
        after = reloaded.model(**reloaded.build_inputs(_samples())).logits
    torch.testing.assert_close(before, after)


def test_vqa_and_lmms_evaluation_run(checkpoint, tmp_path):
    from omegaconf import OmegaConf

    from topovlm.config import DatasetConfig, TaskConfig
    from topovlm.evaluation.lmms import LmmsEvalEvaluator
    from topovlm.evaluation.vqa import VQAEvaluator

    _, adapter = _load(*checkpoint)
    vqa = VQAEvaluator(OmegaConf.structured(TaskConfig(name="shapes", dataset=DatasetConfig(n=6), limit=4,
                                                       batch_size=2, max_new_tokens=3)))
    metrics = vqa.evaluate(adapter)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and len(vqa.predictions) == 4
    lmms = LmmsEvalEvaluator(OmegaConf.structured(TaskConfig(
        name="shapes_lmms", evaluator="lmms", dataset=DatasetConfig(n=6), limit=2, batch_size=1, max_new_tokens=3,
        options={"data_dir": str(tmp_path)})))
    lm_metrics = lmms.evaluate(adapter)
    assert lm_metrics["num_samples"] == 2 and 0.0 <= lm_metrics["accuracy"] <= 1.0


@pytest.mark.slow
def test_gpu_smoke_script_runs_as_is_on_a_checkpoint(checkpoint):
    """bench/gpu_smoke.py, run the way the README says, on a saved replica (CPU here)."""
    import subprocess
    import sys

    from tests.helpers import ROOT

    preset, path = checkpoint
    if preset != "llava-v1.6-vicuna-7b":
        pytest.skip("one family is enough for the script itself")
    proc = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--model", preset, "--path", str(path),
                           "--device", "cpu", "--dtype", "float32", "--scorers", "cosine,topo", "--limit", "4",
                           "--calibration-n", "20", "--no-write", "model.attn_implementation=null",
                           "reference=true"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "| cosine | pass |" in proc.stdout and "| topo | pass |" in proc.stdout
