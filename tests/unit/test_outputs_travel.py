"""Outputs that travel and explain themselves: a job dir holds real files (a copy of the sweep
reads without the cache), samples.jsonl carries the question (and lmms-eval's prompt)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import compose, tiny_overrides
from topovlm.storage import link_or_copy


def test_a_copied_sweep_reads_without_the_cache_and_samples_carry_the_question(tmp_path):
    from topovlm.data.sources import load_samples
    from topovlm.runner import run_job

    sweep = tmp_path / "sweep"
    cfg = compose(tiny_overrides(tmp_path, "scorer=topo", "scorer.k=4", "sparsity=0.25"))
    run_job(cfg, sweep / "0_topo", sweep_dir=sweep)
    job = sweep / "0_topo"
    for name in ("clouds.npz", "epi.npz"):
        assert (job / name).is_file() and not (job / name).is_symlink(), name
    stored = next((tmp_path / "cache" / "scores").rglob("clouds.npz"))
    assert os.path.samefile(job / "clouds.npz", stored)  # one filesystem: a hard link, no second copy
    clouds = np.load(job / "clouds.npz")["clouds"]
    subprocess.run(["cp", "-r", str(sweep), str(tmp_path / "copy")], check=True)
    shutil.rmtree(tmp_path / "cache")
    np.testing.assert_array_equal(np.load(tmp_path / "copy" / "0_topo" / "clouds.npz")["clouds"], clouds)

    records = [json.loads(line) for line in (job / "samples.jsonl").read_text().splitlines()]
    questions = {s.id: s.question for s in load_samples(cfg.task.dataset)}
    assert records and all(r["question"] == questions[r["id"]] for r in records)
    assert "What" in records[0]["question"]


def test_link_or_copy_copies_across_filesystems(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem here")
    src = shm / f"topovlm-test-{os.getpid()}.bin"
    src.write_bytes(b"abc")
    try:
        assert link_or_copy(src, tmp_path / "x.bin") == "copy"
        assert (tmp_path / "x.bin").read_bytes() == b"abc" and not os.path.samefile(src, tmp_path / "x.bin")
    finally:
        src.unlink()
    (tmp_path / "a").write_bytes(b"z")
    assert link_or_copy(tmp_path / "a", tmp_path / "b") == "hardlink"
    assert link_or_copy(tmp_path / "a", tmp_path / "b") == "hardlink"  # replaces what is there


def test_lmms_records_carry_the_question_and_the_prompt():
    from topovlm.evaluation.lmms import logged_sample_records

    logged = {"samples": {"mme": [
        {"doc_id": 0, "doc": {"question": "Is there a dog?", "category": "existence"}, "target": "Yes",
         "arguments": {"gen_args_0": {"arg_0": "<image>Is there a dog? Answer yes or no.", "arg_1": {}}},
         "filtered_resps": ["Yes"], "mme_percetion_score": {"question_id": 0}},
        {"doc_id": 1, "doc": {"question": "Is it red?"}, "target": "No",
         "arguments": [["<image>Is it red? Answer yes or no.", {"max_new_tokens": 4}]], "filtered_resps": ["No"]},
    ]}}
    recs = logged_sample_records(logged, {"mme": ["mme_percetion_score"]}, prefix=False)
    assert [r["question"] for r in recs] == ["Is there a dog?", "Is it red?"]
    assert [r["prompt"] for r in recs] == ["<image>Is there a dog? Answer yes or no.", "<image>Is it red? Answer yes or no."]
