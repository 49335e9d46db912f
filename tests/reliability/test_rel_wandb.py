"""W&B: an unreachable server costs seconds, not minutes; a bad dir is loud; run names are
unique in a group; a resumed job has a run in the new sweep's group. (Killed jobs' runs are
set aside: test_rel_table.py.)"""
from __future__ import annotations

import json
import os
import logging
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose
from topovlm.runner import run_job
from topovlm.tracking import WandbRun, run_name


def _settings(**kw):
    return OmegaConf.create({"enabled": True, "mode": "offline", "project": "topovlm-test", "entity": None,
                             "group": None, "tags": [], "dir": None, "init_timeout": 10.0, **kw})


def test_online_without_a_server_gives_up_within_seconds_and_logs_offline(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    start = time.perf_counter()
    with WandbRun(_settings(mode="online"), name="n", group="g", job_type="t", config={}, out_dir=tmp_path) as wb:
        assert wb.run is not None and wb.mode == "offline"
        wb.log({"sparsity": 0.0, "x": 1.0})
        info = wb.info()
    assert time.perf_counter() - start < 15  # the probe gives up in 3 s; init offline takes a few more
    assert "W&B server unreachable: http://127.0.0.1:9" in caplog.text
    assert Path(info["run_dir"]).name.startswith("offline-run-") and info["notes"]


def test_an_unwritable_dir_is_loud_and_falls_back_to_the_job_dir(tmp_path, caplog):
    (tmp_path / "a_file").write_text("")
    bad = tmp_path / "a_file" / "wandb"
    caplog.set_level(logging.WARNING)
    with WandbRun(_settings(dir=str(bad)), name="n", group="g", job_type="t", config={}, out_dir=tmp_path / "job") as wb:
        info = wb.info()
    assert f"logger.wandb.dir={bad} is not writable; this run goes to {tmp_path / 'job'}" in caplog.text
    assert Path(info["run_dir"]).is_relative_to(tmp_path / "job")


def test_run_names_are_unique_in_a_group():
    names = {run_name("cosine", s, seed=seed, task=task, model="m", overrides=[f"seed={seed}", f"task={task}", "sparsity=x"],
                      job_num=i)
             for i, (s, seed, task) in enumerate((s, seed, task) for s in (0.1, 0.2) for seed in (0, 1)
                                                 for task in ("shapes", "text_ppl"))}
    assert len(names) == 8
    assert run_name("cosine", 0.1, seed=1, task="shapes", overrides=["seed=1", "task=shapes"]) == "cosine-s0.1-seed1-shapes"
    assert run_name("cosine", 0.1, seed=0, task="shapes") == "cosine-s0.1"  # nothing swept: the short name


@pytest.mark.slow
def test_a_resumed_job_has_a_run_in_the_new_sweeps_group_and_the_outputs(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        _resumed(tmp_path)
    finally:
        os.umask(old)
    # every file of both jobs, W&B's included, is readable by the group
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert files and not [p for p in files if p.stat().st_mode & 0o044 != 0o044]


def _resumed(tmp_path):
    ov = ["debug=smoke", "scorer=topo", "scorer.k=3", "sparsity=0.25", "reference=false", "logger=wandb",
          f"cache_dir={tmp_path / 'cache'}"]
    first = run_job(compose(ov), tmp_path / "sweep_a" / "0_job", sweep_dir=tmp_path / "sweep_a", group="sweep-a")
    assert first["wandb"]["group"] == "sweep-a"
    outputs = sorted(p.name for p in (tmp_path / "sweep_a" / "0_job").iterdir()
                     if p.suffix in (".npz", ".png"))
    assert "clouds.npz" in outputs
    again = run_job(compose(ov), tmp_path / "sweep_b" / "0_job", sweep_dir=tmp_path / "sweep_b", group="sweep-b")
    job_b = tmp_path / "sweep_b" / "0_job"
    assert again["resumed_from"] == str(tmp_path / "sweep_a" / "0_job")
    assert again["wandb"]["group"] == "sweep-b" and Path(again["wandb"]["run_dir"]).is_relative_to(job_b)
    # the resumed job holds every output of the job that computed it as a real file (hard-linked:
    # no extra disk on one filesystem), so the sweep dir survives cp -r / rsync and a moved source
    for name in outputs:
        assert not (job_b / name).is_symlink() and (job_b / name).is_file()
        assert os.path.samefile(job_b / name, tmp_path / "sweep_a" / "0_job" / name)
    import numpy as np

    np.testing.assert_array_equal(np.load(job_b / "clouds.npz")["clouds"], np.load(tmp_path / "sweep_a" / "0_job" / "clouds.npz")["clouds"])
    assert json.loads((tmp_path / "sweep_b" / "results.jsonl").read_text().splitlines()[0])["status"] == "ok"


def test_a_shared_wandb_dir_inside_the_sweep_keeps_the_complete_jobs_runs(tmp_path):
    """logger.wandb.dir=<sweep>/wb: that folder is no job, so its runs are not set aside."""
    from topovlm.callbacks import SweepGuard
    from topovlm.results import job_dirs

    sweep = tmp_path / "sweep"
    shared = sweep / "wb" / "wandb" / "offline-run-20260101_000000-abc"
    shared.mkdir(parents=True)
    job = sweep / "0_cosine_s0.25"
    (job / ".hydra").mkdir(parents=True)
    killed = job / "wandb" / "offline-run-20260101_000001-def"  # a job dir's own unfinished run
    killed.mkdir(parents=True)
    assert job_dirs(sweep, started=True) == [job] and job_dirs(sweep) == []  # killed: no result yet
    SweepGuard(preflight=False).on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert shared.is_dir()  # untouched
    assert not killed.exists() and (job / "wandb" / ".incomplete" / killed.name).is_dir()
