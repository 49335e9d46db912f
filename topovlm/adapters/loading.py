"""Build a model adapter from a ``model`` config: hub id / local path, the embedded default, or a tiny model."""
from __future__ import annotations

import logging
from typing import Any

import torch

from topovlm.adapters.base import ModelAdapter
from topovlm.adapters.families import ADAPTERS
from topovlm.adapters.processors import load_processor

log = logging.getLogger(__name__)

# transformers Auto classes that load each family
_MODEL_CLASSES = {
    "llava": "AutoModelForImageTextToText",
    "qwen2_vl": "AutoModelForImageTextToText",
    "causal_lm": "AutoModelForCausalLM",
}


def _dtype(name: str) -> Any:
    return "auto" if name == "auto" else getattr(torch, name)


def load_pretrained(family: str, path: str, *, dtype: str = "float32", device: str = "cpu",
                    device_map: str | None = None, attn_implementation: str | None = None,
                    revision: str | None = None, trust_remote_code: bool = False,
                    processor_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any]:
    import transformers

    auto_model = getattr(transformers, _MODEL_CLASSES[family])
    kwargs: dict[str, Any] = {"dtype": _dtype(dtype), "revision": revision, "trust_remote_code": trust_remote_code}
    if device_map:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = auto_model.from_pretrained(path, **kwargs)
    if not device_map:
        model.to(device)
    processor = load_processor(family, path, revision=revision, trust_remote_code=trust_remote_code,
                               **dict(processor_kwargs or {}))
    return model.eval(), processor


def load_adapter(cfg: Any) -> ModelAdapter:
    """``cfg``: a ``ModelConfig`` (see ``topovlm.config``)."""
    family = cfg.family
    adapter_cls = ADAPTERS[family]
    if cfg.source == "tiny":
        from topovlm.adapters.tiny import TINY_BUILDERS

        model, processor = TINY_BUILDERS[family](**dict(cfg.tiny or {}))
        model.to(dtype=_dtype(cfg.dtype) if cfg.dtype != "auto" else torch.float32, device=cfg.device)
        return adapter_cls(model, processor, name=cfg.name, source="tiny")
    if cfg.source == "embedded":
        from topovlm.default_model import ensure_default_model

        path = str(ensure_default_model())
    else:
        path = cfg.path
    model, processor = load_pretrained(
        family, path, dtype=cfg.dtype, device=cfg.device, device_map=cfg.device_map,
        attn_implementation=cfg.attn_implementation, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code,
        processor_kwargs=dict(getattr(cfg, "processor", None) or {}),
    )
    return adapter_cls(model, processor, name=cfg.name, source=cfg.source)
