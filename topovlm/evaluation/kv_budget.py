"""How many rows of a generation batch fit the accelerator's memory with their KV cache.

A batch keeps every row's keys and values until its last row stops: a row that has stopped
still holds its cache, and a row that never stops grows it to ``max_new_tokens``. So each row
is counted at its worst, the batch's prompt width plus ``max_new_tokens`` tokens, and one
token of one row costs, on the device holding ``layers`` decoder layers::

    2 (keys and values) x layers x KV heads x head dim x bytes of the model's dtype

(:meth:`KVShape.bytes_per_token`; sliding-window layers are counted as full ones, an upper
bound). The rows that fit are those whose cache takes at most ``fraction`` of each device's
free memory (``torch.cuda.mem_get_info`` plus what PyTorch's allocator holds unused); the
rest of the free memory is left to the prompt pass's activations. Where not one row fits,
:class:`KVBudgetError` says so with the numbers, before anything is generated.

Only CUDA devices report free memory: on CPU (and other devices) :class:`KVBudget` leaves the
batch size as configured and says so (``applies`` False, ``reason``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

GiB = 2**30


class KVBudgetError(MemoryError):
    """Not one row of a generation fits the free accelerator memory (the message has the numbers)."""


@dataclass(frozen=True)
class KVShape:
    """What one cached token costs per decoder layer: its KV heads, head size and dtype."""

    num_kv_heads: int
    head_dim: int
    dtype_bytes: int

    @classmethod
    def from_config(cls, text_config: Any, dtype: torch.dtype) -> "KVShape":
        """From a decoder's config: ``num_key_value_heads`` (grouped-query attention; else one KV
        head per attention head) and ``head_dim`` (else ``hidden_size / num_attention_heads``)."""
        heads = int(text_config.num_attention_heads)
        kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
        head_dim = getattr(text_config, "head_dim", None) or int(text_config.hidden_size) // heads
        return cls(int(kv_heads), int(head_dim), torch.empty((), dtype=dtype).element_size())

    def bytes_per_token(self, num_layers: int) -> int:
        """Bytes of keys and values one token of one row takes over ``num_layers`` layers."""
        return 2 * num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


def rows_that_fit(shape: KVShape, layers: dict[str, int], free: dict[str, int], tokens_per_row: int,
                  fraction: float) -> int:
    """Rows whose KV cache (``tokens_per_row`` tokens each) fits ``fraction`` of every device's
    free bytes; ``layers``: decoder layers per device (the cache of a layer lives on its device)."""
    return min(int(fraction * free[d]) // (shape.bytes_per_token(n) * tokens_per_row) for d, n in layers.items())


def _free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device: the driver's free bytes plus what PyTorch's caching
    allocator has reserved but not handed out (it reuses that before asking the driver)."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free) + int(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def layers_by_device(adapter: Any) -> dict[str, int]:
    """Decoder layers per device the model's layers live on (several with ``device_map: auto``)."""
    out: dict[str, int] = {}
    for layer in adapter.decoder_layers():
        param = next(layer.parameters(), None)
        device = str(param.device) if param is not None else str(adapter.device)
        out[device] = out.get(device, 0) + 1
    return out


class KVBudget:
    """The batch-size bound of one model (see the module docstring).

    ``rows(requested, tokens_per_row, what)`` is ``requested`` where the budget does not apply,
    else the rows that fit, at most ``requested``; it raises :class:`KVBudgetError` where none does.
    """

    def __init__(self, adapter: Any, fraction: float) -> None:
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"the KV-cache fraction of free memory must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)
        self.layers = layers_by_device(adapter)
        types = {torch.device(d).type for d in self.layers}
        self.applies = types == {"cuda"}
        self.reason = "" if self.applies else (
            f"the decoder layers are on {', '.join(sorted(self.layers))}: no free-memory query there "
            "(CUDA only), the batch size stays as configured")
        self.shape = KVShape.from_config(adapter.text_config(), adapter.model.dtype)
        #: the smallest batch the budget cut a batch to, per label, and how many batches it cut
        self.chosen: dict[str, int] = {}
        self.shrunk = 0

    @property
    def bytes_per_token(self) -> int:
        return self.shape.bytes_per_token(sum(self.layers.values()))

    def free(self) -> dict[str, int]:
        return {d: _free_bytes(torch.device(d)) for d in self.layers}

    def rows(self, requested: int, tokens_per_row: int, what: str) -> int:
        if not self.applies:
            return requested
        free = self.free()
        fit = rows_that_fit(self.shape, self.layers, free, tokens_per_row, self.fraction)
        if fit < 1:
            raise KVBudgetError(self._message(tokens_per_row, free, what))
        if fit >= requested:
            return requested
        self.shrunk += 1
        if fit < self.chosen.get(what, requested):
            log.info("%s: batch of %d rows -> %d, the KV cache of %d tokens per row (%.3f MiB per token) "
                     "fitting %.0f%% of the free memory", what, requested, fit, tokens_per_row,
                     self.bytes_per_token / 2**20, 100 * self.fraction)
            self.chosen[what] = fit
        return fit

    def _message(self, tokens_per_row: int, free: dict[str, int], what: str) -> str:
        s = self.shape
        per_device = "; ".join(
            f"{d}: {n} layers x {s.bytes_per_token(n) * tokens_per_row / GiB:.2f} GiB needed, "
            f"{free[d] / GiB:.2f} GiB free x {self.fraction:g} = {self.fraction * free[d] / GiB:.2f} GiB usable"
            for d, n in self.layers.items())
        return (f"{what}: one row's KV cache does not fit the free accelerator memory: {tokens_per_row} tokens "
                f"(prompt + max_new_tokens) x {self.bytes_per_token} bytes per token (2 x "
                f"{sum(self.layers.values())} layers x {s.num_kv_heads} KV heads x head dim {s.head_dim} x "
                f"{s.dtype_bytes} bytes) = {tokens_per_row * self.bytes_per_token / GiB:.2f} GiB ({per_device}). "
                "Lower the generation length (task.max_new_tokens_cap, task.options.gen_kwargs), raise "
                "task.options.kv_cache_fraction, or use a device with more memory.")

    def record(self) -> dict[str, Any]:
        """What results.json records (protocol ``kv_budget``)."""
        if not self.applies:
            return {"applied": False, "reason": self.reason}
        s = self.shape
        return {"applied": True, "fraction": self.fraction, "bytes_per_token": self.bytes_per_token,
                "layers_by_device": dict(self.layers), "num_kv_heads": s.num_kv_heads, "head_dim": s.head_dim,
                "dtype_bytes": s.dtype_bytes, "batch_size": dict(self.chosen), "batches_shrunk": self.shrunk}
