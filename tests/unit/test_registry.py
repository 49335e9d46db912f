"""One Registry class serves scorers, statistics, evaluators, adapters and data sources."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import CONF, compose
from topovlm.config import build_scorer
from topovlm.listing import REGISTRIES, parameters, registry, rows
from topovlm.registry import SCORERS, Registry


def test_registry_lazy_entries_base_class_and_unknown_names():
    from collections import OrderedDict

    reg = Registry("thing", base=dict, lazy={"lazy": "collections:OrderedDict"})
    assert list(reg) == ["lazy"] and "lazy" in reg  # listed without importing

    @reg.register("eager")
    class Eager(dict):
        pass

    assert reg["eager"] is Eager and reg["lazy"] is OrderedDict and sorted(reg) == ["eager", "lazy"]
    with pytest.raises(KeyError, match="unknown thing 'nope'; known: eager, lazy"):
        reg["nope"]
    with pytest.raises(TypeError, match="must be a dict subclass"):
        reg.register("bad", object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("eager", OrderedDict)


def test_a_missing_builtin_module_fails_loudly():
    reg = Registry("thing", lazy={"gone": "topovlm.no_such_module:X"})
    assert "gone" in reg
    with pytest.raises(ModuleNotFoundError):
        reg["gone"]


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_lists_its_entries(kind):
    items = rows(kind)
    assert items and all(r["name"] and r["module"] for r in items)
    if kind == "scorers":
        names = {r["name"] for r in items}
        assert {"topo", "cosine", "shortgpt", "angular", "short_lvlm", "domain_aware", "random", "tail",
                "knn_overlap", "cka", "topo_h0"} <= names
        assert all("default_policy" in r for r in items)
    if kind == "statistics":
        assert {"token_cos", "tis_cos"} <= {r["name"] for r in items}


def test_cli_lists_scorers_with_their_parameters(capsys):
    from topovlm.cli import main

    assert main(["list", "scorers", "short*"]) == 0
    out = capsys.readouterr().out
    assert "short_lvlm" in out and "shortgpt" in out and "cosine" not in out
    assert "rank=4" in out and "default policy: topk" in out


SCORER_YAMLS = sorted(p for p in (CONF / "scorer").glob("*.yaml") if p.stem != "plugin")


@pytest.mark.parametrize("path", SCORER_YAMLS, ids=lambda p: p.stem)
def test_scorer_yaml_keys_equal_the_constructor_parameters(path: Path):
    data = yaml.safe_load(path.read_text())
    cls = SCORERS[data["name"]]
    keys = set(data) - {"name", "_target_", "defaults"}
    assert keys == set(parameters(cls)), f"{path.name}: YAML keys and {cls.__name__}.__init__ parameters differ"


@pytest.mark.parametrize("path", SCORER_YAMLS, ids=lambda p: p.stem)
def test_scorer_yaml_builds_its_registered_class_with_the_constructor_defaults(path: Path):
    """The preset, as Hydra composes it, builds the class its name is registered under, and
    sets what the constructor's defaults set (the YAML documents them; it changes none)."""

    scorer = build_scorer(compose([f"scorer={path.stem}"]).scorer)
    cls = SCORERS[path.stem]
    assert type(scorer) is cls and scorer.name == path.stem
    assert vars(scorer) == vars(cls()), f"{path.name} and {cls.__name__}'s defaults disagree"


@pytest.mark.parametrize("kind", ["evaluators", "adapters", "sources"])
def test_config_validation_uses_the_registries(kind):
    assert list(registry(kind))  # the allowed values a ConfigError lists come from here
