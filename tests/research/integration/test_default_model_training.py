"""The training script end to end on the real language model (a few steps), and its grounding
targets on the real tokenizer: research/default_model/train_default_model.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from tests.helpers import ROOT
from topovlm.default_model import build as dm_build
from topovlm.default_model import smollm2


def test_training_script_runs(tmp_path, model_dir):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "research" / "default_model" / "train_default_model.py"), "--out", str(out),
           "--train-size", "40", "--val-size", "8", "--aux-steps", "3", "--aux-batch", "8",
           "--lm-steps", "2", "--lm-batch", "2", "--eval-every", "2", "--threads", "1",
           "--where-questions", "6", "--ground-heads", "0,2", "--ground-layer", "4", "--ground-position"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_file(str(out / "vision.safetensors"))
    assert any(k.startswith("vision_tower.") for k in state)
    assert any(k.startswith("lora.") for k in state)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["lm_steps_done"] == 2
    # the exact command and every validation point, so a committed meta.json needs no hand edits
    assert meta["command"] == "python research/default_model/train_default_model.py " + " ".join(cmd[2:])
    assert [p["step"] for p in meta["val_history"]][-1] == 2 and "overall" in meta["val_history"][0]
    assert meta["recipe"]["ground_heads"] == [0, 2] and "grounding: layer 4 heads [0, 2]" in proc.stdout
    # the produced weights load into the model
    lm_dir = smollm2.ensure_language_model()
    model, _ = dm_build.build_model(lm_dir, out / "vision.safetensors")
    assert len(model.model.language_model.layers) == 30

    # a continuation with relation targets and no steps exports exactly what it started from,
    # also from continuation.pt (checkpoint.pt without the optimizer's state, in float16)
    assert (out / "continuation.pt").stat().st_size < (out / "checkpoint.pt").stat().st_size / 2
    out2 = tmp_path / "continued"
    cmd2 = [sys.executable, str(ROOT / "research" / "default_model" / "train_default_model.py"), "--out", str(out2),
            "--train-size", "40", "--val-size", "8", "--aux-steps", "0", "--lm-steps", "0",
            "--threads", "1", "--relation-targets", "--init-from", str(out / "continuation.pt")]
    proc = subprocess.run(cmd2, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state2 = load_file(str(out2 / "vision.safetensors"))
    assert state2.keys() == state.keys()
    # float16 rounds B and B * scale differently only below its normal range (tiny adapters)
    assert all(torch.allclose(state2[k].float(), state[k].float(), rtol=1e-3, atol=1e-7) for k in state)
    assert all(torch.equal(state2[k], state[k]) for k in state if not k.endswith(".B"))
    meta2 = json.loads((out2 / "meta.json").read_text())
    assert meta2["init_from"]["recipe"] == meta["recipe"] and meta2["recipe"]["relation_targets"]


def test_grounding_pairs_point_from_each_named_object_to_its_own_visual_token(loaded):
    """The training script's attention targets, on the real tokenizer and chat template: the query
    is the last token of the object's name in the prompt, the key that object's image token."""
    from tests.research.test_default_model_training import _train_script
    from topovlm.data import shapes

    train = _train_script()
    model, processor = loaded
    records = shapes.generate_records("train", 60, seed=3)
    where = train.where_questions(records, 10, seed=4)
    samples = [r.sample for r in records] + [q for _, q in where]
    scenes = [r.scene for r in records] + [records[k].scene for k, _ in where]
    tokd = train.Tokenized(processor, samples)
    pairs = train.grounding_pairs(processor, samples, scenes, tokd)
    tok = processor.tokenizer
    seen = 0
    for s, scene, ids, n_answer, ps in zip(samples, scenes, tokd.ids, tokd.n_target, pairs):
        if s.category not in train.GROUNDED_CATEGORIES:
            assert ps == []
            continue
        named = train.named_objects(s.question, scene)
        assert len(ps) == len(named) == (2 if s.category == "spatial" else 1)
        first_image = ids.index(model.config.image_token_id)
        for (q, k, token), o in zip(ps, named):
            assert tok.decode(ids[q]).strip() == o.shape  # the name's last word
            assert tok.decode(ids[q - 1]).strip() == o.colour
            assert k - first_image == token == dm_build.visual_token_index(o.row, o.col, shapes.CELL)
            assert first_image + 16 <= q < len(ids) - n_answer  # in the question, not the answer
            seen += 1
    assert seen >= 20
