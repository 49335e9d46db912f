"""Removing decoder layers so that the pruned model still caches, generates and saves correctly,
and putting them back (:class:`LayerSnapshot`, :func:`layers_removed`)."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from torch import nn

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


def remove_layers(adapter: "ModelAdapter", drop: Iterable[int]) -> list[int]:
    """Remove layers given by ORIGINAL indices; return the original indices kept.

    Keeps the config consistent: every kept attention module gets its new position as
    ``layer_idx`` (the KV cache is indexed by it), the per-layer config fields are trimmed
    and ``num_hidden_layers`` updated, so ``save_pretrained`` reloads the same model.
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

    _trim_per_layer_config(adapter.text_config(), positions, len(layers))
    adapter.kept_layers = [current[p] for p in positions]
    return list(adapter.kept_layers)


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
    ``layer_idx``, the per-layer config fields and ``kept_layers``; :meth:`restore` puts them back."""

    layers: list[Any]
    layer_idx: list[list[tuple[Any, int]]]  # per layer: (module, its layer_idx)
    config: dict[str, Any]
    kept: list[int]

    @classmethod
    def take(cls, adapter: "ModelAdapter") -> "LayerSnapshot":
        layers = list(adapter.decoder_layers())
        text_config = adapter.text_config()
        return cls(layers=layers,
                   layer_idx=[[(m, m.layer_idx) for m in layer.modules() if hasattr(m, "layer_idx")] for layer in layers],
                   config={f: copy.deepcopy(getattr(text_config, f)) for f in _PER_LAYER_FIELDS if hasattr(text_config, f)},
                   kept=list(adapter.kept_layers))

    def restore(self, adapter: "ModelAdapter") -> None:
        adapter.set_decoder_layers(nn.ModuleList(self.layers))
        for per_layer in self.layer_idx:
            for module, idx in per_layer:
                module.layer_idx = idx
        text_config = adapter.text_config()
        for f, value in self.config.items():
            setattr(text_config, f, copy.deepcopy(value))
        adapter.kept_layers = list(self.kept)


@contextmanager
def layers_removed(adapter: "ModelAdapter", drop: Iterable[int]) -> Iterator[list[int]]:
    """The model without ``drop`` (original indices) inside the block, whole again after it
    (also when the block raises). Yields the original indices kept."""
    snapshot = LayerSnapshot.take(adapter)
    try:
        yield remove_layers(adapter, drop)
    finally:
        snapshot.restore(adapter)
