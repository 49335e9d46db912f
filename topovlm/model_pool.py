"""One model load per sweep process: jobs that use the same model reuse it.

Hydra's default launcher runs every job of a multirun in one process. :data:`POOL` keeps the
last loaded adapter, keyed by the job's resolved ``model`` config; while a job runs its
pruned model, the removed layers wait on the CPU (:mod:`topovlm.pruning`: the GPUs hold the kept
layers only); when a job ends, :meth:`ModelPool.release` undoes its pruning (the original decoder
layers, each tensor back on the device it was loaded on, their cache indices and the per-layer
config fields) and checks every weight against a checksum taken
at load (:func:`weights_checksum`: every element of every parameter and buffer, not a
sample): a job that edited any weight (e.g. ``short_lvlm``'s subspace compensation, or a
plugin's ``after_pruning``) leaves a model that is dropped, so the next job loads a fresh one. Launchers that run jobs
in separate processes (joblib, SLURM) load once per job, as before. ``reuse_model=false``
switches it off.
"""
from __future__ import annotations

import gc
import hashlib
import json
import zlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)



_INT_VIEW = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}
_ROW = 1024


def _tensor_checksum(t: Any) -> bytes:
    """Every element of ``t`` enters. On the CPU: zlib's CRC-32 of its bytes (about 1 GB/s here).
    Elsewhere (a GPU): the bits read as integers and summed along the rows and the columns of a
    (n/1024, 1024) view, exact int64 sums computed on the device, so any changed element, and any
    exchange between rows or columns, changes it, and only 1/1000 of the weights leave the device."""
    import torch

    flat = t.detach().reshape(-1)
    ints = flat.view(torch.uint8) if flat.dtype == torch.bool else flat.view(getattr(torch, _INT_VIEW[flat.element_size()]))
    if flat.device.type == "cpu":
        return zlib.crc32(ints.contiguous().numpy().view(np.uint8).data).to_bytes(4, "little")
    return device_sums(ints)


def device_sums(ints: Any) -> bytes:
    """Row and column sums (int64) of a flat integer tensor viewed as (n/1024, 1024), plus the tail."""
    import torch

    whole = ints.numel() // _ROW * _ROW
    grid = ints[:whole].view(-1, _ROW)
    parts = (grid.sum(1, dtype=torch.int64), grid.sum(0, dtype=torch.int64), ints[whole:].to(torch.int64))
    return b"".join(part.cpu().numpy().tobytes() for part in parts)


def weights_checksum(model: Any) -> str:
    """A checksum of every element of every parameter and buffer (not a strided sample, as
    :func:`topovlm.capture_cache.model_fingerprint` is): whether a job left the weights as loaded.
    Measured about 0.4 s for 134M float32 parameters on one loaded CPU core."""
    import torch

    h = hashlib.sha256()
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for name, t in tensors:
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(_tensor_checksum(t))
    return h.hexdigest()[:16]


@dataclass
class _Entry:
    key: str
    adapter: Any
    snapshot: Any  # topovlm.pruning.LayerSnapshot of the model as loaded
    fingerprint: str
    in_use: bool = False
    loads: int = field(default=1)


class ModelPool:
    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self.loads = 0  # how many times a model was loaded (tests, benchmarks)
        self.reuses = 0

    @staticmethod
    def key(model_cfg: Any) -> str:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(model_cfg, resolve=True) if not isinstance(model_cfg, dict) else model_cfg
        return json.dumps(data, sort_keys=True, default=str)

    def acquire(self, model_cfg: Any, load: Callable[[Any], Any], reuse: bool = True) -> Any:
        """The adapter for ``model_cfg``: the pooled one (restored) or a fresh load."""
        key = self.key(model_cfg)
        entry = self._entry
        if reuse and entry is not None and entry.key == key and not entry.in_use:
            entry.in_use = True
            self.reuses += 1
            log.info("model reused from this process (loaded once, %d jobs so far)", self.reuses + 1)
            return entry.adapter
        self.clear()
        adapter = load(model_cfg)
        self.loads += 1
        if reuse:
            from topovlm.pruning import LayerSnapshot

            self._entry = _Entry(key=key, adapter=adapter, snapshot=LayerSnapshot.take(adapter),
                                 fingerprint=weights_checksum(adapter.model), in_use=True)
        return adapter

    def release(self, adapter: Any) -> None:
        """Undo the job's pruning; keep the model only if its weights are the loaded ones."""
        entry = self._entry
        if entry is None or entry.adapter is not adapter:
            return
        entry.in_use = False
        entry.snapshot.restore(adapter)
        adapter.model.eval()
        if weights_checksum(adapter.model) != entry.fingerprint:
            log.info("the job edited the model's weights: it is not reused (the next job loads it again)")
            self.clear()

    def clear(self) -> None:
        self._entry = None
        gc.collect()


POOL = ModelPool()
