"""Assemble the default VLM: SmolLM2-135M-Instruct + a small CLIP vision tower.

Architecture (``LlavaForConditionalGeneration``):

* vision tower: ``CLIPVisionModel`` trained from scratch, 64x64 input, 16x16 patches
  (one patch per cell of the shapes benchmark's 4x4 grid, so positions are visible to
  the language model), 4 layers, width 192; ``vision_feature_layer=-1``,
  ``vision_feature_select_strategy="default"`` (the CLS token is dropped), so an image
  becomes 16 visual tokens;
* projector: the standard LLaVA 2-layer GELU MLP (192 -> 576 -> 576);
* language model: the pretrained SmolLM2-135M-Instruct (Llama, 30 layers, width 576),
  with one added token ``<image>`` (id 49152);
* processor: ``LlavaProcessor`` with a ``CLIPImageProcessor`` (PIL backend) and a
  ChatML chat template (SmolLM2's format, without its default system prompt).

The committed file ``weights/vision.safetensors`` holds the trained vision tower,
projector and, if present, LoRA adapters of the language model (``lora.*`` keys,
merged into the language-model weights when the model is built).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from topovlm.default_model.smollm2 import default_cache_dir, ensure_language_model, publish

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "vision.safetensors"
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 64
PATCH_SIZE = 16  # one visual token per grid cell (shapes.CELL)
NUM_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2


def visual_token_index(row: int, col: int, cell: int) -> int:
    """Index, among an image's visual tokens (row-major patches, as the vision tower reads them),
    of the patch covering grid cell (``row``, ``col``) of ``cell``-pixel cells."""
    return (row * cell // PATCH_SIZE) * (IMAGE_SIZE // PATCH_SIZE) + col * cell // PATCH_SIZE

VISION_CONFIG = dict(
    hidden_size=192,
    intermediate_size=768,
    num_hidden_layers=4,
    num_attention_heads=6,
    image_size=IMAGE_SIZE,
    patch_size=PATCH_SIZE,
    num_channels=3,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
)

# ChatML, as SmolLM2-Instruct uses, rendering {"type": "image"} as "<image>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_processor(lm_dir: str | os.PathLike):
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    tok = AutoTokenizer.from_pretrained(str(lm_dir))
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = CHAT_TEMPLATE
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = "<|im_end|>"
    ip = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": IMAGE_SIZE},
        do_center_crop=True,
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_rescale=True,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(lm_dir: str | os.PathLike, image_token_id: int):
    from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig

    text = AutoConfig.from_pretrained(str(lm_dir))
    text.vocab_size = max(text.vocab_size, image_token_id + 1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG),
        text_config=text,
        image_token_id=image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=NUM_IMAGE_TOKENS,
        multimodal_projector_bias=True,
        tie_word_embeddings=text.tie_word_embeddings,
    )
    return cfg


def build_model(lm_dir: str | os.PathLike, weights: str | os.PathLike | None = "default",
                seed: int = 0):
    """A ``(model, processor)`` pair in float32 on CPU.

    The language model comes from ``lm_dir`` (see :func:`ensure_language_model`); the
    vision tower and projector from ``weights`` (a safetensors file; "default": the
    committed ``WEIGHTS_FILE``), or freshly initialised from ``seed`` when ``weights``
    is None.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, LlavaForConditionalGeneration

    processor = build_processor(lm_dir)
    image_token_id = processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    config = build_config(lm_dir, image_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    lm = AutoModelForCausalLM.from_pretrained(str(lm_dir), dtype=torch.float32)
    sd = lm.model.state_dict()
    emb = sd["embed_tokens.weight"]
    n_new = config.text_config.vocab_size - emb.shape[0]
    if n_new > 0:  # rows for added tokens: mean of the pretrained embeddings
        sd["embed_tokens.weight"] = torch.cat([emb, emb.mean(0, keepdim=True).expand(n_new, -1)])
    model.model.language_model.load_state_dict(sd, strict=True)
    model.tie_weights()
    if isinstance(weights, str) and weights == "default":
        weights = WEIGHTS_FILE
    if weights is not None:
        load_trained_weights(model, load_file(str(weights)))
    model.eval()
    model.generation_config.eos_token_id = [processor.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model, processor


def load_trained_weights(model, state: dict) -> None:
    """Load vision tower + projector weights and merge any LoRA adapters."""
    import torch

    vis = {k[len("vision_tower."):]: v for k, v in state.items() if k.startswith("vision_tower.")}
    proj = {k[len("multi_modal_projector."):]: v for k, v in state.items()
            if k.startswith("multi_modal_projector.")}
    model.model.vision_tower.load_state_dict({k: v.float() for k, v in vis.items()}, strict=True)
    model.model.multi_modal_projector.load_state_dict({k: v.float() for k, v in proj.items()},
                                                      strict=True)
    lora = {k: v for k, v in state.items() if k.startswith("lora.")}
    scale = float(state["lora_scale"].item()) if "lora_scale" in state else 1.0
    names = sorted({k[len("lora."):].rsplit(".", 1)[0] for k in lora})
    modules = dict(model.model.language_model.named_modules())
    with torch.no_grad():
        for name in names:
            a, b = lora[f"lora.{name}.A"].float(), lora[f"lora.{name}.B"].float()
            modules[name].weight += scale * (b @ a)
    other = set(state) - set(lora) - {"lora_scale"} - {f"vision_tower.{k}" for k in vis} - {
        f"multi_modal_projector.{k}" for k in proj}
    if other:
        raise KeyError(f"unexpected keys in trained weights: {sorted(other)[:5]}")


def weights_digest(path: str | os.PathLike | None = None) -> str:
    import hashlib

    path = Path(path) if path is not None else WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"trained vision weights not found: {path} (train them with "
                                "research/default_model/train_default_model.py)")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def model_dir_name() -> str:
    """Cache directory of the assembled model: keyed by the committed weights and by this
    module's source (vision config, patch size, chat template), so either change rebuilds."""
    import hashlib

    h = hashlib.sha256(weights_digest().encode())
    h.update(Path(__file__).read_bytes())
    return f"default-vlm-{h.hexdigest()[:12]}"


def ensure_default_model(cache_dir: str | os.PathLike | None = None) -> Path:
    """A local directory holding the default VLM, ready for
    ``LlavaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained``.

    Built on first call (fetch + convert SmolLM2, merge with the committed vision
    weights) in a temporary directory and renamed into place atomically; later calls
    return the cached path. The directory name includes a digest of the committed
    weights and of the build recipe (:func:`model_dir_name`), so changing either rebuilds. Cache: ``cache_dir``, else
    ``$TOPOVLM_CACHE``, else ``~/.cache/topovlm``.
    """
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    target = cache / model_dir_name()
    if (target / ".complete").exists():
        return target
    lm_dir = ensure_language_model(cache)
    model, processor = build_model(lm_dir, WEIGHTS_FILE)
    digest = weights_digest()
    with tempfile.TemporaryDirectory(dir=cache, prefix=".tmp-default-vlm-") as tmp:
        out = Path(tmp) / "model"
        model.save_pretrained(out)
        processor.save_pretrained(out)
        tok_cfg = out / "tokenizer_config.json"
        if tok_cfg.exists():  # batched generation needs left padding
            cfg = json.loads(tok_cfg.read_text())
            cfg["padding_side"] = "left"
            tok_cfg.write_text(json.dumps(cfg, indent=2) + "\n")
        model.generation_config.save_pretrained(out)
        meta_src = WEIGHTS_DIR / "meta.json"
        if meta_src.exists():
            (out / "topovlm_meta.json").write_text(meta_src.read_text())
        (out / ".complete").write_text(json.dumps({"weights_sha256": digest}) + "\n")
        publish(out, target)
    return target
