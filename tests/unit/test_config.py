"""Bad input fails early with a message naming the key and the allowed values."""
from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException

from tests.helpers import ROOT, compose, tiny_overrides
from topovlm.config import ConfigError, validate
from topovlm.config import build_scorer


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


@pytest.mark.parametrize("override, message", [
    ("+sparsty=0.3", "sparsty is not a config key (did you mean sparsity? keys of the run config: cache_dir, "),
    ("+model.nmae=x", "model.nmae is not a config key (did you mean model.name? keys of model: "),
    ("+efficiency.repeatz=1", "efficiency.repeatz is not a config key (did you mean efficiency.repeats?"),
    ("+logger.wandb.projet=x", "logger.wandb.projet is not a config key (did you mean logger.wandb.project?"),
    ("+task.dataset.spilt=test", "task.dataset.spilt is not a config key (did you mean task.dataset.split?"),
    ("+zzz=1", "zzz is not a config key (keys of the run config: "),
])
def test_keys_outside_the_schema_are_rejected_even_with_plus(override, message):
    """Hydra's ``+key=`` adds a key the job would ignore (``+sparsty=0.3``: an unpruned run recorded as a result)."""
    cfg = compose([override])  # composes: the check is the schema walk in validate
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_documented_extra_flags_and_open_nodes_pass():
    validate(compose(["+force=true"]))
    validate(compose(["model=tiny_llava", "+model.tiny.intermediate_size=96", "+task.options.foo=1",
                      "+calibration.dataset.options.bar=2"]))


@pytest.mark.parametrize("override, message", [
    ("task.max_new_tokens=0", "task.max_new_tokens=0 must be >= 1"),
    ("task.max_new_tokens=-4", "task.max_new_tokens=-4 must be >= 1"),
    ("+task.options.gen_kwargs.num_beams=0", "task.options.gen_kwargs.num_beams=0 must be >= 1"),
    ("+task.options.gen_kwargs.temperature=hot", "task.options.gen_kwargs.temperature='hot' must be a number"),
    ("+task.options.gen_kwargs='max_new_tokens=0,temperature=0'", "task.options.gen_kwargs.max_new_tokens=0 must be >= 1"),
    ("+task.options.gen_kwargs.top_p=1.5", "task.options.gen_kwargs.top_p=1.5 must be in [0, 1]"),
    ("seed=-1", "seed=-1 must be in [0, 4294967295]"),
    ("seed=4294967296", "seed=4294967296 must be in [0, 4294967295]"),
    ("calibration.seed=-2", "calibration.seed=-2 must be in [0, 4294967295]"),
    ("task.dataset.seed=-3", "task.dataset.seed=-3 must be in [0, 4294967295]"),
    ("+task.options.seeds.numpy=-1", "task.options.seeds.numpy=-1 must be in [0, 4294967295]"),
    ("efficiency.repeats=0", "efficiency.repeats=0 must be >= 1"),
    ("efficiency.warmup=-1", "efficiency.warmup=-1 must be >= 0"),
    ("efficiency.new_tokens=1", "efficiency.new_tokens=1 must be >= 2"),
    ("efficiency.prompt_words=0", "efficiency.prompt_words=0 must be >= 1"),
    ("efficiency.batch_size=0", "efficiency.batch_size=0 must be >= 1"),
])
def test_numeric_settings_out_of_range_are_config_errors(override, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(["model=tiny_llava", override]))
    assert str(err.value) == message


def test_wrong_types_fail_at_composition_naming_the_key():
    for override in ("task.max_new_tokens=abc", "seed=1.5", "efficiency.repeats=many"):
        with pytest.raises(ConfigCompositionException, match=override.split("=")[0]):
            compose([override])


def test_every_range_names_a_schema_key():
    """The range table cannot drift from the schema (a renamed key would go unchecked)."""
    from omegaconf import OmegaConf

    from topovlm.config import RANGES

    cfg = compose(["model=tiny_llava"])
    for key in RANGES:
        parent, _, leaf = key.rpartition(".")
        assert leaf in (OmegaConf.select(cfg, parent) if parent else cfg), key
