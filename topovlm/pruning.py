"""Removing decoder layers so that the pruned model still caches, generates and saves correctly."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from torch import nn

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


def remove_layers(adapter: "ModelAdapter", drop: Iterable[int]) -> list[int]:
    """Remove layers given by ORIGINAL indices; return the original indices kept.

    Keeps the config consistent: every kept attention module gets its new position as
    ``layer_idx`` (the KV cache is indexed by it), ``layer_types`` (sliding/full mixes)
    is trimmed and ``num_hidden_layers`` updated, so ``save_pretrained`` reloads.
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

    text_config = adapter.text_config()
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is not None:
        text_config.layer_types = [layer_types[p] for p in positions]
    text_config.num_hidden_layers = len(positions)
    adapter.kept_layers = [current[p] for p in positions]
    return list(adapter.kept_layers)
