"""conf/: every option of every group composes and validates, and no YAML repeats a default.

Defaults live in the typed schema (topovlm/config.py); a group file sets only what differs
from the config it is applied on, and conf/config.yaml holds the defaults list and the
hydra section. Scorer defaults live in their constructors (tests/unit/test_registry.py checks
that each scorer YAML lists them unchanged).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig, ListConfig, OmegaConf

from tests.helpers import CONF, compose
from topovlm.config import RunConfig, validate

#: groups whose files are merged onto a node of the schema (``model: ...`` -> RunConfig.model)
SCHEMA_GROUPS = ("calibration", "model", "task", "logger")
#: groups whose files are global (``# @package _global_``): applied after every other group
GLOBAL_GROUPS = ("experiment", "debug")
_ABSENT = object()


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def _groups() -> list[str]:
    return sorted(str(p.parent.relative_to(CONF)) for p in CONF.rglob("*.yaml") if p.parent != CONF)


def _leaves(node: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def _value_at(cfg: DictConfig, key: str) -> object:
    """The unresolved value at dotted ``key``; _ABSENT when the key is not there or is ???."""
    parent, _, last = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or last not in node or OmegaConf.is_missing(node, last):
        return _ABSENT
    value = node._get_node(last)
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=False)
    return value._value()


def _body(path: Path) -> dict:
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}
    data.pop("defaults", None)
    data.pop("hydra", None)
    return data


def _defaults(path: Path) -> list:
    return list(OmegaConf.to_container(OmegaConf.load(path)).get("defaults") or [])


def _base(group: str, path: Path) -> DictConfig:
    """What ``path``'s values are applied on: its schema node plus the same-group files its
    defaults list includes before ``_self_`` (e.g. task/_lmms.yaml)."""
    base = OmegaConf.structured(RunConfig)[group]
    for entry in _defaults(path):
        if entry == "_self_":
            break
        if isinstance(entry, str):
            include = CONF / group / f"{entry}.yaml"
            base = OmegaConf.merge(base, _base(group, include), _body(include))
    return base


def _duplicates(values: dict, base: DictConfig) -> list[str]:
    return [f"{key}: {value!r}" for key, value in _leaves(values) if _value_at(base, key) == value]


GROUP_FILES = [(g, p) for g in SCHEMA_GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, path", GROUP_FILES, ids=[f"{g}/{p.stem}" for g, p in GROUP_FILES])
def test_a_group_file_sets_no_value_it_would_get_anyway(group: str, path: Path):
    dups = _duplicates(_body(path), _base(group, path))
    assert not dups, f"{group}/{path.name} repeats defaults of topovlm/config.py (or its base file): {dups}"


def test_config_yaml_holds_no_defaults():
    body = _body(CONF / "config.yaml")
    assert not body, f"conf/config.yaml sets {sorted(body)}: defaults belong in topovlm/config.py (RunConfig)"


GLOBAL_FILES = [(g, o) for g in GLOBAL_GROUPS for o in _options(g)]


@pytest.mark.parametrize("group, name", GLOBAL_FILES, ids=[f"{g}/{o}" for g, o in GLOBAL_FILES])
def test_a_global_preset_sets_no_value_it_would_get_anyway(group: str, name: str):
    path = CONF / group / f"{name}.yaml"
    picked = [f"{k.removeprefix('override /')}={v}" for d in _defaults(path) if isinstance(d, dict) for k, v in d.items()]
    dups = _duplicates(_body(path), compose(picked))
    assert not dups, f"{group}/{name}.yaml repeats what {picked or 'the defaults'} already set: {dups}"


def test_the_duplicate_check_finds_a_repeated_default(tmp_path):
    """The check above can fail: a repeated schema default, and one of the base file, are found."""
    (tmp_path / "x.yaml").write_text("batch_size: 16\nlimit: 3\nmax_new_tokens: 1024\n")
    assert _duplicates(_body(tmp_path / "x.yaml"), _base("task", tmp_path / "x.yaml")) == ["batch_size: 16"]
    base = _base("task", CONF / "task" / "gqa.yaml")  # schema + _lmms
    assert _duplicates({"max_new_tokens": 1024, "options": {"index": "fast", "tasks": ["x"]}}, base) == \
        ["max_new_tokens: 1024", "options.index: 'fast'"]


def test_every_group_of_conf_is_covered():
    assert set(_groups()) == {*SCHEMA_GROUPS, *GLOBAL_GROUPS, "scorer", "hydra/launcher"}


#: options that need a partner option to compose into a job that validates
PARTNERS = {"calibration=task_holdout": ["task=pope", "task.limit=8"], "scorer=plugin": ["scorer.name=cosine"]}
OPTIONS = [f"{g}={o}" for g in (*SCHEMA_GROUPS, "scorer", *GLOBAL_GROUPS) for o in _options(g)]


@pytest.mark.parametrize("option", OPTIONS)
def test_every_option_composes_and_validates(option: str, tmp_path):
    cfg = compose([option, *PARTNERS.get(option, []), f"cache_dir={tmp_path}"])
    group, _, name = option.partition("=")
    if group in SCHEMA_GROUPS or group == "scorer":
        assert _value_at(cfg, group) is not _ABSENT
    validate(cfg, inputs=False)  # values only: the 7B checkpoints and their datasets are not here
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("name", _options("hydra/launcher"))
def test_every_launcher_preset_composes_and_names_an_importable_launcher(name: str):
    import hydra.utils
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.plugins import Plugins
    from hydra.plugins.launcher import Launcher

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", [f"hydra/launcher={name}"], return_hydra_config=True)
    Plugins.instance()  # registers the installed launcher plugins' modules
    cls = hydra.utils.get_class(cfg.hydra.launcher._target_)
    assert issubclass(cls, Launcher)


def test_debug_tiny_is_a_fast_job_and_the_command_line_wins():
    cfg = compose(["debug=tiny"])
    assert (cfg.model.source, cfg.model.name) == ("tiny", "tiny-llava")
    assert cfg.task.dataset.n == 16 and cfg.calibration.n == 12 and not cfg.logger.wandb.enabled
    cfg = compose(["debug=tiny", "model=tiny_qwen2_vl", "logger=wandb", "calibration.n=4"])
    assert cfg.model.family == "qwen2_vl" and cfg.logger.wandb.enabled and cfg.calibration.n == 4
    # last in the defaults list: an experiment's values give way to the debug preset's
    cfg = compose(["experiment=llava15_short_lvlm_bench", "debug=tiny"])
    assert cfg.task.name == "mme" and cfg.model.source == "tiny" and cfg.calibration.n == 12
