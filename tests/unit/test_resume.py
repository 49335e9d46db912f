"""Resume: complete jobs are found by their resolved config (not their directory), killed jobs
leave nothing that looks complete, +force=true recomputes; seeds are sweepable."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT, compose
from topovlm.runner import _completed, job_key, run_job


def overrides(tmp: Path, *extra: str) -> list[str]:
    return ["debug=smoke", "task.dataset.n=8", "scorer=tail", "sparsity=0.25", "reference=false",
            f"cache_dir={tmp / 'cache'}", *extra]


@pytest.fixture
def eval_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts real evaluations (a skipped job evaluates nothing)."""
    from topovlm.evaluation.vqa import VQAEvaluator

    calls: list[int] = []
    original = VQAEvaluator.evaluate

    def counting(self, adapter):
        calls.append(1)
        return original(self, adapter)

    monkeypatch.setattr(VQAEvaluator, "evaluate", counting)
    return calls


@pytest.mark.slow
def test_complete_job_is_skipped_by_config_not_directory_and_force_recomputes(tmp_path: Path,
                                                                              eval_calls: list[int]):
    cfg = compose(overrides(tmp_path))
    first = run_job(cfg, tmp_path / "a")
    assert len(eval_calls) == 1
    index = tmp_path / "cache" / "completed" / f"{first['job_key']}.json"
    assert json.loads(index.read_text())["results"] == str(tmp_path / "a" / "results.json")

    # the same config in another directory (another sweep), logged differently: not recomputed
    again = run_job(compose(overrides(tmp_path, "logger=wandb", "logger.wandb.mode=disabled")), tmp_path / "b")
    assert len(eval_calls) == 1
    copy = json.loads((tmp_path / "b" / "results.json").read_text())
    assert copy["resumed_from"] == str(tmp_path / "a") and copy["out_dir"] == str(tmp_path / "b")
    assert copy["metrics"] == first["metrics"] == again["metrics"]
    assert copy["removed_layers"] == first["removed_layers"] == [8, 9, 10]

    # the same config in its own directory: nothing rewritten, no duplicate table row
    before = (tmp_path / "a" / "results.json").read_text()
    run_job(cfg, tmp_path / "a")
    assert len(eval_calls) == 1
    assert (tmp_path / "a" / "results.json").read_text() == before
    assert len((tmp_path / "a" / "results.jsonl").read_text().splitlines()) == 1

    # the cache location is not part of a job's identity; with a fresh cache the sweep dir's own
    # complete result is found (and indexed)
    moved = compose(overrides(tmp_path, f"cache_dir={tmp_path / 'fresh_cache'}"))
    assert job_key(moved) == job_key(cfg)
    run_job(moved, tmp_path / "a")
    assert len(eval_calls) == 1
    assert (tmp_path / "fresh_cache" / "completed" / f"{job_key(cfg)}.json").is_file()

    # +force=true (or ++force=true) recomputes; force is not part of the identity either
    forced = compose(overrides(tmp_path, "+force=true"))
    assert job_key(forced) == job_key(compose(overrides(tmp_path, "++force=true"))) == job_key(cfg)
    res = run_job(forced, tmp_path / "b")
    assert len(eval_calls) == 2 and "resumed_from" not in res
    assert "resumed_from" not in json.loads((tmp_path / "b" / "results.json").read_text())


def test_a_failed_rerun_does_not_leave_the_previous_result_looking_complete(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    cfg = compose(overrides(tmp_path))
    run_job(cfg, tmp_path / "a")
    from topovlm.evaluation.vqa import VQAEvaluator

    def crash(self, adapter):
        raise RuntimeError("crashed mid-way")

    monkeypatch.setattr(VQAEvaluator, "evaluate", crash)
    with pytest.raises(RuntimeError, match="crashed mid-way"):
        run_job(compose(overrides(tmp_path, "+force=true")), tmp_path / "a")
    assert not (tmp_path / "a" / "results.json").exists()
    assert _completed(tmp_path / "cache", job_key(cfg), tmp_path / "a") is None


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from tests.helpers import compose
from topovlm.evaluation.vqa import VQAEvaluator
from topovlm.runner import run_job

def die(self, adapter):
    os.kill(os.getpid(), signal.SIGKILL)

VQAEvaluator.evaluate = die
run_job(compose({overrides!r}), __import__("pathlib").Path({out!r}))
"""


@pytest.mark.slow
def test_a_killed_job_leaves_nothing_that_looks_complete(tmp_path: Path):
    out = tmp_path / "job"
    out.mkdir()
    # what an earlier job with another config left in this directory (replaced only with +force=true)
    (out / "results.json").write_text(json.dumps({"job_key": "0123456789abcdef", "metrics": {"accuracy": 1.0},
                                                  "model": "x", "task": "t", "scorer": "s", "sparsity": 0.1}))
    ov = overrides(tmp_path, "+force=true")
    script = KILL_SCRIPT.format(root=str(ROOT), overrides=ov, out=str(out))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "results.json").exists()
    assert not list(out.glob(".results.*"))
    key = job_key(compose(ov))
    assert not (tmp_path / "cache" / "completed" / f"{key}.json").exists()
    assert _completed(tmp_path / "cache", key, out) is None  # the next run computes it
    from topovlm.summary import load_jobs

    assert load_jobs([tmp_path]) == []


@pytest.mark.slow
def test_rerunning_a_sweep_runs_only_the_missing_jobs_and_summarizes_seeds(tmp_path: Path):
    sweep = tmp_path / "sweep"
    base = [sys.executable, "launch.py", "-m", "model=tiny_llava", "task=text_ppl", "task.limit=2", "scorer=random",
            "sparsity=0.25", "calibration.n=6", "calibration.batch_size=6", "logger=none",
            "++efficiency.enabled=false", f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"]
    first = subprocess.run([*base, "seed=0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    done = sweep / "0_random_s0.25" / "results.json"
    stamp = done.stat().st_mtime_ns
    seed0 = json.loads(done.read_text())

    second = subprocess.run([*base, "seed=0,1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert log.count("already complete") == 1
    assert done.stat().st_mtime_ns == stamp  # job 0 (seed 0) was not recomputed
    seed1 = json.loads((sweep / "1_random_s0.25" / "results.json").read_text())
    assert (seed0["seed"], seed1["seed"]) == (0, 1)
    assert seed0["removed_layers"] != seed1["removed_layers"]  # the random scorer follows the seed
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["seed"] for r in rows) == ["0", "1"]
    assert "(n=2)" in (sweep / "summary.md").read_text()  # mean ± std over the two seeds
    assert len((sweep / "results.jsonl").read_text().splitlines()) == 2


def test_new_embedded_weights_make_a_new_job(monkeypatch: pytest.MonkeyPatch):
    import topovlm.default_model.build as build

    cfg = compose([])  # the embedded default model
    monkeypatch.setattr(build, "weights_digest", lambda path=None: "old")
    old = job_key(cfg)
    monkeypatch.setattr(build, "weights_digest", lambda path=None: "new")
    assert job_key(cfg) != old
