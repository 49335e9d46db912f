"""Documents of lmms-eval tasks whose ``process_docs`` rebuilds them in every job, computed
once and read back from the harness cache.

GQA's ``process_docs`` (``lmms_eval/tasks/gqa/utils.py``, also ``gqa_lite``) loads the test-dev
image set, decodes every image and maps each of the 12,578 questions to its image (8 processes),
on every task construction: once per job. :func:`cached_process_docs` wraps such a function:
the first call runs it and saves the result with ``datasets`` (``save_to_disk``: Arrow files and
JSON metadata, nothing executable) under ``<cache_dir>/lmms_docs/<task>-<key>/``, written in a hidden
folder beside it and renamed into place when complete, so a concurrent job never reads half of
it; later calls, in any process, memory-map it (``load_from_disk``).

The key is content-derived: the task, the function's module, name and source file, the
lmms-eval version, the task's ``metadata`` (its version), the input documents' content (an
Arrow digest of every row), and the hub revision of the image set when it is in the local
Hugging Face cache. Deleting the folder recomputes it.

:func:`with_cached_docs` puts the wrapper in the task specs given to lmms-eval (a task spec
``{"task": name, "process_docs": fn}`` overrides the YAML's); tasks reached through a group are
left as they are.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

log = logging.getLogger(__name__)

#: task -> the hub dataset its process_docs reads besides the task's own (the images)
CACHED_TASKS: dict[str, str | None] = {"gqa": "lmms-lab-encoder/GQA", "gqa_lite": "lmms-lab-encoder/GQA"}
#: the layout of a cache entry; a change makes new entries
FORMAT = 1


class _HashSink:
    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        self.h.update(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def content_digest(dataset: Any) -> str:
    """SHA-256 of a ``datasets.Dataset``'s rows (schema and values, as one Arrow IPC stream)."""
    import pyarrow as pa

    table = dataset.with_format("arrow")[:].combine_chunks()
    sink = _HashSink()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), table.schema) as writer:
        writer.write_table(table)
    return sink.h.hexdigest()


def hub_revision(repo: str | None) -> list[str] | None:
    """The commits the local Hugging Face cache holds refs for (``datasets--<repo>/refs/*``)."""
    if not repo:
        return None
    try:
        from huggingface_hub import constants

        refs = Path(constants.HF_HUB_CACHE) / f"datasets--{repo.replace('/', '--')}" / "refs"
        return sorted(f"{p.name}={p.read_text().strip()}" for p in refs.iterdir() if p.is_file()) or None
    except (ImportError, OSError):
        return None


def _source_digest(fn: Callable) -> str | None:
    try:
        return hashlib.sha256(Path(inspect.getsourcefile(fn) or "").read_bytes()).hexdigest()
    except (OSError, TypeError):
        return None


def _lmms_eval_version() -> str:
    try:
        from importlib.metadata import version

        return version("lmms_eval")
    except Exception:  # noqa: BLE001 - not installed or unreadable: recorded as unknown
        return "unknown"


def _publish(dataset: Any, target: Path, key: dict[str, Any]) -> None:
    """``dataset`` saved at ``target`` whole or not at all (a hidden folder renamed into place)."""
    from topovlm.evaluation.lmms_tasks import save_complete

    save_complete(dataset, target, {"num_rows": len(dataset), "key": key})


def cached_process_docs(task: str, process_docs: Callable[[Any], Any], cache_dir: str | os.PathLike,
                        metadata: Any = None, extra_source: str | None = None) -> Callable[[Any], Any]:
    """``process_docs`` computed once per content key (see the module docstring)."""
    root = Path(cache_dir) / "lmms_docs"
    fixed = {"task": task, "function": f"{getattr(process_docs, '__module__', '')}.{process_docs.__qualname__}",
             "source": _source_digest(process_docs), "lmms_eval": _lmms_eval_version(),
             "metadata": json.loads(json.dumps(metadata, sort_keys=True, default=str)),
             "extra_source": extra_source, "format": FORMAT}

    @functools.wraps(process_docs)
    def cached(dataset: Any) -> Any:
        import datasets

        from topovlm.identity import digest
        from topovlm.storage import inside, safe_name

        key = {**fixed, "extra_revision": hub_revision(extra_source), "input": content_digest(dataset)}
        target = inside(root, root / safe_name(f"{task}-{digest(key)[:16]}"))
        if (target / ".complete").exists():
            log.info("lmms-eval %s: documents read from %s", task, target)
            return datasets.load_from_disk(str(target))
        out = process_docs(dataset)
        _publish(out, target, key)
        log.info("lmms-eval %s: %d documents processed once and cached in %s", task, len(out), target)
        return datasets.load_from_disk(str(target))  # memory-mapped, as every later job reads it

    cached.__qualname__ = cached.__name__ = f"cached_{process_docs.__name__}"
    return cached


def with_cached_docs(specs: Sequence[str | dict[str, Any]], leaves: Mapping[str, Mapping[str, Any]],
                     cache_dir: str | os.PathLike) -> list[str | dict[str, Any]]:
    """``specs`` with the tasks of :data:`CACHED_TASKS` (named directly) given the cached
    ``process_docs`` of their config in ``leaves`` (:func:`topovlm.evaluation.lmms.leaf_task_configs`)."""
    out: list[str | dict[str, Any]] = []
    for spec in specs:
        name = spec if isinstance(spec, str) else spec.get("task")
        config = leaves.get(name) if isinstance(name, str) else None
        fn = (config or {}).get("process_docs")
        given = isinstance(spec, dict) and "process_docs" in spec  # the caller's own: kept
        if name in CACHED_TASKS and callable(fn) and not given:
            wrapped = cached_process_docs(name, fn, cache_dir, leaves[name].get("metadata"), CACHED_TASKS[name])
            spec = {**(spec if isinstance(spec, dict) else {"task": name}), "process_docs": wrapped}
        out.append(spec)
    return out


__all__ = ["CACHED_TASKS", "cached_process_docs", "content_digest", "with_cached_docs"]
