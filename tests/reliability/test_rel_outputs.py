"""User data and outputs are never lost or silently wrong: malformed barcodes are rejected
with their line, an export never overwrites a user's files unasked and follows the umask,
Ctrl-C leaves the summary of what finished, and a resumed job whose source moved is said."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.reliability.common import env, fast, launch, log_of, rows
from topovlm.cli import main

# --------------------------------------------------------------------------- malformed barcodes

GOOD = "dimension,birth,death\n0,0,inf\n1,0,inf\n1,2,5\n1,3,inf\n1,3,4\n"


@pytest.mark.parametrize("row, why", [
    ("1,5,3", "death 3 is before birth 5"),             # a bar that dies before it is born
    ("1,2,-inf", "death -inf is before birth 2"),
    ("1,nan,4", "birth is NaN"),
    ("1,2,nan", "death is NaN"),
    ("1,two,4", "birth 'two' is not a number"),
    ("x,2,4", "dimension 'x' is not a number"),
    ("-1,2,4", "dimension '-1' is not a non-negative integer"),
    ("1.5,2,4", "dimension '1.5' is not a non-negative integer"),
    ("1,2", "2 field(s), the header has 3"),             # a short row would have read as "never dies"
    ("1,2,4,7", "4 field(s), the header has 3"),
    ("1,inf,4", "zigzag positions are integers"),
])
def test_a_malformed_barcode_row_fails_in_one_line_naming_file_and_line(tmp_path, capsys, row, why):
    from topovlm.topo.barcodes import BarcodeError, read_barcode_csv

    path = tmp_path / "bars.csv"
    path.write_text(GOOD + row + "\n" + "1,1,2\n")
    line = GOOD.count("\n") + 1
    with pytest.raises(BarcodeError) as err:
        read_barcode_csv(path)
    assert str(err.value).startswith(f"{path}, line {line}: ") and why in str(err.value), str(err.value)
    assert main(["topo-score", str(path), "--representations", "4"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # no scores printed from a file that is not a barcode
    message = captured.err.strip()
    assert "\n" not in message and f"line {line}" in message and str(path) in message and why in message


def test_a_barcode_that_is_not_text_is_named(tmp_path, capsys):
    path = tmp_path / "bars.csv"
    path.write_bytes(GOOD.encode() + b"1,2,\xff\n")
    assert main(["topo-score", str(path)]) == 1
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and str(path) in message and "UTF-8" in message


def test_well_formed_barcodes_still_score(tmp_path, capsys):
    path = tmp_path / "bars.csv"
    path.write_text(GOOD + "\n1,2,\n")  # a blank line, and an empty death: never dies
    assert main(["topo-score", str(path), "--representations", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["representations"] == 4


# --------------------------------------------------------------------------- Ctrl-C during a sweep

INTERRUPT = """
import os, runpy, signal, sys
sys.path.insert(0, {root!r})
import topovlm.runner, topovlm.summary
owner, name = {{"load": (topovlm.runner, "load_model"), "summary": (topovlm.summary, "build_summary")}}[{where!r}]
original, calls = getattr(owner, name), [0]
def interrupting(*args, **kwargs):
    if calls[0] == {nth}:
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered to this process
    calls[0] += 1
    return original(*args, **kwargs)
setattr(owner, name, interrupting)
os.chdir({root!r})
sys.argv = ["launch.py", *{args!r}]
runpy.run_path("launch.py", run_name="__main__")
"""

SWEEP = ["scorer=tail,random", "sparsity=0.25"]


def _interrupt(tmp_path: Path, where: str, nth: int, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    sweep = tmp_path / "sweep"
    args = ["-m", *fast(tmp_path), *SWEEP, f"hydra.sweep.dir={sweep}", *extra]
    script = INTERRUPT.format(root=str(ROOT), where=where, nth=nth, args=args)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env())
    return proc, sweep


@pytest.mark.slow
def test_ctrl_c_mid_sweep_writes_the_summary_of_what_finished(tmp_path):
    proc, sweep = _interrupt(tmp_path, "load", 1)  # job 0 done; Ctrl-C while job 1 loads its model
    out = log_of(proc)
    assert proc.returncode != 0, out[-3000:]
    assert "KeyboardInterrupt" in out
    assert "sweep interrupted: writing the summary of the 1 finished job(s)" in out, out[-3000:]
    md = (sweep / "summary.md").read_text()
    assert "1 jobs from" in md and "| tail |" in md.replace("*", "")
    assert [r["status"] for r in rows(sweep)] == ["ok"]
    assert f"topovlm summarize {sweep}" in out  # and how to rebuild it
    # the rerun finishes the sweep and replaces the partial summary
    again = launch(["-m", *fast(tmp_path), *SWEEP, f"hydra.sweep.dir={sweep}"])
    assert again.returncode == 0, log_of(again)[-3000:]
    assert "2 jobs from" in (sweep / "summary.md").read_text()


@pytest.mark.slow
def test_ctrl_c_while_the_summary_is_built_or_with_it_off_says_how_to_build_it(tmp_path):
    proc, sweep = _interrupt(tmp_path, "summary", 0)
    out = log_of(proc)
    assert proc.returncode != 0 and f"no summary written; build it with `topovlm summarize {sweep}`" in out, out[-3000:]
    shutil.rmtree(sweep)
    proc, sweep = _interrupt(tmp_path, "load", 1, "hydra.callbacks.summary.enabled=false")
    out = log_of(proc)
    assert proc.returncode != 0 and f"build it with `topovlm summarize {sweep}`" in out, out[-3000:]
    assert not (sweep / "summary.md").exists()


# --------------------------------------------------------------------------- a resumed job whose source moved

@pytest.mark.slow
def test_a_resumed_job_survives_its_source_moving_and_a_copy_of_the_sweep(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    job = ["scorer=tail", "sparsity=0.25"]
    assert launch(["-m", *fast(tmp_path), *job, f"hydra.sweep.dir={first}"]).returncode == 0
    proc = launch(["-m", *fast(tmp_path), *job, f"hydra.sweep.dir={second}"])
    assert proc.returncode == 0 and "reusing its result" in log_of(proc), log_of(proc)[-3000:]
    resumed = next(second.glob("*/results.json")).parent
    # real files (hard links here: one filesystem), never links into the other sweep or the cache
    assert not [p for p in second.rglob("*") if p.is_symlink()]
    assert (resumed / "samples.jsonl").is_file()
    source = next(first.glob("*/samples.jsonl"))
    assert (resumed / "samples.jsonl").read_bytes() == source.read_bytes()
    first.rename(tmp_path / "moved")  # the source sweep moves: the resumed job is still whole
    shutil.copytree(second, tmp_path / "copied")  # and so is a copy of its sweep
    from topovlm.cli import main as cli

    for sweep in (second, tmp_path / "copied"):
        assert cli(["summarize", str(sweep), "--no-plots", "-q"]) == 0
        assert "linked outputs gone" not in (sweep / "summary.md").read_text()
        assert len(list(csv_rows(sweep / "summary.csv"))) == 1
    again = launch(["-m", *fast(tmp_path), *job, f"hydra.sweep.dir={second}"])
    assert again.returncode == 0 and "already complete" in log_of(again), log_of(again)[-3000:]


def csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_outputs_that_already_dangle_are_not_linked_again(tmp_path, caplog):
    from topovlm.results import link_outputs, missing_outputs

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "ranking.png").write_bytes(b"png")
    os.symlink("../gone/samples.jsonl", src / "samples.jsonl")  # src was itself resumed from a moved job
    assert link_outputs(src, dst) == ["ranking.png"]
    assert "samples.jsonl" in caplog.text and "gone" in caplog.text
    assert missing_outputs(dst) == [] and missing_outputs(src) == ["samples.jsonl"]
    (src / "ranking.png").unlink()  # dst holds a real file: the source's loss is not its own
    assert missing_outputs(dst, ["ranking.png"]) == [] and (dst / "ranking.png").read_bytes() == b"png"
