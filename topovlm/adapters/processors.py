"""Processors for real checkpoints, with an image-only route where torchvision is missing.

``AutoProcessor`` of Qwen2-VL / Qwen2.5-VL also builds the checkpoint's video processor,
which needs torchvision. GPU installs have it (``pip install -e ".[lmms]"``); CPU machines
have no working build. Without it, the processor class of the checkpoint is built without
its video half from the checkpoint's own image processor, tokenizer and chat template:
image prompts are processed exactly as by the full processor, video inputs are refused.
"""
from __future__ import annotations

import importlib
import logging
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)


@lru_cache(maxsize=None)
def torchvision_usable() -> bool:
    """True when torchvision imports and its compiled operators match the installed torch."""
    try:
        tv = importlib.import_module("torchvision")
        tv.ops.nms  # noqa: B018 - the operator a mismatched build lacks
        return True
    except Exception:  # noqa: BLE001 - absent or broken: both mean "not usable"
        return False


def image_only(processor_cls: type) -> type:
    """``processor_cls`` without its video processor: it neither loads, checks nor saves one."""

    class ImageOnly(processor_cls):  # type: ignore[misc, valid-type]
        @classmethod
        def get_attributes(cls) -> list[str]:
            return [a for a in super().get_attributes() if a != "video_processor"]

        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument_name == "video_processor" and argument is None:
                return type(None)
            return super().check_argument_for_proper_class(argument_name, argument)

    ImageOnly.__name__ = processor_cls.__name__
    ImageOnly.__qualname__ = processor_cls.__qualname__
    return ImageOnly


def _processor_class(path: str, **kwargs: Any) -> type:
    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES

    config = transformers.AutoConfig.from_pretrained(path, **kwargs)
    name = PROCESSOR_MAPPING_NAMES.get(config.model_type)
    if name is None:
        raise ValueError(f"no processor class is known for model_type={config.model_type!r} ({path})")
    return getattr(transformers, name)


def load_processor(family: str, path: str, **kwargs: Any) -> Any:
    """The checkpoint's processor (tokenizer for text-only models); logs which route was taken."""
    import transformers

    if family == "causal_lm":
        return transformers.AutoTokenizer.from_pretrained(path, **kwargs)
    if family != "qwen2_vl" or torchvision_usable():
        return transformers.AutoProcessor.from_pretrained(path, **kwargs)
    cls = image_only(_processor_class(path, **kwargs))
    log.info("processor: torchvision is not usable here, so %s is built image-only from the "
             "checkpoint's image processor, tokenizer and chat template (video inputs are refused); "
             "install torchvision for the full AutoProcessor", cls.__name__)
    return cls.from_pretrained(path, **kwargs)
