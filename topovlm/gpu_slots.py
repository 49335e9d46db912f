"""One worker per visible GPU: which GPUs a sweep may use, and the claim that pins a worker to one.

The ``gpus`` launcher (``hydra_plugins/topovlm_gpus``) starts one worker process per GPU. Before
its first job touches CUDA, a worker claims a free slot: a lock file per GPU in the sweep dir,
held for the worker's life, so two workers never share a GPU and a worker that dies frees its
slot (the OS drops the lock). The worker then sees only its GPU (``CUDA_VISIBLE_DEVICES``), so
``device_map: auto`` or ``fit`` load the whole model there instead of spreading it.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from filelock import FileLock, Timeout

from topovlm.errors import ConfigError

log = logging.getLogger(__name__)

# this process's claim: (lock dir, device, held lock); a worker keeps it for its whole life
_CLAIM: tuple[str, str, FileLock] | None = None


def visible_devices(devices: list | str | None = None) -> list[str]:
    """The GPUs to run on: ``devices`` when given (a list, or "0,1"), else the parent's
    ``CUDA_VISIBLE_DEVICES``, else every GPU torch counts. Empty: no GPU."""
    if devices is None:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
        if env is not None:
            devices = env
        else:
            import torch

            return [str(i) for i in range(torch.cuda.device_count())]
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    out = [str(d).strip() for d in items if str(d).strip() not in ("", "-1")]
    if len(set(out)) != len(out):
        raise ConfigError(f"hydra.launcher.devices={list(items)}: a device is listed twice")
    return out


def claim_device(devices: list[str], lock_dir: Path, poll_s: float = 0.5) -> str:
    """Pin this process to one free device of ``devices`` (kept for its life); returns it."""
    global _CLAIM
    key = str(lock_dir)
    if _CLAIM is not None:
        if _CLAIM[0] == key:
            return _CLAIM[1]
        if _cuda_initialized():  # a reused worker from an earlier sweep: CUDA is bound already
            raise RuntimeError(f"this worker is already pinned to GPU {_CLAIM[1]} by {_CLAIM[0]}")
        _CLAIM[2].release()
        _CLAIM = None
    if _cuda_initialized():
        raise RuntimeError("CUDA was initialised before the worker was pinned to a GPU")
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for device in devices:
            lock = FileLock(str(lock_dir / f"gpu{device}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            os.environ["CUDA_VISIBLE_DEVICES"] = device
            _CLAIM = (key, device, lock)
            log.info("worker %d pinned to GPU %s (CUDA_VISIBLE_DEVICES=%s)", os.getpid(), device, device)
            return device
        time.sleep(poll_s)  # more workers than GPUs (a worker restarting): wait for a slot


def _cuda_initialized() -> bool:
    import sys

    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())
