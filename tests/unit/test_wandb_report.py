"""The W&B Report of a sweep is built offline from its jobs (wandb-workspaces), and its spec written."""
from __future__ import annotations

import json

import pytest

from tests.helpers import compose, tiny_overrides
from topovlm.cli import main
from topovlm.runner import run_job


@pytest.mark.slow
def test_report_spec_from_a_real_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for i, (scorer, s) in enumerate([("cosine", 0.25), ("random", 0.25)]):
        run_job(compose(tiny_overrides(tmp_path, f"scorer={scorer}", f"sparsity={s}")), sweep / f"{i}", group="sweep-t")
    assert main(["wandb-report", str(sweep), "--entity", "me", "--project", "p", "--offline"]) == 0
    assert "publish it with" in capsys.readouterr().out
    spec = json.loads((sweep / "wandb_report.json").read_text())
    assert spec["type"] == "Report" and spec["entity"] == "me" and spec["project"] == "p"
    grids = [b for b in spec["blocks"] if b["type"] == "PanelGrid"]
    runset = grids[0]["runsets"][0]
    assert runset["filters"] == "Metric('Group') == 'sweep-t'" and runset["groupby"] == ["run.jobType"]
    lines = [p for p in grids[0]["panels"] if p["type"] == "LinePlot"]
    assert lines[0]["x"] == "sparsity" and lines[0]["y"] == ["metrics/accuracy"] and lines[0]["groupby"] == "jobType"
    assert any(p["type"] == "ScatterPlot" and p["x"] == "efficiency/decode_speedup" for p in grids[0]["panels"])
    # the summary run's history: one line per scorer against sparsity
    curves = [p for p in grids[1]["panels"] if p["type"] == "LinePlot"]
    assert curves[0]["x"] == "sparsity"
    assert curves[0]["y"] == [f"curve/{m}/shapes/accuracy/{s}" for m in [curves[0]["y"][0].split("/")[1]]
                              for s in ("cosine", "random")]
    assert main(["wandb-report", str(tmp_path / "empty"), "--entity", "me", "--offline"]) == 1
