"""Pruned checkpoints load with transformers alone and carry provenance and a model card."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import compose, tiny_overrides
from topovlm.cli import main
from topovlm.runner import run_job

LOAD = """
import json, sys, torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
path = sys.argv[1]
model = AutoModelForImageTextToText.from_pretrained(path).eval()
processor = AutoProcessor.from_pretrained(path)
conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the circle?"}]}]
prompt = processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
inputs = processor(text=[prompt], images=[Image.new("RGB", (32, 32), "red")], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
print(json.dumps({"layers": model.config.text_config.num_hidden_layers, "new": int(out.shape[1] - inputs["input_ids"].shape[1])}))
"""


@pytest.mark.slow
def test_export_rebuilds_a_loadable_checkpoint_with_card(tmp_path):
    job = tmp_path / "job"
    res = run_job(compose(tiny_overrides(tmp_path, "sparsity=0.25")), job)
    assert main(["export", str(job), "-o", str(tmp_path / "export")]) == 0
    out = tmp_path / "export"
    config = json.loads((out / "config.json").read_text())
    assert config["pruning"]["removed_layers"] == res["removed_layers"]
    assert config["pruning"]["method"] == "cosine" and config["pruning"]["sparsity"] == 0.25
    assert config["text_config"]["num_hidden_layers"] == len(res["kept_layers"])
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "removed layers (original indices)" in card and "95% interval" in card
    for f in out.glob("*.json"):
        assert str(tmp_path) not in f.read_text(), f"{f.name} holds a machine-local path"
    assert str(tmp_path) not in card
    proc = subprocess.run([sys.executable, "-c", LOAD, str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["layers"] == len(res["kept_layers"]) and loaded["new"] >= 1


def test_export_refuses_unfinished_jobs_and_explains_pushes(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 1
    assert "no complete results.json" in capsys.readouterr().err
    from topovlm.export import push

    (tmp_path / "x").mkdir()
    with pytest.raises(RuntimeError, match="hf upload me/pruned"):
        push(tmp_path / "x", "me/pruned")
