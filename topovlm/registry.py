"""One registry class for everything the harness looks up by name.

A :class:`Registry` maps names to objects (classes, functions): entries are registered
with a decorator when their module is imported, declared lazily as ``"module:attr"`` strings
(imported on first use), or come from an entry-point group of installed packages. A registry
may name packages it ``scan``s: the first lookup imports every module in them, so a class
with the decorator in one of those packages is registered with no list kept anywhere else
(timm's ``list_models`` works the same way).
An unknown name raises a ``KeyError`` that lists the known ones. It behaves as a read-only
mapping: ``name in REG``, ``REG[name]``, ``sorted(REG)``.

The registries: :data:`SCORERS` (here; it scans ``baselines/`` and the project's own scorer
modules), ``topovlm.token_stats.STATISTICS``,
``topovlm.evaluation.EVALUATORS``, ``topovlm.adapters.families.ADAPTERS``,
``topovlm.data.sources.SOURCES``. A package outside this repository adds a scorer with::

    [project.entry-points."topovlm.scorers"]
    my_scorer = "my_package.module:MyScorer"
"""
from __future__ import annotations

import fnmatch
import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Mapping, Generic[T]):
    """Named objects of one kind (``what``), optionally subclasses of ``base``."""

    def __init__(self, what: str, base: type | None = None, lazy: dict[str, str] | None = None,
                 entry_point_group: str | None = None,
                 on_register: Callable[[str, Any], None] | None = None, scan: tuple[str, ...] = ()) -> None:
        self.what = what
        self.base = base
        self.entry_point_group = entry_point_group
        self._on_register = on_register
        self._objects: dict[str, T] = {}
        self._lazy: dict[str, str] = dict(lazy or {})
        self._entry_points_loaded = entry_point_group is None
        self.scan = tuple(scan)  # packages (or modules) imported on the first lookup
        self._scanned = not self.scan

    # ------------------------------------------------------------------ registering
    def register(self, name: str, obj: T | None = None) -> Any:
        """``@REG.register("name")`` on a class or function, or ``REG.register("name", obj)``."""

        def add(value: T) -> T:
            if self.base is not None and not (isinstance(value, type) and issubclass(value, self.base)):
                raise TypeError(f"{self.what} {name!r} must be a {self.base.__name__} subclass, got {value!r}")
            existing = self._objects.get(name)
            # the same module and qualname is the same class imported again (a reload): replaced
            if existing is not None and existing is not value and _where(existing) != _where(value):
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
        if not self._scanned:
            self._scanned = True  # first: a scanned module may look a name up while it is imported
            for package in self.scan:
                module = importlib.import_module(package)
                for info in pkgutil.iter_modules(getattr(module, "__path__", []), package + "."):
                    importlib.import_module(info.name)  # a broken module fails here, loudly
        if self._entry_points_loaded or self.entry_point_group is None:
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
        """Known names matching a shell-style ``pattern`` (lazy and entry-point ones not imported)."""
        return [n for n in self if fnmatch.fnmatch(n, pattern)]

    def module_of(self, name: str) -> str:
        if name in self._lazy:
            return self._lazy[name].partition(":")[0]
        return getattr(self[name], "__module__", "?")

    def reset_entry_points(self) -> None:
        """Read the entry points again (tests that install a plugin package)."""
        self._entry_points_loaded = self.entry_point_group is None


def parameters(obj: Any) -> dict[str, Any]:
    """Constructor (or function) parameters and their defaults (``...`` when required)."""
    target = getattr(obj, "__init__") if isinstance(obj, type) else getattr(obj, "fn", obj)
    out = {}
    for name, p in inspect.signature(target).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out[name] = ... if p.default is p.empty else p.default
    return out


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


# ---------------------------------------------------------------- scorers


def _name_scorer(name: str, cls: Any) -> None:
    cls.name = name


def _scorer_base() -> type:
    from topovlm.api import LayerScorer

    return LayerScorer


#: every module of ``baselines/`` and the project's own scorer modules register by being imported:
#: a new scorer in ``baselines/`` needs no entry anywhere else
SCORER_PACKAGES = ("baselines", "topovlm.topo.scorer", "topovlm.oracle")

SCORERS: Registry = Registry("scorer", entry_point_group="topovlm.scorers", on_register=_name_scorer,
                             scan=SCORER_PACKAGES)
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
