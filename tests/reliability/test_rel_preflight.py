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


def _bad_files(tmp: Path) -> dict[str, Path]:
    """A jsonl source with a broken 4th line, a latin-1 text file, a causal LM checkpoint."""
    from PIL import Image

    from topovlm.adapters.tiny import tiny_llama

    (tmp / "jsonl").mkdir(exist_ok=True)
    Image.new("RGB", (8, 8)).save(tmp / "jsonl" / "0.png")
    rec = '{"id": %d, "question": "q", "image": "0.png"}'
    (tmp / "jsonl" / "calibration.jsonl").write_text("\n".join([rec % 0, rec % 1, "", '{"id": 3,, }', rec % 4]))
    (tmp / "latin1.txt").write_bytes("one\n\ntwo caf\xe9\n".encode("latin-1"))
    if not (tmp / "llama" / "config.json").is_file():
        model, processor = tiny_llama(num_layers=2)
        model.save_pretrained(tmp / "llama")
        processor.save_pretrained(tmp / "llama")
    return {"jsonl": tmp / "jsonl", "text": tmp / "latin1.txt", "causal_lm": tmp / "llama"}


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    (tmp / "a_file").write_text("")
    files = _bad_files(tmp)
    local = ["model.device=cpu", "model.device_map=null", "calibration=shapes"]
    return [
        # one case per class of the bad-input matrix (docs/reliability.md)
        (["+sparsty=0.3"], "sparsty is not a config key (did you mean sparsity?"),
        (["+selection.polcy=topk"], "selection.polcy is not a config key (did you mean selection.policy?"),
        (["task.max_new_tokens=0"], "task.max_new_tokens=0 must be >= 1"),
        (["seed=-1"], "seed=-1 must be in [0, 4294967295]"),
        (["efficiency.repeats=0"], "efficiency.repeats=0 must be >= 1"),
        (["model.device=tpu9"], "model.device='tpu9': "),
        (["model=llava-1.5-7b", f"model.path={files['causal_lm']}", *local],
         "config.json has model_type='llama', but model.family=llava loads llava, llava_next"),
        (["calibration.dataset.source=jsonl", f"calibration.dataset.path={files['jsonl']}", "calibration.n=2"],
         f"{files['jsonl'] / 'calibration.jsonl'}:4: not valid JSON"),
        (["task=text_ppl", f"task.dataset.path={files['text']}"], f"{files['text']}:3: byte 0xe9 at column 8 is not UTF-8"),
        (["sparsity=0.25", "selection.protect=[0,1,2,3,4,5,6,7,8,9,10,11]"], "protects all 12 layers: nothing can be removed"),
        (["sparsity=0.5", "selection.policy=spacing", "selection.min_gap=5"], "cannot remove 6 layers at least 5 apart"),
        (["sparsity=0.99"], "sparsity=0.99 removes k=12 of 12 layers: at least one must stay"),
        (["sparsity=0.3", "scorer=angular", "selection.protect=[0,4,8]"], "no contiguous block of 4 layers"),
        (["calibration.batch_size=0"], "calibration.batch_size=0 must be >= 1"),
        (["task.batch_size=0"], "task.batch_size=0 must be >= 1"),
        (["calibration.dataset.split=calib"], "calibration.dataset.split='calib' is not allowed; allowed values: train, calibration, test"),
        (["task.dataset.version=v9"], "task.dataset.version='v9' is not allowed; allowed values: v1"),
        ([f"cache_dir={tmp / 'a_file' / 'cache'}"], "is not a writable directory"),
        (["scorer=cosine", "scorer._target_=baselines.tail.TailScorer"],
         "scorer.name='cosine' does not match scorer._target_='baselines.tail.TailScorer'"),
        (["scorer._target_=no_such_package.Scorer"], "scorer._target_='no_such_package.Scorer' cannot be imported"),
        (["scorer=shortgpt", "scorer.tokens=image"], "scorer=shortgpt: tokens='image'; allowed: all, text, vision"),
        (["scorer=plugin", "scorer._target_=tests.reliability.scorers.NeedsManySamples", "scorer.name=needs_many", "calibration.n=4"],
         "scorer=needs_many: calibration.n=4 < 10, the samples this scorer needs"),
    ]


def test_each_late_failure_is_now_a_config_error_naming_the_key(tmp_path):
    for extra, needle in _bad_inputs(tmp_path):
        with pytest.raises(ConfigError) as err:
            validate(compose([*TINY, *extra]))
        assert needle in str(err.value), (extra, str(err.value))
        assert "\n" not in str(err.value), extra


@pytest.mark.slow
def test_bad_input_through_the_command_line_is_one_line_before_any_model_loads(tmp_path):
    """As a user runs it: exit 2, one stderr line naming the key or file:line, nothing cached or left."""
    from tests.reliability.common import launch

    files = _bad_files(tmp_path)
    cases = [(["+sparsty=0.3"], "config error: sparsty is not a config key (did you mean sparsity?"),
             (["task.max_new_tokens=0"], "config error: task.max_new_tokens=0 must be >= 1"),
             (["calibration.dataset.source=jsonl", f"calibration.dataset.path={files['jsonl']}", "calibration.n=2"],
              "calibration.jsonl:4: not valid JSON"),
             (["model.device=tpu9"], "config error: model.device='tpu9': ")]
    for extra, needle in cases:
        run_dir = tmp_path / "run"
        proc = launch(["debug=tiny", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}", *extra])
        lines = [line for line in proc.stderr.splitlines() if line.strip() and "warn" not in line.lower()]
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], (extra, proc.stderr[-2000:])
        assert not run_dir.exists() and not (tmp_path / "cache").exists(), extra


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
        # placeholders, plugins, --help, and the README's example scorer (its files are written by
        # tests/unit/test_readme_scorer.py, which runs that command in a copy of the repository)
        if "..." in args or "scorer=plugin" in args or "scorer=norm_growth" in args or args.startswith("--"):
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
