"""What a cached number depends on: code, library versions, config values.

Every cache key (capture, ranking, reference, completed job) is a digest of an explicit
dict built from these functions, so a key can be logged next to the hit it produced:

* :func:`code_digest` hashes the source of the modules that define a class or module,
  and of the project modules they import (transitively: module level and inside
  functions, not ``if TYPE_CHECKING:`` blocks). Editing ``baselines/cosine.py``
  changes the digest of the cosine scorer, and so its ranking's key.
* :func:`library_versions` names the project and the libraries whose versions can
  change a number.

Nothing here depends on where a cache or a checkout is mounted: files are hashed by
content and named by module, never by path.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

# packages whose modules are followed when hashing code (plus the starting module's own)
PROJECT_PACKAGES = ("topovlm", "baselines")
# bookkeeping modules that never change a number
_NOT_FOLLOWED = ("topovlm.registry", "topovlm.tracking", "topovlm.results", "topovlm.identity")
# libraries whose version is part of every cache key
VERSIONED = ("topovlm", "torch", "transformers", "numpy", "scikit-learn", "scipy", "gudhi", "dionysus", "lmms-eval")
# recorded in results.json beside them: they may explain a difference but change no cached number
ALSO_RECORDED = ("hydra-core", "wandb")


def digest(obj: Any) -> str:
    """16 hex digits of the SHA-256 of ``obj`` as canonical JSON."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _installed(pkg: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


@lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    """The versions cache keys hold (``absent``: not installed)."""
    return {pkg: _installed(pkg) or "absent" for pkg in VERSIONED}


def recorded_versions() -> dict[str, str]:
    """What results.json records: Python and every installed library of both lists."""
    import platform

    found = {pkg: _installed(pkg) for pkg in (*VERSIONED, *ALSO_RECORDED)}
    return {"python": platform.python_version(), **{k: v for k, v in found.items() if v is not None}}


def _module_file(name: str) -> Path | None:
    mod = sys.modules.get(name)
    origin = getattr(mod, "__file__", None) if mod is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        return None
    return Path(origin)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    package = module if is_package else module.rpartition(".")[0]
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                yield from (a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - child.level + 1]
                    base = ".".join(p for p in [*parts, base] if p)
                yield base
                yield from (f"{base}.{a.name}" for a in child.names)  # submodules imported by name
            else:
                stack.append(child)


def _followed(name: str, roots: tuple[str, ...]) -> bool:
    return name.split(".")[0] in roots and name not in _NOT_FOLLOWED


@lru_cache(maxsize=4096)
def _parsed(path: str, mtime_ns: int, size: int, module: str) -> tuple[str, tuple[str, ...]]:
    """(sha256 of the source, the modules it imports); cached while the file is unchanged."""
    data = Path(path).read_bytes()
    tree = ast.parse(data, filename=path)
    return hashlib.sha256(data).hexdigest(), tuple(_imports(tree, module, Path(path).name == "__init__.py"))


def _stat_key(path: Path, module: str) -> tuple[str, int, int, str]:
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size, module


def _closure(start: str, roots: tuple[str, ...]) -> dict[str, Path]:
    files: dict[str, Path] = {}
    todo = [start]
    while todo:
        name = todo.pop()
        if name in files or not _followed(name, roots):
            continue
        path = _module_file(name)
        if path is None:
            continue
        files[name] = path
        todo.extend(n for n in _parsed(*_stat_key(path, name))[1] if n not in files)
    return files


def code_files(obj: Any) -> dict[str, Path]:
    """Module name -> source file of everything :func:`code_digest` hashes for ``obj``."""
    if isinstance(obj, str):  # a module name: hashed without importing it
        modules = [obj]
    elif isinstance(obj, type(sys)):
        modules = [obj.__name__]
    else:
        modules = [
            c.__module__ for c in getattr(obj, "__mro__", [type(obj)]) if c.__module__ not in ("builtins", "abc")]
    files: dict[str, Path] = {}
    for m in dict.fromkeys(modules):
        files.update(_closure(m, tuple(dict.fromkeys((m.split(".")[0], *PROJECT_PACKAGES)))))
    return files


def code_digest(*objs: Any) -> str:
    """Digest of the source of the modules defining ``objs`` (classes, instances, modules or module names)."""
    files: dict[str, Path] = {}
    for obj in objs:
        files.update(code_files(obj))
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + _parsed(*_stat_key(files[name], name))[0].encode())
    return h.hexdigest()[:16]


def samples_digest(samples: Iterable[Any]) -> str:
    """Digest of what a model sees of a sample list (ids, texts, image pixels): the data's
    identity, wherever it is stored."""
    h = hashlib.sha256()
    for s in samples:
        h.update("\0".join((s.id, s.question, s.answer, s.domain, s.category)).encode())
        if s.image is not None:
            h.update(f"{s.image.mode}{s.image.size}".encode())
            h.update(s.image.tobytes())
    return h.hexdigest()[:16]
