"""lmms-eval's own CLI scores checkpoints the harness writes: `--model topovlm` (the harness's
model class, registered through lmms-eval's entry points) and the stock `llava_hf`."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from topovlm.adapters.tiny import tiny_llava
from topovlm.config import DatasetConfig
from topovlm.evaluation.lmms_tasks import write_task_folder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from omegaconf import OmegaConf

    root = tmp_path_factory.mktemp("lmms_cli")
    from topovlm.adapters.families import LlavaAdapter
    from topovlm.pruning import remove_layers

    model, processor = tiny_llava(num_layers=6)
    adapter = LlavaAdapter(model, processor, name="tiny")
    remove_layers(adapter, [2, 3])  # a pruned checkpoint, as save_model=true writes it
    adapter.save_pretrained(root / "ckpt")
    tasks = write_task_folder(root / "tasks", OmegaConf.structured(DatasetConfig(n=6)), root / "cache")
    return root, tasks


def _cli(root, tasks, model, model_args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", model, "--model_args", model_args, "--tasks", "shapes_lmms",
         "--include_path", str(tasks), "--limit", "3", "--batch_size", "1", "--output_path", str(root / model)],
        capture_output=True, text=True, timeout=600, env=env)


def test_cli_runs_the_topovlm_model(setup):
    root, tasks = setup
    proc = _cli(root, tasks, "topovlm", f"pretrained={root / 'ckpt'},device=cpu,dtype=float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shapes_lmms" in proc.stdout and "accuracy" in proc.stdout


def test_cli_runs_the_pruned_checkpoint_with_stock_llava_hf(setup):
    root, tasks = setup
    proc = _cli(root, tasks, "llava_hf", f"pretrained={root / 'ckpt'},device=cpu,device_map=cpu,dtype=float32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shapes_lmms" in proc.stdout and "accuracy" in proc.stdout
