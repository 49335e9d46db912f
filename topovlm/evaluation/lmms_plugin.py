"""The harness's lmms-eval model class in lmms-eval's own CLI:

    python -m lmms_eval --model topovlm --model_args pretrained=<checkpoint dir>[,device=cpu,dtype=float32] \\
        --tasks <task> [--include_path <folder>] --limit N

Registered through lmms-eval's ``lmms_eval.models`` entry-point group (pyproject.toml) as
:data:`MANIFEST`. ``pretrained`` is any checkpoint the harness loads (a pruned one saved by
``save_model=true`` included); the family comes from its config (``family=`` overrides). The
model is the same ``AdapterLMM`` the harness evaluates with, so the CLI scores a checkpoint
as a harness job does.
"""
from __future__ import annotations

from typing import Any

from lmms_eval.models.registry_v2 import ModelManifest

from topovlm.evaluation.lmms_model import AdapterLMM

MANIFEST = ModelManifest(model_id="topovlm", simple_class_path="topovlm.evaluation.lmms_plugin.TopoVLM")

_MODEL_TYPES = {"llava": "llava", "llava_next": "llava", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_vl"}


def family_of(path: str) -> str:
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(path).model_type
    return _MODEL_TYPES.get(model_type, "causal_lm")


class TopoVLM(AdapterLMM):
    """``--model topovlm``: a checkpoint loaded through the harness's adapters."""

    def __init__(self, pretrained: str, family: str | None = None, device: str = "cuda", dtype: str = "bfloat16",
                 device_map: str | None = None, attn_implementation: str | None = None, batch_size: int | str = 1,
                 max_new_tokens: int | str = 1024, max_pixels: int | str | None = None,
                 min_pixels: int | str | None = None, **kwargs: Any) -> None:
        from topovlm.adapters.families import ADAPTERS
        from topovlm.adapters.loading import load_pretrained

        family = family or family_of(pretrained)
        processor_kwargs = {k: int(v) for k, v in (("max_pixels", max_pixels), ("min_pixels", min_pixels)) if v}
        model, processor = load_pretrained(family, pretrained, dtype=dtype, device=device, device_map=device_map,
                                           attn_implementation=attn_implementation,
                                           processor_kwargs=processor_kwargs)
        adapter = ADAPTERS[family](model, processor, name=str(pretrained), source="pretrained")
        super().__init__(adapter, batch_size=int(batch_size), default_max_new_tokens=int(max_new_tokens))
