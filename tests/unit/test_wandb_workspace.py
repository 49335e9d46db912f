"""What a W&B user gets from a sweep, with real offline runs: each job's per-layer scores and
redundancy as a table and a line plot over layers, and a report spec built without --entity
whose printed sync globs cover every run it needs (the jobs' and the summary run)."""
from __future__ import annotations

import glob
import json
import re

from tests.reliability.common import launch, log_of
from topovlm.cli import main


def test_offline_sweep_logs_layer_profiles_and_the_report_names_every_sync_glob(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    proc = launch(["-m", "debug=smoke", "logger=wandb", "logger.wandb.mode=offline", "num_threads=1",
                   "hydra.callbacks.summary.plots=false", f"cache_dir={tmp_path / 'cache'}", "scorer=cosine,random",
                   "sparsity=0.25", f"hydra.sweep.dir={sweep}"], timeout=600)
    assert proc.returncode == 0, log_of(proc)[-3000:]

    # each job's run: the per-layer table (one row per layer, the removed ones marked) and its line plot
    for job in sorted(sweep.glob("*_s0.25")):
        res = json.loads((job / "results.json").read_text())
        run_dir = next((job / "wandb").glob("offline-run-*"))
        tables = [t for t in run_dir.rglob("profile_*.table.json") if not t.name.startswith("profile_plot")]
        assert tables, f"{job.name}: no layers/profile table in {run_dir}"
        table = json.loads(tables[0].read_text())
        assert table["columns"] == ["layer", "score", "redundancy", "removed"]
        assert [r[0] for r in table["data"]] == list(range(res["num_layers"]))
        assert [r[1] for r in table["data"]] == res["scores"]
        assert [r[0] for r in table["data"] if r[3]] == res["removed_layers"]
        assert list(run_dir.rglob("profile_plot_table_*.table.json")), "no line plot over layers"

    # the report spec without --entity; every glob it prints matches runs, the summary run's included
    assert main(["wandb-report", str(sweep), "--offline"]) == 0
    out = capsys.readouterr().out
    globs = re.findall(r"`wandb sync ([^`]+)`", out)
    assert f"{sweep}/*/wandb/offline-run-*" in globs and f"{sweep}/wandb/offline-run-*" in globs
    found = {p for g in globs for p in glob.glob(g)}
    assert len(found) == 3 and all(glob.glob(g) for g in globs)  # two jobs and the summary run
    spec = json.loads((sweep / "wandb_report.json").read_text())
    assert spec["type"] == "Report" and spec["entity"] == "ENTITY"
    # publishing needs an entity: said in one line, nothing built
    assert main(["wandb-report", str(sweep)]) == 2
    assert "--entity is needed" in capsys.readouterr().err
