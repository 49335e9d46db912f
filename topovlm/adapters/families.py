"""The model families the harness drives; each differs only in where things live."""
from __future__ import annotations

from typing import TYPE_CHECKING

from topovlm.adapters.base import ModelAdapter
from topovlm.registry import Registry

ADAPTERS: Registry = Registry("model.family", base=ModelAdapter, entry_point_group="topovlm.adapters")

if TYPE_CHECKING:
    from topovlm.data.types import VQASample


@ADAPTERS.register("llava")
class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 / LLaVA-NeXT (``LlavaForConditionalGeneration``, ``LlavaNextForConditionalGeneration``)."""

    family = "llava"
    layer_paths = ("model.language_model.layers", "language_model.model.layers", "model.language_model.model.layers")


@ADAPTERS.register("qwen2_vl")
class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL and Qwen2.5-VL."""

    family = "qwen2_vl"
    layer_paths = ("model.language_model.layers", "model.layers")
    # multi-axis rotary positions (text after an image is offset by rope deltas): multi-token
    # candidate answers are scored by a full forward instead of over the prompt's cache
    continues_from_cache = False


@ADAPTERS.register("causal_lm")
class CausalLMAdapter(ModelAdapter):
    """Text-only decoders (Llama family). Images are ignored; prompts use the chat template if any."""

    family = "causal_lm"
    layer_paths = ("model.layers", "transformer.h")

    def prompt(self, sample: "VQASample") -> str:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template(
                [{"role": "user", "content": sample.question}], add_generation_prompt=True, tokenize=False
            )
        return sample.question + "\n"

    def build_inputs(self, samples, answers=None):
        texts = [self.prompt(s) for s in samples]
        if answers is not None:
            texts = [t + a for t, a in zip(texts, answers)]
        tok = self.tokenizer
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        batch = tok(texts, return_tensors="pt", padding=True)
        return {k: v.to(self.device) for k, v in batch.items()}

