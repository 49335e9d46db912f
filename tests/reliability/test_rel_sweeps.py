"""Sweeps survive: a job that fails on config or at runtime is a failed row, the sweep goes
on, the summary (with its failures) is written, and the process exits non-zero."""
from __future__ import annotations

import csv

import pytest

from tests.reliability.common import fast, launch, log_of, rows

pytestmark = pytest.mark.slow


def test_failed_jobs_are_rows_the_sweep_goes_on_and_exits_1(tmp_path):
    sweep = tmp_path / "sweep"
    # 4 jobs: (all, 0.25) runs; (vision, 0.25) fails at runtime (text-only calibration has no
    # vision tokens: all-NaN block influence); both sparsity=1.5 jobs are bad config
    proc = launch(["-m", *fast(tmp_path), "scorer=shortgpt", "scorer.tokens=all,vision", "sparsity=0.25,1.5",
                   "calibration.dataset.source=text", f"hydra.sweep.dir={sweep}"])
    out = log_of(proc)
    assert proc.returncode == 1, out[-3000:]
    # the config checks of every job ran at sweep start, before the first job (and its model)
    assert "preflight: 2 of 4 jobs have a bad config" in proc.stdout
    assert proc.stdout.index("preflight") < proc.stdout.index("Launching 4 jobs")
    assert proc.stdout.count("-> sparsity=1.5 must be in [0, 1)") == 2

    table = rows(sweep)
    assert [r["status"] for r in table] == ["ok", "failed", "failed", "failed"]
    # Hydra's job order: tokens x sparsity
    assert [r.get("error_type") for r in table] == [None, "ConfigError", "SelectionError", "ConfigError"]
    assert [r.get("stage") for r in table] == [None, "validate", "select", "validate"]
    assert "scorer shortgpt gave non-finite redundancy for layers [0, 1," in table[2]["error"]
    for r in table[1:]:
        d = sweep / r["out_dir"].rsplit("/", 1)[-1]
        assert (d / "failed.json").is_file() and not (d / "results.json").exists()
    assert "3 of 4 jobs failed" in proc.stderr

    md = (sweep / "summary.md").read_text()
    assert "## Failures" in md and md.count("| ConfigError: sparsity=1.5") == 2 and "SelectionError" in md
    with open(sweep / "summary.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 1


def test_abort_on_bad_config_stops_before_anything_runs(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch(["-m", *fast(tmp_path), "scorer=tail", "sparsity=0.25,1.5", f"hydra.sweep.dir={sweep}",
                   "hydra.callbacks.guard.abort_on_bad_config=true"])
    assert proc.returncode == 2, log_of(proc)[-3000:]
    assert "config error in 1 of 2 jobs" in proc.stderr and "sparsity=1.5 must be in [0, 1)" in proc.stderr
    assert not any(p.is_dir() for p in sweep.glob("*")) if sweep.exists() else True
    assert not (tmp_path / "cache").exists()  # no model was loaded, nothing was cached


def test_a_sweep_value_that_does_not_compose_stops_it_at_the_start(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch(["-m", *fast(tmp_path), "scorer=tail,nope", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 2, log_of(proc)[-3000:]
    assert "a job of this sweep does not compose, nothing was run" in proc.stderr
    assert "scorer=nope" in proc.stderr and "Could not find 'scorer/nope'" in proc.stderr
    assert not sweep.exists() and not (tmp_path / "cache").exists()


def test_a_sweep_where_every_job_fails_still_writes_its_summary(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch(["-m", *fast(tmp_path), "scorer=tail", "sparsity=1.5,1.6", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 1, log_of(proc)[-3000:]
    assert [r["status"] for r in rows(sweep)] == ["failed", "failed"]
    md = (sweep / "summary.md").read_text()
    assert "## Failures" in md and "sparsity=1.6 must be in [0, 1)" in md
    assert "2 of 2 jobs failed" in proc.stderr
