"""A package outside this repository adds a scorer through the ``topovlm.scorers`` entry points."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import ROOT, tiny_overrides
from topovlm import registry

PLUGIN = textwrap.dedent(
    """
    import numpy as np
    from topovlm.api import LayerScorer, ScoreResult

    class MiddleFirst(LayerScorer):
        \"\"\"Removes the layers nearest the middle first.\"\"\"
        def __init__(self, power: float = 1.0):
            self.power = power

        def score(self, capture, ctx):
            n = capture.num_layers
            s = -np.abs(np.arange(n) - (n - 1) / 2) ** self.power
            return ScoreResult(scores=s, redundancy=s)
    """
)


def _install_plugin(site: Path) -> None:
    """What `pip install` of a package declaring the entry point leaves on sys.path."""
    (site / "middle_scorer.py").write_text(PLUGIN)
    dist = site / "middle_scorer-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: middle-scorer\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[topovlm.scorers]\nmiddle = middle_scorer:MiddleFirst\n")


def test_entry_point_scorer_is_found(tmp_path, monkeypatch):
    _install_plugin(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.reset_for_tests()
    try:
        cls = registry.get_scorer_class("middle")
        assert cls.name == "middle" and "middle" in registry.available_scorers()
        assert "cosine" in registry.available_scorers()  # built-ins still there
        from topovlm.config import scorer_config

        # the plugin's defaults are recorded: a run that sets power and one that does not agree
        assert scorer_config({"name": "middle"}) == {"name": "middle", "power": 1.0}
    finally:
        registry.SCORERS._objects.pop("middle", None)
        registry.SCORERS._lazy.pop("middle", None)
        registry.reset_for_tests()


@pytest.mark.slow
def test_plugin_scorer_runs_from_the_command_line(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "launch.py", *tiny_overrides(tmp_path), "scorer=plugin", "scorer.name=middle",
         "scorer.power=2", "sparsity=0.25", "model.tiny.num_layers=8", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((run_dir / "results.json").read_text())
    assert res["scorer"] == "middle" and res["removed_layers"] == [3, 4]
    assert res["config"]["scorer"] == {"name": "middle", "power": 2}  # its parameters, as for a built-in
    np.testing.assert_allclose(res["scores"][3], -0.25)
