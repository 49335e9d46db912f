"""Everything a job reads from disk or the hub, checked before any model loads.

:func:`check_inputs` runs inside :func:`topovlm.config.validate`: a missing local model
directory, an uncached hub id that cannot be fetched, a missing data file and an lmms-eval
task whose dataset is not available locally each fail with one :class:`ConfigError`
naming the key, the id and the command that fetches it.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from topovlm.errors import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_inputs(cfg: Any) -> None:
    if cfg.model.source == "pretrained":
        check_model_path(str(cfg.model.path), cfg.model.get("revision"))
    for key in ("task.dataset", "calibration.dataset"):
        check_dataset(OmegaConf.select(cfg, key), key, cfg)
    if cfg.task.evaluator == "lmms" and (cfg.task.options or {}).get("check_datasets", True):
        check_lmms_task_datasets(cfg.task, cfg.model.family)


# ---------------------------------------------------------------- models


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cached(repo: str, repo_type: str) -> bool:
    from huggingface_hub import constants

    snap = Path(constants.HF_HUB_CACHE) / f"{repo_type}s--{repo.replace('/', '--')}" / "snapshots"
    return snap.is_dir() and any(snap.iterdir())


@lru_cache(maxsize=None)
def _hub_reachable(repo: str, repo_type: str, revision: str | None) -> str | None:
    """None when the hub answers for ``repo``; else why not (no network, gated, unknown)."""
    from huggingface_hub import HfApi

    try:
        HfApi().repo_info(repo, repo_type=repo_type, revision=revision, timeout=5)
        return None
    except Exception as err:  # noqa: BLE001 - any failure means "cannot fetch it now"
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def check_model_path(path: str, revision: str | None = None) -> None:
    local = Path(path).expanduser()
    looks_local = path.startswith(("/", ".", "~")) or local.exists() or not _HUB_ID.match(path)
    if looks_local:
        if not local.is_dir():
            raise ConfigError(f"model.path={path!r}: no such local directory (a hub id has the form org/name)")
        if not (local / "config.json").is_file():
            raise ConfigError(f"model.path={path!r}: the directory has no config.json (not a saved checkpoint)")
        return
    if _hub_cached(path, "model"):
        return
    why = "HF_HUB_OFFLINE is set" if _offline() else _hub_reachable(path, "model", revision)
    if why:
        raise ConfigError(
            f"model.path={path!r} is not in the Hugging Face cache and cannot be fetched now ({why}). "
            f"Download it first: `hf download {path}` (gated models: `hf auth login` and accept the "
            "licence on the model page), or set model.path to a local directory.")


# ---------------------------------------------------------------- datasets


def check_dataset(ds: Any, key: str, cfg: Any) -> None:
    if ds is None:
        return
    source = ds.source
    if source == "jsonl":
        if not ds.path:
            raise ConfigError(f"{key}.path must point to a folder with <split>.jsonl when {key}.source=jsonl")
        file = Path(str(ds.path)).expanduser() / f"{ds.split}.jsonl"
        if not file.is_file():
            raise ConfigError(f"{key}.path={ds.path!r}: no {file}")
    elif source == "text":
        if ds.path and not Path(str(ds.path)).expanduser().is_file():
            raise ConfigError(f"{key}.path={ds.path!r}: no such text file")
    elif source == "hf":
        _check_hf_dataset(ds, key)
    elif source == "lmms_task":
        _check_holdout(ds, key, cfg)


def _check_hf_dataset(ds: Any, key: str) -> None:
    if not ds.path:
        raise ConfigError(f"{key}.path must name a Hugging Face dataset id or a local folder when {key}.source=hf")
    path = str(ds.path)
    if Path(path).expanduser().exists():
        return
    from topovlm.evaluation.lmms import dataset_location

    where, looked = dataset_location(path, None, None)
    if where is not None:
        return
    why = "HF_HUB_OFFLINE is set" if _offline() else _hub_reachable(path, "dataset", None)
    if why:
        name = (ds.options or {}).get("name")
        name_arg = f", {name!r}" if name else ""
        raise ConfigError(
            f"{key}.path={path!r}: the dataset is not available locally (looked in: {', '.join(looked)}) and "
            f"cannot be fetched now ({why}). Pre-download it with the same HF_HOME:\n"
            f"    python -c \"import datasets; datasets.load_dataset({path!r}{name_arg}, split={ds.split!r})\"\n"
            f"(gated datasets: `hf auth login` first), or set {key}.path to a `save_to_disk` folder.")


def _check_holdout(ds: Any, key: str, cfg: Any) -> None:
    opts = ds.options or {}
    if not opts.get("task"):
        raise ConfigError(f"{key}.options.task must name the lmms-eval task to draw calibration documents from")
    evaluated = list((cfg.task.options or {}).get("tasks") or [cfg.task.name]) if cfg.task.evaluator == "lmms" else []
    if opts["task"] in evaluated and not opts.get("exclude_first"):
        raise ConfigError(
            f"{key}: calibration documents of {opts['task']!r} would overlap the evaluated ones; set task.limit "
            f"(the evaluation reads the first task.limit documents, calibration draws from the rest) "
            f"or {key}.options.exclude_first")
    if cfg.task.evaluator == "lmms" and cfg.task.limit and opts.get("exclude_first") and \
            int(opts["exclude_first"]) < int(cfg.task.limit):
        raise ConfigError(f"{key}.options.exclude_first={opts['exclude_first']} < task.limit={cfg.task.limit}: "
                          "calibration would reuse evaluated documents")
    from topovlm.evaluation.lmms import LmmsDatasetUnavailable, check_datasets, leaf_task_configs, task_manager

    try:
        name = str(opts["task"])
        spec = {"task": name, "dataset_path": str(opts["dataset_path"])} if opts.get("dataset_path") else name
        check_datasets(leaf_task_configs(task_manager([name], "llava_hf"), [spec]))
    except (LmmsDatasetUnavailable, KeyError) as err:
        raise ConfigError(f"{key}: {err}") from None


def check_lmms_task_datasets(task: Any, family: str) -> None:
    from topovlm.evaluation.lmms import LmmsDatasetUnavailable, LmmsEvalEvaluator

    try:
        LmmsEvalEvaluator(task).prepare(family)
    except (LmmsDatasetUnavailable, KeyError) as err:
        raise ConfigError(f"task={task.name}: {err}") from None
