"""A sweep that talks: stage start/end lines with times, named progress bars, "[job k/N]" with
the time left, a heartbeat during long silent stages, short cache-hit lines, no .lock files."""
from __future__ import annotations

import io
import logging
import re
import time

from tests.reliability.common import launch, log_of
from topovlm import progress


def test_stage_logs_start_end_and_names_its_bars(caplog):
    caplog.set_level(logging.INFO)
    with progress.stage("[topo s=0.2] pruned eval", bar_label="pruned eval, topo s=0.2", heartbeat=None):
        inside = io.StringIO()
        list(progress.bar(range(2), "eval shapes", file=inside))
    outside = io.StringIO()
    list(progress.bar(range(2), "eval shapes", file=outside))
    assert "pruned eval, topo s=0.2: 100%" in inside.getvalue() and "eval shapes" not in inside.getvalue()
    assert "eval shapes: 100%" in outside.getvalue()  # outside a stage: the caller's default
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[topo s=0.2] pruned eval ..."
    assert re.fullmatch(r"\[topo s=0\.2\] pruned eval done in \d+\.\d s", lines[1])


def test_heartbeat_breaks_a_long_silence(caplog):
    caplog.set_level(logging.INFO)
    with progress.stage("efficiency", heartbeat=0.2):
        time.sleep(0.75)
    beats = [r.getMessage() for r in caplog.records if "still running" in r.getMessage()]
    assert len(beats) >= 2 and beats[0].startswith("efficiency: still running (")


def test_a_sweep_talks(tmp_path):
    sweep = tmp_path / "sweep"
    proc = launch(["-m", "debug=smoke", "num_threads=1", "hydra.callbacks.summary.plots=false",
                   f"cache_dir={tmp_path / 'cache'}", "scorer=cosine", "sparsity=0.25,0.5",
                   f"hydra.sweep.dir={sweep}"])
    out = log_of(proc)
    assert proc.returncode == 0, out[-3000:]
    assert re.search(r"\[job 1/2\] .*scorer=cosine sparsity=0\.25", out)
    assert re.search(r"\[job 2/2\] .*sparsity=0\.5.* \(about \d+ s left\)", out)  # once a job has finished
    for stage in ("model load", "calibration", "scoring", "reference eval", "pruned eval"):
        assert f"[cosine s=0.25] {stage} ..." in out, stage
        assert re.search(rf"\[cosine s=0\.25\] {stage} done in \d+\.\d s", out), stage
    assert "sweep summary ..." in out and re.search(r"sweep summary done in \d+\.\d s", out)
    assert "pruned eval, cosine s=0.25" in out or "eval shapes" in out  # the bar (vqa names its own)
    assert "calibration, cosine s=0.25" in out  # the capture's bar names the job
    # the second job reuses the ranking and the reference: one short line, no keys at INFO
    assert re.search(r"\[cosine s=0\.5\] reused from the cache \(.*\): ranking, reference eval", out)
    assert "keyed on" not in out and "cache hit" not in out
    assert not list(sweep.rglob("*.lock"))  # filelock's leftovers are gone at the sweep's end
