"""One registry class for everything the harness looks up by name.

A :class:`Registry` maps names to objects (classes, functions): entries are registered
with a decorator, declared lazily as ``"module:attr"`` strings (imported on first use, so
listing names imports nothing), or come from an entry-point group of installed packages.
An unknown name raises a ``KeyError`` that lists the known ones. It behaves as a read-only
mapping: ``name in REG``, ``REG[name]``, ``sorted(REG)``.

The registries: :data:`SCORERS` (here), ``topovlm.capture.STATISTICS``,
``topovlm.evaluation.EVALUATORS``, ``topovlm.adapters.families.ADAPTERS``,
``topovlm.data.sources.SOURCES``. A package outside this repository adds a scorer with::

    [project.entry-points."topovlm.scorers"]
    my_scorer = "my_package.module:MyScorer"
"""
from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """Named objects of one kind (``what``), optionally subclasses of ``base``."""

    def __init__(self, what: str, base: type | None = None, lazy: dict[str, str] | None = None,
                 entry_point_group: str | None = None,
                 on_register: Callable[[str, Any], None] | None = None) -> None:
        self.what = what
        self.base = base
        self.entry_point_group = entry_point_group
        self._on_register = on_register
        self._objects: dict[str, T] = {}
        self._lazy: dict[str, str] = dict(lazy or {})
        self._entry_points_loaded = entry_point_group is None

    # ------------------------------------------------------------------ registering
    def register(self, name: str, obj: T | None = None) -> Any:
        """``@REG.register("name")`` on a class or function, or ``REG.register("name", obj)``."""

        def add(value: T) -> T:
            if self.base is not None and not (isinstance(value, type) and issubclass(value, self.base)):
                raise TypeError(f"{self.what} {name!r} must be a {self.base.__name__} subclass, got {value!r}")
            existing = self._objects.get(name)
            if existing is not None and existing is not value and \
                    getattr(existing, "__qualname__", None) != getattr(value, "__qualname__", None):
                raise ValueError(f"{self.what} name {name!r} is already registered by {_where(existing)}")
            if self._on_register is not None:
                self._on_register(name, value)
            self._objects[name] = value
            self._lazy.pop(name, None)
            return value

        return add if obj is None else add(obj)

    def declare(self, name: str, path: str) -> None:
        """A lazy entry: ``path`` is ``"module:attr"``, imported when ``name`` is first used."""
        if name not in self._objects:
            self._lazy[name] = path

    # ------------------------------------------------------------------ looking up
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._objects and ep.name not in self._lazy:
                self._lazy[ep.name] = ep.value.replace(" ", "")

    def get(self, name: str, default: Any = None) -> Any:  # Mapping.get, without hiding import errors
        return self[name] if name in self else default

    def __getitem__(self, name: str) -> T:
        self._load_entry_points()
        if name in self._objects:
            return self._objects[name]
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            value = getattr(importlib.import_module(module), attr)
            if name not in self._objects:  # importing it may have registered it already
                self.register(name, value)
            return self._objects[name]
        raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(self) or '(none)'}")

    def __iter__(self) -> Iterator[str]:
        self._load_entry_points()
        return iter(sorted({*self._objects, *self._lazy}))

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._objects or name in self._lazy

    def names(self, pattern: str = "*") -> list[str]:
        """Known names matching a shell-style ``pattern``, without importing anything."""
        return [n for n in self if fnmatch.fnmatch(n, pattern)]

    def module_of(self, name: str) -> str:
        if name in self._lazy:
            return self._lazy[name].partition(":")[0]
        return getattr(self[name], "__module__", "?")

    def reset_entry_points(self) -> None:
        """Read the entry points again (tests that install a plugin package)."""
        self._entry_points_loaded = self.entry_point_group is None


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# ---------------------------------------------------------------- scorers


def _name_scorer(name: str, cls: Any) -> None:
    cls.name = name


def _scorer_base() -> type:
    from topovlm.api import LayerScorer

    return LayerScorer


SCORERS: Registry = Registry("scorer", entry_point_group="topovlm.scorers", on_register=_name_scorer, lazy={
    "cosine": "baselines.cosine:CosineScorer",
    "shortgpt": "baselines.shortgpt:ShortGPTScorer",
    "angular": "baselines.angular:AngularScorer",
    "random": "baselines.random_scorer:RandomScorer",
    "tail": "baselines.tail:TailScorer",
    "short_lvlm": "baselines.short_lvlm:ShortLVLMScorer",
    "domain_aware": "baselines.domain_aware:DomainAwareScorer",
    "topo": "topovlm.topo.scorer:TopoScorer",
    "topo_llm": "topovlm.topo.scorer:TopoLLMScorer",
    "topo_h0": "baselines.topo_h0:TopoH0Scorer",
    "knn_overlap": "baselines.knn_overlap:KnnOverlapScorer",
    "cka": "baselines.cka:CKAScorer",
    "ppl": "baselines.ppl:PPLScorer",
    "sleb": "baselines.sleb:SLEBScorer",
    "oracle": "topovlm.oracle:OracleScorer",
})
SCORERS.base = _scorer_base()


def register_scorer(name: str) -> Callable[[Any], Any]:
    """Class decorator: make a scorer available as ``scorer=<name>``."""
    return SCORERS.register(name)


def available_scorers() -> list[str]:
    return list(SCORERS)


def get_scorer_class(name: str) -> Any:
    return SCORERS[name]


def reset_for_tests() -> None:
    SCORERS.reset_entry_points()
