"""One Registry class serves scorers, statistics, evaluators, adapters and data sources."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.helpers import CONF, compose
from topovlm.config import build_scorer, scorer_config
from topovlm.listing import REGISTRIES, registry, rows
from topovlm.registry import SCORERS, Registry, parameters


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
def test_a_scorer_yaml_names_its_scorer_and_sets_only_what_differs_from_the_constructor(path: Path):
    data = yaml.safe_load(path.read_text())
    assert data["name"] == path.stem and "_target_" not in data  # the class says where it lives
    defaults = parameters(SCORERS[path.stem])
    for key, value in data.items():
        if key in ("name", "defaults"):
            continue
        assert key in defaults, f"{path.name}: {key} is not a parameter of {SCORERS[path.stem].__name__}"
        assert value != defaults[key], f"{path.name}: {key}={value!r} repeats the constructor's default"


@pytest.mark.parametrize("path", SCORER_YAMLS, ids=lambda p: p.stem)
def test_scorer_yaml_builds_its_registered_class(path: Path):
    """The preset, as Hydra composes it, builds the class its name is registered under, with the
    constructor's defaults where the preset sets nothing."""
    composed = compose([f"scorer={path.stem}"]).scorer
    scorer = build_scorer(composed)
    cls = SCORERS[path.stem]
    given = {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "name"}
    assert type(scorer) is cls and scorer.name == path.stem
    assert vars(scorer) == vars(cls(**given))
    # what results.json records: every constructor parameter with its effective value
    assert list(scorer_config(composed)) == ["name", *parameters(cls)]


def test_a_parameter_is_overridden_without_hydras_plus():
    cfg = compose(["scorer=topo", "scorer.k=5"])
    assert build_scorer(cfg.scorer).k == 5 and scorer_config(cfg.scorer)["k"] == 5
    assert scorer_config(compose(["scorer=plugin", "scorer.name=cosine", "scorer.pooling=text_mean"]).scorer) == \
        {"name": "cosine", "pooling": "text_mean"}


def test_a_mapping_parameter_is_overridden_key_by_key_as_a_preset_was():
    """A preset no longer lists a dict default, so an override of one of its keys merges into
    the constructor's default, as it merged into the preset's copy before."""
    h0 = build_scorer(compose(["scorer=topo_h0", "scorer.dim_weights.h1=1"]).scorer)
    assert h0.dim_weights == {"h0": 1.0, "h1": 1.0, "h2": 0.0}
    cfg = compose(["scorer=domain_aware", "scorer.domains.math=[mathvista]"]).scorer
    assert build_scorer(cfg).domains == {"math": ["mathvista"], "non_math": ["non_math"]}
    assert scorer_config(cfg)["domains"] == {"math": ["mathvista"], "non_math": ["non_math"]}


def test_the_registry_finds_scorers_by_importing_the_packages_it_scans(tmp_path, monkeypatch):
    pkg = tmp_path / "scanned_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mine.py").write_text(
        "from topovlm.api import LayerScorer\nfrom topovlm.registry import register_scorer\n\n"
        "@register_scorer('scanned_one')\nclass Mine(LayerScorer):\n    def score(self, capture, ctx):\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from topovlm.api import LayerScorer

    reg = Registry("scorer", base=LayerScorer, scan=("scanned_pkg",))
    monkeypatch.setattr("topovlm.registry.SCORERS", reg)  # the decorator registers into this one
    assert list(reg) == ["scanned_one"] and reg["scanned_one"].__module__ == "scanned_pkg.mine"


def test_a_plugin_class_named_like_a_builtin_cannot_replace_it():
    from baselines.cosine import CosineScorer

    impostor = type("CosineScorer", (CosineScorer,), {"__module__": "my_plugin.scorers"})
    with pytest.raises(ValueError, match="'cosine' is already registered by baselines.cosine.CosineScorer"):
        SCORERS.register("cosine", impostor)
    assert SCORERS["cosine"] is CosineScorer


@pytest.mark.parametrize("kind", ["evaluators", "adapters", "sources"])
def test_config_validation_uses_the_registries(kind):
    assert list(registry(kind))  # the allowed values a ConfigError lists come from here
