"""Removing decoder layers so that the pruned model still caches, generates and saves correctly,
and putting them back (:class:`LayerSnapshot`, :func:`layers_removed`).

Removed layers are kept as CPU copies: :func:`remove_layers` moves every tensor of a removed
layer off its accelerator (``.to("cpu")``), so while the pruned model runs the accelerators hold
only the kept layers; whoever keeps the removed modules to put them back (the model pool's
:class:`LayerSnapshot`, taken at load) finds them on the CPU, and :meth:`LayerSnapshot.restore`
moves every tensor back to the device it was on when the snapshot was taken (recorded per tensor,
so a ``device_map`` that spreads the layers over several GPUs comes back as it was). Tensors on
the ``meta`` device (weights accelerate offloads and loads on demand) have no storage and stay.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
from torch import nn

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


def remove_layers(adapter: "ModelAdapter", drop: Iterable[int], offload: bool = True) -> list[int]:
    """Remove layers given by ORIGINAL indices; return the original indices kept.

    Keeps the config consistent: every kept attention module gets its new position as
    ``layer_idx`` (the KV cache is indexed by it), the per-layer config fields are trimmed
    and ``num_hidden_layers`` updated, so ``save_pretrained`` reloads the same model.
    ``offload``: move the removed layers' tensors to the CPU (see the module docstring).
    """
    drop = set(int(i) for i in drop)
    current = adapter.kept_layers
    unknown = drop - set(current)
    if unknown:
        raise ValueError(f"layers {sorted(unknown)} are not in the model (kept: {current})")
    positions = [pos for pos, orig in enumerate(current) if orig not in drop]
    if not positions:
        raise ValueError("refusing to remove every decoder layer")
    layers = adapter.decoder_layers()
    new_layers = nn.ModuleList([layers[p] for p in positions])
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():  # attention modules carry the cache index
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_idx
    adapter.set_decoder_layers(new_layers)
    if offload:  # a tensor the rest of the model still reaches (shared with a kept module) stays
        offload_layers([layers[p] for p in range(len(layers)) if p not in set(positions)], keep=[adapter.model])

    _trim_per_layer_config(adapter.text_config(), positions, len(layers))
    adapter.kept_layers = [current[p] for p in positions]
    return list(adapter.kept_layers)


# ------------------------------------------------------------------------------- devices
OFFLOAD_DEVICE = torch.device("cpu")


def _layer_tensors(layer: nn.Module) -> Iterator[tuple[nn.Module, str, bool]]:
    """(owning module, attribute name, is a parameter) of every tensor of ``layer``."""
    for module in layer.modules():
        for name, t in module._parameters.items():
            if t is not None:
                yield module, name, True
        for name, t in module._buffers.items():
            if t is not None:
                yield module, name, False


def _get(module: nn.Module, name: str, is_param: bool) -> torch.Tensor:
    return (module._parameters if is_param else module._buffers)[name]


def _move(module: nn.Module, name: str, is_param: bool, device: torch.device) -> None:
    """Move one tensor in place: a parameter keeps its identity (``.data`` swapped, as
    ``Module.to`` does), so references held elsewhere (tied weights, hooks) stay valid."""
    t = _get(module, name, is_param)
    if is_param:
        t.data = t.data.to(device)
    else:
        module._buffers[name] = t.to(device)


def offload_layers(removed: Iterable[nn.Module], keep: Iterable[nn.Module] = ()) -> int:
    """Move every accelerator tensor of ``removed`` to the CPU (tensors that ``keep``, the pruned
    model, also holds stay: it still uses them); returns how many bytes left an accelerator."""
    shared = {id(_get(*entry)) for layer in keep for entry in _layer_tensors(layer)}
    moved, from_cuda = 0, False
    for layer in removed:
        for entry in _layer_tensors(layer):
            t = _get(*entry)
            if t.device.type in ("cpu", "meta") or id(t) in shared:
                continue
            from_cuda |= t.device.type == "cuda"
            moved += t.numel() * t.element_size()
            _move(*entry, OFFLOAD_DEVICE)
    if from_cuda:  # hand the freed blocks back, so the reserved figures show the pruned model too
        torch.cuda.empty_cache()
    return moved


# config fields holding one entry per decoder layer (sliding/full mixes, NoPE layers)
PER_LAYER_LISTS = ("layer_types", "no_rope_layers")
# config fields counting a prefix of the decoder (Qwen2: layers below use the sliding window)
PER_LAYER_PREFIXES = ("max_window_layers",)


def _trim_per_layer_config(text_config: object, positions: list[int], num_before: int) -> None:
    for name in PER_LAYER_LISTS:
        values = getattr(text_config, name, None)
        if values is not None and len(values) == num_before:
            setattr(text_config, name, [values[p] for p in positions])
    for name in PER_LAYER_PREFIXES:
        bound = getattr(text_config, name, None)
        if isinstance(bound, int):
            setattr(text_config, name, sum(1 for p in positions if p < bound))
    text_config.num_hidden_layers = len(positions)


# every config field that changes with the number of decoder layers
_PER_LAYER_FIELDS = ("num_hidden_layers", *PER_LAYER_LISTS, *PER_LAYER_PREFIXES)


@dataclass
class LayerSnapshot:
    """What :func:`remove_layers` changes: the decoder layer modules, each attention module's
    ``layer_idx``, the device of each of their tensors, the per-layer config fields and
    ``kept_layers``; :meth:`restore` puts them back."""

    layers: list[Any]
    layer_idx: list[list[tuple[Any, int]]]  # per layer: (module, its layer_idx)
    config: dict[str, Any]
    kept: list[int]
    # per layer: (owning module, attribute name, is a parameter, device when taken)
    devices: list[list[tuple[nn.Module, str, bool, torch.device]]] = field(default_factory=list)

    @classmethod
    def take(cls, adapter: "ModelAdapter") -> "LayerSnapshot":
        layers = list(adapter.decoder_layers())
        text_config = adapter.text_config()
        return cls(layers=layers,
                   layer_idx=[[(m, m.layer_idx) for m in layer.modules() if hasattr(m, "layer_idx")] for layer in layers],
                   config={f: copy.deepcopy(getattr(text_config, f)) for f in _PER_LAYER_FIELDS if hasattr(text_config, f)},
                   kept=list(adapter.kept_layers),
                   devices=[[(m, n, p, _get(m, n, p).device) for m, n, p in _layer_tensors(layer)] for layer in layers])

    def restore(self, adapter: "ModelAdapter") -> None:
        for per_layer in self.devices:  # removed layers come back from the CPU to where they were
            for module, name, is_param, device in per_layer:
                if device.type != "meta" and _get(module, name, is_param).device != device:
                    _move(module, name, is_param, device)
        adapter.set_decoder_layers(nn.ModuleList(self.layers))
        for per_layer in self.layer_idx:
            for module, idx in per_layer:
                module.layer_idx = idx
        text_config = adapter.text_config()
        for f, value in self.config.items():
            setattr(text_config, f, copy.deepcopy(value))
        adapter.kept_layers = list(self.kept)


@contextmanager
def layers_removed(adapter: "ModelAdapter", drop: Iterable[int], offload: bool = False) -> Iterator[list[int]]:
    """The model without ``drop`` (original indices) inside the block, whole again after it
    (also when the block raises). Yields the original indices kept.

    The removed layers stay on their device unless ``offload``: a removal for scoring lasts one
    pass and the whole model was there before it, so moving them out and back would only cost
    two copies per candidate."""
    snapshot = LayerSnapshot.take(adapter)
    try:
        yield remove_layers(adapter, drop, offload=offload)
    finally:
        snapshot.restore(adapter)
