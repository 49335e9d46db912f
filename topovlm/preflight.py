"""Everything a job reads from disk or the hub, checked before any model loads.

:func:`check_inputs` runs inside :func:`topovlm.config.validate`: a missing local model
directory, an uncached hub id that cannot be fetched, a missing data file and an lmms-eval
task whose dataset is not available locally each fail with one :class:`ConfigError`
naming the key, the id and the command that fetches it. The files themselves are read
too: a checkpoint's config.json (its ``model_type`` against ``model.family``) and the
headers of its weight files (a truncated or corrupt ``model.safetensors``), every line
of a jsonl source and the text of a text source (decoding and parsing errors name the
file and line). Last, ``model.device`` must exist on this machine.
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from topovlm.adapters.weights_check import weights_problem
from topovlm.errors import ConfigError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def check_inputs(cfg: Any) -> None:
    if cfg.model.source == "pretrained":
        check_model_path(str(cfg.model.path), cfg.model.get("revision"))
        check_checkpoint(cfg.model)
    for key in ("task.dataset", "calibration.dataset"):
        check_dataset(OmegaConf.select(cfg, key), key, cfg)
    if cfg.task.evaluator == "lmms" and (cfg.task.options or {}).get("check_datasets", True):
        check_lmms_task_datasets(cfg.task, cfg.model.family)
    if cfg.task.get("protocol") == "lmms_exact":  # lmms-eval's own model class for the family must import
        check_exact_protocol(cfg.model.family)
    check_device(cfg.model)


def check_exact_protocol(family: str) -> None:
    from topovlm.evaluation.protocol import ProtocolError, check_available

    try:
        check_available(family)
    except ProtocolError as err:
        raise ConfigError(str(err)) from None


# ---------------------------------------------------------------- devices

# device_map values that place the model by itself (accelerate; fit: one GPU when it fits, see adapters.loading)
_PLACEMENTS = ("auto", "fit", "balanced", "balanced_low_0", "sequential")


def device_problem(name: str) -> str | None:
    """Why ``name`` (a torch device string) cannot be used on this machine; None when it can."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return "not a device (allowed: cpu, cuda, cuda:N, mps, or another torch device type)"
    if device.type in ("cpu", "meta"):
        return None
    if device.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:  # cuda, xpu, ...: torch.<type>.is_available() / device_count()
        backend = getattr(torch, device.type, None)
        available = bool(backend is not None and getattr(backend, "is_available", lambda: False)())
        count = int(getattr(backend, "device_count", lambda: 1)()) if available else 0
    if not available:
        return f"{device.type} is not available on this machine (torch {torch.__version__}); use model.device=cpu"
    if device.index is not None and device.index >= count:
        return f"this machine has {count} {device.type} device(s) (indices 0..{count - 1})"
    return None


def _runs_elsewhere() -> bool:
    """True in the process that launches a SLURM sweep (submitit): its devices say nothing
    about the compute nodes', where each job checks its own device when it starts."""
    import sys

    if os.environ.get("SLURM_JOB_ID"):
        return False  # inside a job: its own machine
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return "slurm" in str(OmegaConf.select(HydraConfig.get(), "launcher._target_", default="") or "").lower()
    except Exception:  # noqa: BLE001 - no Hydra context
        pass
    # the sweep-start preflight runs before Hydra records its config: the command line says
    return any(a.startswith("hydra/launcher=") and "slurm" in a.lower() for a in sys.argv[1:])


def check_device(model: Any) -> None:
    """``model.device`` (and a ``model.device_map`` that names a device) exist on this machine."""
    if _runs_elsewhere():
        return
    for key, value in (("model.device", model.get("device")), ("model.device_map", model.get("device_map"))):
        if value is None or (key == "model.device_map" and str(value) in _PLACEMENTS):
            continue
        why = device_problem(str(value))
        if why:
            raise ConfigError(f"{key}={value!r}: {why}")


# ---------------------------------------------------------------- checkpoint files


def checkpoint_config_file(model: Any) -> Path | None:
    """A ``pretrained`` checkpoint's config.json on disk (local folder or hub cache), None if not there."""
    path = str(model.path or "")
    local = Path(path).expanduser()
    if (local / "config.json").is_file():
        return local / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json", revision=model.get("revision"))
    except Exception:  # noqa: BLE001 - not a hub id or not cached: checked by check_model_path
        return None
    return Path(found) if isinstance(found, str) else None


def check_checkpoint(model: Any) -> None:
    """config.json parses, its ``model_type`` is one ``model.family`` loads, and its weight files are whole."""
    from topovlm.adapters.loading import family_problem

    file = checkpoint_config_file(model)
    if file is None:
        return  # a hub id fetched at load time
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"model.path={model.path!r}: {file} is not UTF-8 (corrupt config.json)") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"model.path={model.path!r}: {file}:{err.lineno}: not valid JSON ({err.msg})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"model.path={model.path!r}: {file} is not a JSON object")
    why = family_problem(str(model.family), config, trust_remote_code=bool(model.get("trust_remote_code")))
    if why:
        raise ConfigError(f"model.path={model.path!r}: {why}")
    why = weights_problem(file.parent)
    if why:
        raise ConfigError(f"model.path={model.path!r}: {why}")


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


@lru_cache(maxsize=64)
def _source_size(source: str, path: str, split: str, stamp: tuple) -> int:  # noqa: ARG001 - stamp keys the cache
    """Samples in a jsonl / text source, every line decoded and parsed (once per file version:
    a sweep's preflight checks the same file for every job)."""
    from topovlm.data.sources import read_vqa_jsonl, text_paragraphs

    return len(read_vqa_jsonl(path, split)) if source == "jsonl" else len(text_paragraphs(path))


def _stamp(file: Path) -> tuple:
    st = file.stat()
    return st.st_size, st.st_mtime_ns


def check_dataset(ds: Any, key: str, cfg: Any) -> None:
    from topovlm.data.sources import SourceError

    if ds is None:
        return
    source = ds.source
    size = None
    if source == "jsonl":
        if not ds.path:
            raise ConfigError(f"{key}.path must point to a folder with <split>.jsonl when {key}.source=jsonl")
        file = Path(str(ds.path)).expanduser() / f"{ds.split}.jsonl"
        if not file.is_file():
            raise ConfigError(f"{key}.path={ds.path!r}: no {file}")
        stamp = (*_stamp(file), file.parent.stat().st_mtime_ns)  # an image added or removed changes the folder
    elif source == "text":
        if ds.path and not Path(str(ds.path)).expanduser().is_file():
            raise ConfigError(f"{key}.path={ds.path!r}: no such text file")
        file = Path(str(ds.path)).expanduser() if ds.path else None
        stamp = _stamp(file) if file else ()
    if source in ("jsonl", "text") and (source == "jsonl" or file is not None):
        try:
            size = _source_size(source, str(file.parent if source == "jsonl" else file), str(ds.split), stamp)
        except (SourceError, OSError) as err:
            raise ConfigError(f"{key}.path={ds.path!r}: {err}") from None
        wanted = [(f"{key}.n", ds.n)] + ([("calibration.n", cfg.calibration.n)] if key == "calibration.dataset" else [])
        for name, n in wanted:
            if n is not None and int(n) > size:
                raise ConfigError(f"{name}={n}, but {key}.path={ds.path!r} holds only {size} samples; "
                                  f"set {name}<={size} or use a larger source")
    if source == "hf":
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
