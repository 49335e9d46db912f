"""One true sweep table: kill -9 at each phase of a multi-job sweep, rerun, and the table
agrees with the job dirs; identical jobs at once claim the work; two shells on one sweep."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock, Timeout

from tests.helpers import ROOT
from tests.reliability.common import env, fast, launch, log_of, rows

pytestmark = pytest.mark.slow

# shortgpt adds a statistic: a 2nd forward pass, its own (the sweep's union pass would record it in
# job 0's, and job 1 would have no pass to be killed in)
JOBS = ["scorer=tail,shortgpt,random", "sparsity=0.25", "++hydra.callbacks.guard.union_capture=false"]


def _complete(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/results.json"))


def test_kill_9_at_each_phase_then_rerun(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *fast(tmp_path, "logger=wandb", "logger.wandb.mode=offline"), *JOBS, f"hydra.sweep.dir={sweep}"]
    # (where the sweep is killed, jobs complete after that run, table rows after that run)
    phases = [
        ("load:0", 0, 0),      # loading job 0's model
        ("capture:1", 1, 1),   # job 0 done; job 1 killed inside its calibration forward pass
        ("wandb:0", 1, 1),     # job 1 killed mid-W&B-logging (an unfinished run is left)
        ("indexed:0", 2, 1),   # job 1 killed after its results.json, before the index and the table
        ("summary:0", 3, 3),   # every job done; killed while the summary is built
    ]
    for kill_at, complete, n_rows in phases:
        proc = launch(args, kill_at=kill_at)
        assert proc.returncode == -9, (kill_at, log_of(proc)[-3000:])
        assert len(_complete(sweep)) == complete, kill_at
        table = rows(sweep)
        assert len(table) == n_rows, (kill_at, table)
        assert len({r["out_dir"] for r in table}) == len(table)  # never a duplicate
        assert not list(sweep.rglob("*.tmp")) and not list((tmp_path / "cache").rglob("*.tmp")), kill_at
    final = launch(args)
    assert final.returncode == 0, log_of(final)[-3000:]
    table = rows(sweep)
    assert len(table) == 3 and all(r["status"] == "ok" for r in table)
    assert sorted(r["scorer"] for r in table) == ["random", "shortgpt", "tail"]
    assert len({r["out_dir"] for r in table}) == 3
    assert (sweep / "summary.md").is_file()
    # only complete runs are where `wandb sync <sweep>/*/wandb/offline-run-*` looks
    runs = sorted(sweep.glob("*/wandb/offline-run-*"))
    assert len(runs) == 3, runs
    for r in table:
        res = json.loads((Path(r["out_dir"]) / "results.json").read_text())
        assert Path(res["wandb"]["run_dir"]).name in {p.name for p in runs}
    assert list(sweep.glob("*/wandb/.incomplete/offline-run-*"))  # the killed job's run, set aside
    # a second full rerun changes nothing
    again = launch(args)
    assert again.returncode == 0 and len(rows(sweep)) == 3
    assert log_of(again).count("already complete") == 3
    assert len(list(sweep.glob("wandb/offline-run-*"))) == 1  # one summary run: the latest


def _wait_until_locked(lock_dir: Path, timeout: float = 120) -> Path:
    """The first process holds an identical-job claim (a lock under cache/completed)."""
    end = time.time() + timeout
    while time.time() < end:
        for path in lock_dir.glob("*.lock") if lock_dir.is_dir() else []:
            try:
                FileLock(str(path)).acquire(timeout=0).lock.release()
            except Timeout:
                return path
        time.sleep(0.05)
    raise AssertionError("the first job never claimed its work")


def test_identical_jobs_at_once_compute_once_and_two_shells_share_one_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["launch.py", "-m", *fast(tmp_path, "task.dataset.n=12"), "scorer=tail,cosine", "sparsity=0.25",
            f"hydra.sweep.dir={sweep}"]
    first = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    _wait_until_locked(tmp_path / "cache" / "completed")
    second = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    out1, err1 = first.communicate(timeout=300)
    out2, err2 = second.communicate(timeout=300)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 0, err2[-3000:]
    both = out1 + err1 + out2 + err2
    assert "waiting for identical job" in both  # the second shell waited for the first one's claim
    assert both.count("already complete") == 2  # ... and reused both results instead of computing
    table = rows(sweep)
    assert len(table) == 2 and all(r["status"] == "ok" for r in table)
    assert len([p for p in (tmp_path / "cache" / "captures").iterdir() if p.is_dir()]) == 1


def test_force_reruns_and_a_truncated_result_never_duplicate_a_row(tmp_path):
    """In-process: the same one-job sweep rerun, forced twice, and recovered from a truncated
    results.json keeps exactly one row."""
    from tests.helpers import compose
    from topovlm.runner import run_job

    ov = ["debug=smoke", "scorer=tail", "sparsity=0.25", "reference=false", f"cache_dir={tmp_path / 'cache'}"]
    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0_tail_s0.25"
    for extra in ([], ["+force=true"], ["+force=true"], []):
        run_job(compose([*ov, *extra]), job, sweep_dir=sweep)
        assert len(rows(sweep)) == 1
    text = (job / "results.json").read_text()
    (job / "results.json").write_text(text[: len(text) // 2])  # a torn copy (e.g. by hand)
    run_job(compose(ov), job, sweep_dir=sweep)
    assert len(rows(sweep)) == 1 and rows(sweep)[0]["status"] == "ok"
    assert json.loads((job / "results.json").read_text())["removed_layers"] == [8, 9, 10]


def test_summarize_lists_torn_and_hand_edited_results_as_failures_and_exits_1(tmp_path):
    """A real two-job sweep: its own summary passes the check (the metrics are recomputed from
    samples.jsonl); a torn results.json and a hand-edited accuracy are Failures, exit 1."""
    sweep = tmp_path / "sweep"
    proc = launch(["-m", *fast(tmp_path), "scorer=tail,random", "sparsity=0.25", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, log_of(proc)[-3000:]

    def summarize() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "topovlm.cli", "summarize", str(sweep), "--no-plots", "-q"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300, env=env())

    clean = summarize()
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "every job finished" in (sweep / "summary.md").read_text()
    torn, edited = _complete(sweep)
    text = (torn / "results.json").read_text()
    (torn / "results.json").write_text(text[: len(text) // 2])
    res = json.loads((edited / "results.json").read_text())
    true_acc = res["metrics"]["accuracy"]
    res["metrics"]["accuracy"] = 0.99
    (edited / "results.json").write_text(json.dumps(res))
    bad = summarize()
    assert bad.returncode == 1 and "2 job(s) failed or could not be trusted" in bad.stderr, bad.stderr[-3000:]
    failures = (sweep / "summary.md").read_text().split("## Failures", 1)[1]
    assert "every job finished" not in failures
    assert f"| {torn.name} |" in failures and "unreadable" in failures and "JSONDecodeError" in failures
    assert f"| {edited.name} |" in failures and "inconsistent" in failures
    assert f"accuracy=0.99, its {int(res['metrics']['num_samples'])} samples give {true_acc:.6g}" in failures
