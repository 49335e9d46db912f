"""Tiny random models built in-process from configs (no downloads): for tests and dry runs.

Each comes with a real processor: a byte-level BPE tokenizer trained on a few
sentences, a ChatML chat template and the family's PIL image processor.
"""
from __future__ import annotations

from functools import lru_cache, partial
from typing import Any

import torch

SPECIAL = ["<unk>", "<pad>", "<|im_start|>", "<|im_end|>", "<image>",
           "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

_CORPUS = [
    "What colour is the circle? Answer with one word.",
    "How many squares are there? red green blue yellow purple orange",
    "Is the triangle left of the star? yes no 0 1 2 3 4 5 6 7 8 9",
    "The quick brown fox jumps over the lazy dog. user assistant system",
]

_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE_MARKUP\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def chat_template(image_markup: str) -> str:
    return _CHAT_TEMPLATE.replace("IMAGE_MARKUP", image_markup)


@lru_cache(maxsize=None)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer)
    return tok.to_str()


def tiny_tokenizer(image_markup: str = "<image>") -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        unk_token="<unk>", pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>",
        extra_special_tokens={"image_token": "<image>"} if image_markup == "<image>" else {},
    )
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[4:]})
    tok.chat_template = chat_template(image_markup)
    return tok


def _text_kwargs(vocab: int, layers: int, hidden: int, overrides: dict[str, Any]) -> dict[str, Any]:
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
              pad_token_id=1, bos_token_id=2, eos_token_id=3, tie_word_embeddings=False)
    kw.update(overrides)
    return kw


def tiny_llava(num_layers: int = 12, hidden_size: int = 64, image_size: int = 32, patch_size: int = 8,
               seed: int = 0, tokenizer: Any = None, **text_overrides: Any) -> tuple[Any, Any]:
    from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tok = _with_special_tokens(tokenizer, "<image>")
    text_overrides = _ids(tok, text_overrides)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=image_size, patch_size=patch_size),
        text_config=LlamaConfig(**_text_kwargs(len(tok), num_layers, hidden_size, text_overrides)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size}),
        tokenizer=tok, patch_size=patch_size, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=tok.chat_template,
    )
    return model, processor


def tiny_qwen2_vl(num_layers: int = 12, hidden_size: int = 64, seed: int = 0, tokenizer: Any = None,
                  **text_overrides: Any) -> tuple[Any, Any]:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    vision = dict(depth=2, embed_dim=32, hidden_size=hidden_size, num_heads=2, mlp_ratio=2,
                  patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    return _qwen_replica(Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor, vision,
                         tokenizer, num_layers, hidden_size, seed, text_overrides, max_pixels=32 * 32)


def tiny_llama(num_layers: int = 12, hidden_size: int = 64, seed: int = 0, **text_overrides: Any) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer("<image>")
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**_text_kwargs(len(tok), num_layers, hidden_size, text_overrides))).eval()
    return model, tok


def tiny_llava_next(num_layers: int = 8, hidden_size: int = 64, seed: int = 0, tokenizer: Any = None,
                    text_model: str = "llama", **text_overrides: Any) -> tuple[Any, Any]:
    """LLaVA-NeXT (anyres): images tiled by ``image_grid_pinpoints``, so sizes change token counts;
    ``text_model``: llama (the vicuna checkpoint) or mistral."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessorPil, LlavaNextProcessor, MistralConfig)

    tok = _with_special_tokens(tokenizer, "<image>")
    pinpoints = [[32, 64], [64, 32], [64, 64]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config={"llama": LlamaConfig, "mistral": MistralConfig}[text_model](
            **_text_kwargs(len(tok), num_layers, hidden_size, _ids(tok, text_overrides))),
        image_token_id=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                                   image_grid_pinpoints=pinpoints),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=tok.chat_template,
    )
    return model, processor


def tiny_qwen2_5_vl(num_layers: int = 8, hidden_size: int = 64, seed: int = 0, tokenizer: Any = None,
                    **text_overrides: Any) -> tuple[Any, Any]:
    """Qwen2.5-VL: windowed vision attention, the Qwen2.5-VL processor (image-only without torchvision)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size,
                  patch_size=8, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
                  window_size=32, fullatt_block_indexes=[1])
    return _qwen_replica(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, vision,
                         tokenizer, num_layers, hidden_size, seed, text_overrides, max_pixels=64 * 64)


def _qwen_replica(config_cls: Any, model_cls: Any, processor_cls: Any, vision: dict[str, Any], tokenizer: Any,
                  num_layers: int, hidden_size: int, seed: int, text_overrides: dict[str, Any],
                  max_pixels: int) -> tuple[Any, Any]:
    """A seeded Qwen-VL-family model and its image-only processor; the classes and the vision
    config are what differ between Qwen2-VL and Qwen2.5-VL."""
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    from topovlm.adapters.processors import image_only

    tok, ids, text = _qwen_text(tokenizer, num_layers, hidden_size, text_overrides)
    config = config_cls(
        text_config=text, vision_config=vision,
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    image_processor = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                               min_pixels=32 * 32, max_pixels=max_pixels)
    processor = image_only(processor_cls)(image_processor=image_processor, tokenizer=tok,
                                          chat_template=tok.chat_template)
    return model, processor


def _qwen_text(tokenizer: Any, num_layers: int, hidden_size: int,
               overrides: dict[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """Tokenizer, token-id lookup and text config of the Qwen-VL replicas (multimodal RoPE sections)."""
    tok = _with_special_tokens(tokenizer, "<|vision_start|><|image_pad|><|vision_end|>")
    head_dim = hidden_size // 4
    text = _text_kwargs(len(tok), num_layers, hidden_size, _ids(tok, overrides))
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0,
                               "mrope_section": [head_dim // 8, head_dim // 8 + head_dim // 16,
                                                 head_dim // 2 - head_dim // 8 - head_dim // 8 - head_dim // 16]}
    return tok, tok.convert_tokens_to_ids, text


def _with_special_tokens(tokenizer: Any, image_markup: str) -> Any:
    """The given tokenizer (e.g. the embedded model's) with the family's special tokens and a
    ChatML template; the tiny BPE tokenizer when none is given."""
    if tokenizer is None:
        return tiny_tokenizer(image_markup)
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[4:]})
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.chat_template = chat_template(image_markup)
    return tok


def _ids(tok: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """Special-token ids of the tokenizer in use (the tiny tokenizer's defaults otherwise)."""
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    return {**{k: v for k, v in ids.items() if v is not None}, **overrides}


TINY_BUILDERS = {"llava": tiny_llava, "qwen2_vl": tiny_qwen2_vl, "causal_lm": tiny_llama}
# tiny random replicas of each real architecture with its real processor class, by preset family
REPLICAS = {"llava-1.5-7b": tiny_llava, "llava-v1.6-vicuna-7b": tiny_llava_next,
            "llava-v1.6-mistral-7b": partial(tiny_llava_next, text_model="mistral"), "qwen2-vl-7b": tiny_qwen2_vl,
            "qwen2.5-vl-7b": tiny_qwen2_5_vl}
