"""Bad input fails early with a message naming the key and the allowed values."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from tests.helpers import ROOT, compose, tiny_overrides
from topovlm.config import ConfigError, validate
from topovlm.runner import build_scorer


def test_default_config_composes_and_validates():
    cfg = compose()
    assert cfg.model.source == "embedded" and cfg.task.name == "shapes" and cfg.scorer.name == "cosine"
    validate(cfg)


def test_misspelt_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        compose(["sparsty=0.1"])
    with pytest.raises(ConfigCompositionException):
        compose(["calibration.nn=4"])


@pytest.mark.parametrize(
    "override, needle",
    [
        ("sparsity=1.5", "sparsity=1.5"),
        ("selection.policy=best", "selection.policy='best' is not allowed; allowed values: auto, topk"),
        ("model.family=gpt", "model.family='gpt' is not allowed"),
        ("model.dtype=float8", "model.dtype"),
        ("task.evaluator=bleu", "task.evaluator"),
        ("logger.wandb.mode=cloud", "logger.wandb.mode"),
        ("scorer.name=nope", "scorer='nope' is not allowed; allowed values:"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose([override]))
    assert needle in str(err.value)


def test_bad_scorer_parameter_lists_the_allowed_ones():
    cfg = compose(["scorer=cosine", "+scorer.k=3"])
    with pytest.raises(ConfigError, match="its parameters are: pooling"):
        build_scorer(cfg.scorer)
    with pytest.raises(ConfigError, match="allowed"):
        build_scorer(compose(["scorer.pooling=first"]).scorer)


@pytest.mark.slow
def test_cli_rejects_bad_input_before_loading_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "launch.py", *tiny_overrides(tmp_path), "selection.policy=best", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert "selection.policy='best' is not allowed; allowed values: auto, topk, block, threshold, adaptive, spacing" in proc.stderr
    assert not run_dir.exists()
    assert not (tmp_path / "cache").exists()  # no model was loaded, nothing cached
