"""Scorer registry: ``@register_scorer("name")`` plus the ``topovlm.scorers`` entry points.

Built-in scorers live in ``baselines/`` and ``topovlm/topo``; a package outside this
repository adds one by declaring, in its own pyproject::

    [project.entry-points."topovlm.scorers"]
    my_scorer = "my_package.module:MyScorer"
"""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Callable, TypeVar

from topovlm.scoring import LayerScorer

ENTRY_POINT_GROUP = "topovlm.scorers"
# modules whose import registers the built-in scorers
BUILTIN_MODULES = (
    "baselines.cosine",
    "baselines.shortgpt",
    "baselines.angular",
    "baselines.random_scorer",
    "baselines.tail",
    "baselines.short_lvlm",
    "baselines.domain_aware",
    "topovlm.topo.scorer",
)

_REGISTRY: dict[str, type[LayerScorer]] = {}
_loaded = False

S = TypeVar("S", bound=type[LayerScorer])


def register_scorer(name: str) -> Callable[[S], S]:
    """Class decorator: make a scorer available as ``scorer=<name>``."""

    def wrap(cls: S) -> S:
        if not (isinstance(cls, type) and issubclass(cls, LayerScorer)):
            raise TypeError(f"@register_scorer({name!r}) needs a LayerScorer subclass, got {cls!r}")
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"scorer name {name!r} is already registered by {existing.__module__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a scorer module not written yet must not break the others
            if err.name != module:
                raise
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in _REGISTRY:
            register_scorer(ep.name)(ep.load())


def available_scorers() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_scorer_class(name: str) -> type[LayerScorer]:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"unknown scorer {name!r}; available: {', '.join(available_scorers())}"
        ) from None


def reset_for_tests() -> None:
    """Forget entry points loaded so far (tests that install a plugin package)."""
    global _loaded
    _loaded = False
