"""Pruned checkpoints load with transformers alone and carry provenance and a model card."""
from __future__ import annotations

import json
import os
import stat
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


# ---------------------------------------------------------------- the user's files, and the umask

def _modes(root):
    return {p.relative_to(root).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_export_into_a_non_empty_dir_refuses_before_any_work(tmp_path, capsys):
    from topovlm.results import RESULTS_FILE, JobResult, write_result

    job = tmp_path / "job"
    job.mkdir()
    write_result(job / RESULTS_FILE, JobResult(model="m", task="t", scorer="cosine", sparsity=0.25, metrics={},
                                              config={"model": {"name": "nope", "source": "nowhere"}}))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    assert main(["export", str(job), "-o", str(mine)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(mine) in err and "not empty (notes.txt)" in err and "--overwrite" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "my notes"
    (tmp_path / "file").write_text("x")
    assert main(["export", str(job), "-o", str(tmp_path / "file")]) == 1
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_export_overwrites_only_when_asked_keeps_other_files_and_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        job = tmp_path / "job"
        run_job(compose(tiny_overrides(tmp_path, "sparsity=0.25", "save_model=true")), job)
        file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
        saved = _modes(job / "pruned_model")
        assert saved["model.safetensors"] == file_mode, oct(saved["model.safetensors"])  # safetensors writes 0600
        out = tmp_path / "out"
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "config.json").write_text("{}")
        assert main(["export", str(job), "-o", str(out)]) == 1
        assert (out / "config.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
        assert main(["export", str(job), "-o", str(out), "--overwrite"]) == 0
        assert (out / "notes.txt").read_text() == "mine"  # not the export's: kept
        assert json.loads((out / "config.json").read_text())["pruning"]["sparsity"] == 0.25
        modes = _modes(out)
        assert modes["model.safetensors"] == file_mode and modes["README.md"] == file_mode
        assert modes["."] == dir_mode
        new = tmp_path / "new"
        assert main(["export", str(job), "-o", str(new)]) == 0  # a new dir: renamed into place whole
        assert {k: v for k, v in _modes(new).items() if k != "."} == {k: file_mode for k in _modes(new) if k != "."}
        assert _modes(new)["."] == dir_mode
        assert not list(tmp_path.glob(".*export-*"))  # no staging dir left behind
    finally:
        os.umask(old)


def test_model_card_names_the_project_without_a_placeholder_and_cites_inline(tmp_path):
    from topovlm.export import model_card, project_citation

    cff = tmp_path / "CITATION.cff"
    cff.write_text("cff-version: 1.2.0\ntitle: \"t\"\nauthors: [{name: \"A\"}]\nversion: 1.0\n"
                   "repository-code: \"https://example.org/topovlm\"\n")
    url, bib = project_citation(cff)
    assert url == "https://example.org/topovlm" and "url = {https://example.org/topovlm}" in bib
    job = tmp_path / "job"
    res = run_job(compose(tiny_overrides(tmp_path, "scorer=shortgpt", "sparsity=0.25")), job)
    from topovlm.results import read_result

    card = model_card(read_result(job / "results.json"))
    assert "https://github.com/)" not in card and "](https://github.com" not in card  # no placeholder link
    real_url, _ = project_citation()  # the project's own CITATION.cff: its URL if it names one
    assert (f"[topovlm]({real_url})" in card) if real_url else "Pruned with topovlm from" in card
    bibtex = card.split("```bibtex", 1)[1].split("```", 1)[0]
    assert "@software{topovlm," in bibtex and "title = {topovlm: a benchmarking harness" in bibtex
    assert "@article{men2024shortgpt," in bibtex and "Men, Xin" in bibtex  # the method's entry, not a pointer
    assert "docs/references.bib" not in card and res["scorer"] == "shortgpt"


def test_save_model_states_the_size_it_will_write_before_writing(tmp_path, caplog):
    import logging
    import re

    job = tmp_path / "job"
    with caplog.at_level(logging.INFO, logger="topovlm.export"):
        run_job(compose(tiny_overrides(tmp_path, "sparsity=0.25", "save_model=true")), job)
    said = re.search(r"save_model: writing ([\d.]+) MiB of weights \(\d+ parameters in torch\.\w+\) to (\S+)", caplog.text)
    assert said, caplog.text
    written = sum(f.stat().st_size for f in job.rglob("*.safetensors"))
    assert written > 0 and abs(float(said.group(1)) * 2**20 - written) < 0.02 * written + 2**16  # the header
