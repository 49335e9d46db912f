"""Build a model adapter from a ``model`` config: hub id / local path, the embedded default, or a tiny model."""
from __future__ import annotations

import logging
from typing import Any

import torch

from topovlm.adapters.base import ModelAdapter
from topovlm.adapters.families import ADAPTERS
from topovlm.adapters.processors import load_processor
from topovlm.errors import ConfigError

log = logging.getLogger(__name__)

# transformers Auto classes that load each family
_MODEL_CLASSES = {
    "llava": "AutoModelForImageTextToText",
    "qwen2_vl": "AutoModelForImageTextToText",
    "causal_lm": "AutoModelForCausalLM",
}


# transformers' model_type -> Auto class tables (config names only: no model code is imported)
_MAPPINGS = {
    "AutoModelForImageTextToText": "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "AutoModelForCausalLM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
}
# the model_types whose layout each built-in family's adapter knows (a plugin family: any
# model_type its Auto class loads)
FAMILY_MODEL_TYPES = {"llava": ("llava", "llava_next"), "qwen2_vl": ("qwen2_vl", "qwen2_5_vl")}


def _loadable(auto_class: str) -> dict[str, str]:
    from transformers.models.auto import modeling_auto

    return dict(getattr(modeling_auto, _MAPPINGS[auto_class], {}))


def family_problem(family: str, config: dict[str, Any], trust_remote_code: bool = False) -> str | None:
    """Why a checkpoint with this config.json does not fit ``model.family`` (None: it does).

    A causal LM checkpoint under a VLM family, or a VLM under ``causal_lm``, would otherwise
    fail deep inside ``from_pretrained`` or, worse, load with randomly initialised parts."""
    model_type = config.get("model_type")
    if not model_type:
        return "config.json has no model_type (not a transformers checkpoint)"
    expected = FAMILY_MODEL_TYPES.get(family)
    auto_class = _MODEL_CLASSES.get(family)
    if expected is not None:
        fits = model_type in expected
    elif auto_class and not (trust_remote_code and config.get("auto_map")):
        fits = model_type in _loadable(auto_class)
    else:
        return None  # a plugin family, or remote code: its own loader decides
    if fits:
        return None
    suggest = [f for f, types in FAMILY_MODEL_TYPES.items() if model_type in types]
    if not suggest and model_type in _loadable("AutoModelForCausalLM"):
        suggest = ["causal_lm"]
    allowed = ", ".join(expected) if expected else f"what {auto_class} loads"
    hint = f"; use model.family={suggest[0]}" if suggest else ""
    return f"config.json has model_type={model_type!r}, but model.family={family} loads {allowed}{hint}"


def _from_pretrained(auto_model: Any, path: str, kwargs: dict[str, Any]) -> Any:
    """``from_pretrained``; a truncated or corrupt weight file is named in one line."""
    from pathlib import Path

    try:
        return auto_model.from_pretrained(path, **kwargs)
    except Exception:
        if not Path(path).is_dir():
            raise
        from topovlm.adapters.weights_check import weights_problem

        why = weights_problem(path)
        if why is None:
            raise
        raise ConfigError(f"model.path={path!r}: {why}") from None


def _dtype(name: str) -> Any:
    return "auto" if name == "auto" else getattr(torch, name)


# device_map=fit: one GPU when the weights take at most this share of its free memory (the rest
# holds activations, the KV cache and the capture's batch), else accelerate's auto spreading
FIT_SHARE = 0.75


def weight_bytes(family: str, path: str, dtype: str = "float32", revision: str | None = None,
                 trust_remote_code: bool = False) -> int:
    """The bytes a checkpoint's parameters take once loaded in ``dtype``: the model built on the
    meta device from its config.json alone (nothing is allocated or read but the config)."""
    import transformers
    from accelerate import init_empty_weights

    config = transformers.AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    torch_dtype = _dtype(dtype)
    if torch_dtype == "auto":
        torch_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or torch.float32
        torch_dtype = getattr(torch, torch_dtype) if isinstance(torch_dtype, str) else torch_dtype
    with init_empty_weights():
        model = getattr(transformers, _MODEL_CLASSES[family]).from_config(
            config, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def fit_device_map(nbytes: int, free: list[int], share: float = FIT_SHARE) -> dict[str, int] | str | None:
    """``device_map=fit``: the whole model on GPU 0 when ``nbytes`` fits ``share`` of its free
    memory (``free``: bytes free per visible GPU), else ``auto`` (spread); no GPU: None (model.device)."""
    if not free:
        return None
    if len(free) == 1 or nbytes <= share * free[0]:
        return {"": 0}
    return "auto"


def resolve_device_map(device_map: str | None, family: str, path: str, dtype: str, revision: str | None = None,
                       trust_remote_code: bool = False) -> dict[str, int] | str | None:
    """``fit`` resolved on this machine (see :func:`fit_device_map`); any other value unchanged."""
    if device_map != "fit":
        return device_map
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    if len(free) < 2:  # one GPU or none: nothing to choose, no need to size the model
        return fit_device_map(0, free)
    nbytes = weight_bytes(family, path, dtype, revision, trust_remote_code)
    chosen = fit_device_map(nbytes, free)
    log.info("device_map=fit: %.1f GiB of weights, %.1f GiB free on GPU 0 of %d: %s", nbytes / 2**30,
             free[0] / 2**30, len(free), "one GPU" if chosen == {"": 0} else "spread over all (auto)")
    return chosen


def load_pretrained(family: str, path: str, *, dtype: str = "float32", device: str = "cpu",
                    device_map: str | None = None, attn_implementation: str | None = None,
                    revision: str | None = None, trust_remote_code: bool = False,
                    processor_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any]:
    import transformers

    auto_model = getattr(transformers, _MODEL_CLASSES[family])
    kwargs: dict[str, Any] = {"dtype": _dtype(dtype), "revision": revision, "trust_remote_code": trust_remote_code}
    device_map = resolve_device_map(device_map, family, path, dtype, revision, trust_remote_code)
    if device_map:
        kwargs["device_map"] = device_map
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = _from_pretrained(auto_model, path, kwargs)
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
