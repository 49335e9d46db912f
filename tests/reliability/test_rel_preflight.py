"""Bad input fails early: every check the config alone allows runs before any model loads
(for every job of a sweep, at its start), naming the key and the allowed values; the
README's commands pass it as written."""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import CONF, ROOT, compose
from topovlm.config import ConfigError, validate

TINY = ["model=tiny_llava", "logger=none"]  # 12 decoder layers, known from the config alone


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "a_file").write_text("")
    return [
        (["sparsity=0.25", "selection.protect=[0,1,2,3,4,5,6,7,8,9,10,11]"], "protects all 12 layers: nothing can be removed"),
        (["sparsity=0.5", "selection.policy=spacing", "selection.min_gap=5"], "cannot remove 6 layers at least 5 apart"),
        (["sparsity=0.99"], "sparsity=0.99 removes k=12 of 12 layers: at least one must stay"),
        (["sparsity=0.3", "scorer=angular", "selection.protect=[0,4,8]"], "no contiguous block of 4 layers"),
        (["calibration.batch_size=0"], "calibration.batch_size=0 must be >= 1"),
        (["task.batch_size=0"], "task.batch_size=0 must be >= 1"),
        (["calibration.dataset.split=calib"], "calibration.dataset.split='calib' is not allowed; allowed values: train, calibration, test"),
        (["task.dataset.version=v9"], "task.dataset.version='v9' is not allowed; allowed values: v1"),
        ([f"cache_dir={tmp / 'a_file' / 'cache'}"], "is not a writable directory"),
        (["scorer=cosine", "scorer.name=tail"], "scorer.name='tail' does not match scorer._target_='baselines.cosine.CosineScorer'"),
        (["scorer._target_=no_such_package.Scorer"], "scorer._target_='no_such_package.Scorer' cannot be imported"),
        (["scorer=shortgpt", "scorer.tokens=image"], "scorer=shortgpt: tokens='image'; allowed: all, text, vision"),
        (["scorer=plugin", "+scorer._target_=tests.reliability.scorers.NeedsManySamples", "scorer.name=needs_many", "calibration.n=4"],
         "scorer=needs_many: calibration.n=4 < 10, the samples this scorer needs"),
    ]


def test_each_late_failure_is_now_a_config_error_naming_the_key(tmp_path):
    for extra, needle in _bad_inputs(tmp_path):
        with pytest.raises(ConfigError) as err:
            validate(compose([*TINY, *extra]))
        assert needle in str(err.value), (extra, str(err.value))


def test_scorer_config_hook_is_called_and_passes_good_configs():
    from tests.reliability.scorers import NeedsManySamples

    cfg = compose([*TINY, "scorer=plugin", "+scorer._target_=tests.reliability.scorers.NeedsManySamples", "scorer.name=needs_many",
                   "calibration.n=12"])
    validate(cfg)
    assert NeedsManySamples.checked[-1] == 12


def _readme_commands() -> list[list[str]]:
    # the README and the docs it links to
    text = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    found = re.findall(r"(?:^|`)(?:\.venv/bin/)?python launch\.py ([^`\n]+)", text, flags=re.M)
    out = []
    for args in found:
        if "..." in args or "scorer=plugin" in args or args.startswith("--"):  # placeholder, plugin, --help
            continue
        out.append(shlex.split(args, comments=True))  # as a shell reads it
    return out


def _real_checkpoint(arg: str) -> bool:
    key, _, value = arg.partition("=")
    return key == "model.path" or (key == "model" and value != "default" and not value.startswith("tiny")) \
        or (key == "experiment" and value != "default_sweep") or key == "calibration" and value == "coco_captions"


@pytest.mark.slow
def test_readme_commands_pass_the_preflight_as_written():
    """Every ``python launch.py`` command of the README: every job of its sweep composes
    and validates (what the sweep-start preflight runs), as written."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from topovlm.callbacks import preflight
    from topovlm.config import register_configs

    commands = _readme_commands()
    assert len(commands) >= 6
    has_submitit = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
    register_configs()
    total = 0
    for args in commands:
        args = [a for a in args if a != "-m"]
        if not has_submitit and any("launcher=slurm" in a for a in args):  # launcher keys only
            args = [a for a in args if not a.startswith(("hydra/launcher=", "hydra.launcher."))]
        plain = [a for a in args if "," not in a.split("=", 1)[-1]]
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            master = hydra_compose(config_name="config", overrides=plain, return_hydra_config=True)
            # values only: the README's real checkpoints and datasets are not on this machine
            n, bad = preflight(master, args, inputs=not any(_real_checkpoint(a) for a in args))
        assert n >= 1 and not bad, (args, bad)
        total += n
    assert total >= 40
