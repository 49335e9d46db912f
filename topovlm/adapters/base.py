"""Model adapters: the only code that knows a model family's internals.

An adapter wraps a Hugging Face model and its processor and answers: where are the
decoder layers, how are (image, text) turned into inputs, which positions hold vision
tokens, how to generate. Scorers, capture, pruning and evaluation go through it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from topovlm.data.types import VQASample


@dataclass
class PromptPass:
    """What the prompt pass of a generation leaves behind for scoring continuations of the
    prompt: the log-probabilities of the first generated token and the prompt's keys/values."""

    #: (batch, vocab) log-softmax of the first generation step's logits (float32)
    logprobs: torch.Tensor
    #: (batch, prompt length) attention mask of the left-padded prompt batch
    attention_mask: torch.Tensor
    #: the prompt's keys and values (a transformers ``DynamicCache`` cropped to the prompt);
    #: None where this model's cache cannot be reused for continuations
    cache: Any = None


class ModelAdapter:
    """Base adapter. Subclasses set ``layer_paths`` and may override input building."""

    #: attribute paths (from the top-level model) tried in order to find the decoder layers
    layer_paths: ClassVar[tuple[str, ...]] = ()
    family: ClassVar[str] = ""
    #: whether text after the prompt may be run over the prompt's cached keys/values with
    #: 1-D positions continuing each row's (False for multi-axis rotary positions, Qwen2-VL)
    continues_from_cache: ClassVar[bool] = True

    def __init__(self, model: nn.Module, processor: Any, name: str = "", source: str = "") -> None:
        self.model = model
        self.processor = processor
        self.name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
        self.source = source
        #: original index of every current decoder layer (pruning updates it)
        self.kept_layers: list[int] = list(range(len(self.decoder_layers())))
        self.original_num_layers = len(self.kept_layers)
        #: per row of the last generation: whether it ran to max_new_tokens without ending
        self.last_ran_out: list[bool] = []

    # ------------------------------------------------------------------ structure
    def _layer_owner(self) -> tuple[nn.Module, str]:
        for path in self.layer_paths:
            owner: Any = self.model
            *parents, leaf = path.split(".")
            try:
                for part in parents:
                    owner = getattr(owner, part)
                layers = getattr(owner, leaf)
            except AttributeError:
                continue
            if isinstance(layers, nn.ModuleList):
                return owner, leaf
        raise AttributeError(
            f"{type(self).__name__}: no decoder layers at any of {self.layer_paths} in {type(self.model).__name__}"
        )

    def decoder_layers(self) -> nn.ModuleList:
        owner, leaf = self._layer_owner()
        return getattr(owner, leaf)

    def set_decoder_layers(self, layers: nn.ModuleList) -> None:
        owner, leaf = self._layer_owner()
        setattr(owner, leaf, layers)

    #: attribute of a decoder layer holding its post-attention norm (Llama, Qwen2 names)
    post_attention_norm_names: ClassVar[tuple[str, ...]] = ("post_attention_layernorm", "ln_2")
    #: attribute of the decoder-layer owner holding the final norm
    final_norm_names: ClassVar[tuple[str, ...]] = ("norm", "ln_f", "final_layernorm")

    def post_attention_norms(self) -> list[nn.Module]:
        """Each decoder layer's norm between attention and MLP (its output: the MLP's input)."""
        out = []
        for i, layer in enumerate(self.decoder_layers()):
            module = next((getattr(layer, n) for n in self.post_attention_norm_names if hasattr(layer, n)), None)
            if module is None:
                raise AttributeError(f"decoder layer {i} has none of {self.post_attention_norm_names}")
            out.append(module)
        return out

    def final_norm(self) -> nn.Module:
        """The norm applied to the last decoder layer's output (before the LM head)."""
        owner, _ = self._layer_owner()
        for name in self.final_norm_names:
            module = getattr(owner, name, None)
            if isinstance(module, nn.Module):
                return module
        raise AttributeError(f"{type(owner).__name__} has none of {self.final_norm_names}")

    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    @property
    def num_layers(self) -> int:
        return len(self.decoder_layers())

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    # ------------------------------------------------------------------ inputs
    def prompt(self, sample: "VQASample") -> str:
        """The chat-formatted prompt for one sample, ending where the answer starts."""
        content: list[dict[str, str]] = []
        if sample.image is not None:
            content.append({"type": "image"})
        content.append({"type": "text", "text": sample.question})
        conversation = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)

    def build_inputs(self, samples: Sequence["VQASample"], answers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Batch of model inputs (left-padded). With ``answers``, each answer is appended."""
        texts = [self.prompt(s) for s in samples]
        if answers is not None:
            texts = [t + a for t, a in zip(texts, answers)]
        images = [s.image for s in samples if s.image is not None]
        self.tokenizer.padding_side = "left"
        kwargs: dict[str, Any] = {"text": texts, "return_tensors": "pt", "padding": True}
        if images:
            kwargs["images"] = images
        batch = self.processor(**kwargs)
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def vision_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of positions that carry vision tokens."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for attr in ("image_token_id", "image_token_index", "video_token_id"):
            token = getattr(self.model.config, attr, None)
            if token is not None:
                mask |= input_ids == token
        return mask

    # ------------------------------------------------------------------ running
    @torch.inference_mode()
    def forward(self, inputs: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        return self.model(**inputs, use_cache=False, **kwargs)

    @torch.inference_mode()
    def generate(self, samples: Sequence["VQASample"], max_new_tokens: int = 8,
                 stop_strings: Sequence[str] | None = None, **gen_kwargs: Any) -> list[str]:
        """Greedy answers for a left-padded batch, decoded without the prompt and special tokens.

        ``stop_strings`` end each sequence as soon as it produces one of them (lmms-eval's
        ``until``), so a rambling pruned model does not run to ``max_new_tokens``; the
        answer is cut before the stop string.
        """
        return self.generate_from_inputs(self.build_inputs(samples), max_new_tokens, stop_strings, **gen_kwargs)

    @torch.inference_mode()
    def generate_from_inputs(self, inputs: dict[str, Any], max_new_tokens: int = 8,
                             stop_strings: Sequence[str] | None = None, **gen_kwargs: Any) -> list[str]:
        return self._generate(inputs, max_new_tokens, stop_strings, keep_prompt=False, **gen_kwargs)[0]

    @torch.inference_mode()
    def generate_with_prompt_pass(self, inputs: dict[str, Any], max_new_tokens: int = 8,
                                  stop_strings: Sequence[str] | None = None,
                                  **gen_kwargs: Any) -> tuple[list[str], PromptPass]:
        """:meth:`generate_from_inputs`, also returning the prompt pass (first-step logits and the
        prompt's keys/values), so that candidate answers are scored without re-running the prompt."""
        texts, prompt = self._generate(inputs, max_new_tokens, stop_strings, keep_prompt=True, **gen_kwargs)
        assert prompt is not None
        return texts, prompt

    def _generate(self, inputs: dict[str, Any], max_new_tokens: int, stop_strings: Sequence[str] | None,
                  keep_prompt: bool, **gen_kwargs: Any) -> tuple[list[str], PromptPass | None]:
        gen_kwargs.setdefault("do_sample", False)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        stops = [s for s in (stop_strings or []) if s]
        if stops:  # transformers stops each row on its own; the cut below removes the stop text
            gen_kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        if keep_prompt:  # raw logits of every step (the first is the prompt's) and the cache
            gen_kwargs.update(return_dict_in_generate=True, output_logits=True)
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=pad, **gen_kwargs)
        sequences = out.sequences if keep_prompt else out
        prompt_len = inputs["input_ids"].shape[1]
        texts = self.tokenizer.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)
        self.last_ran_out = self._ran_out(sequences[:, prompt_len:], texts, max_new_tokens, stops, pad,
                                          gen_kwargs.get("eos_token_id"))
        for stop in stops:
            texts = [t.split(stop)[0] for t in texts]
        texts = [t.strip() for t in texts]
        if not keep_prompt:
            return texts, None
        logprobs = torch.log_softmax(out.logits[0].float(), dim=-1)
        return texts, PromptPass(logprobs, inputs["attention_mask"], self._prompt_cache(out, prompt_len))

    def _ran_out(self, new: torch.Tensor, texts: list[str], max_new_tokens: int, stops: list[str], pad: int | None,
                 eos: Any) -> list[bool]:
        """Per row: it generated ``max_new_tokens`` tokens without ending (no end-of-sequence
        token, no stop string). A row that ended earlier was padded with ``pad`` up to the batch's
        longest; a batch that ends before ``max_new_tokens`` has no such row."""
        if new.shape[1] < max_new_tokens:
            return [False] * new.shape[0]
        if eos is None:
            eos = self.model.generation_config.eos_token_id
        ends = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None}
        ends |= {int(pad)} if pad is not None else set()
        return [last not in ends and not any(s in text for s in stops) for last, text in zip(new[:, -1].tolist(), texts)]

    def _prompt_cache(self, out: Any, prompt_len: int) -> Any:
        """The generation's cache cut back to the prompt, or None where it cannot serve
        continuations (sliding-window or other non-growing layers keep no complete prompt)."""
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)  # transformers >= 5.24: cache
        if not self.continues_from_cache or type(cache) is not DynamicCache:
            return None
        if any(type(layer) is not DynamicLayer for layer in cache.layers):
            return None
        extra = cache.get_seq_length() - prompt_len
        if extra < 0:
            return None
        cache.crop(-extra)  # a negative count removes that many positions (the generated tokens)
        return cache

    @torch.inference_mode()
    def continuation_logprobs(self, prompt: PromptPass, rows: Sequence[int],
                              continuations: Sequence[Sequence[int]], batch_size: int = 16) -> list[float]:
        """``log p(continuation | prompt)``, summed over the continuation's tokens, for each
        (prompt row, token ids) pair. The first token is read from the prompt's first-step
        log-probabilities; the rest run over a copy of the prompt's cached keys/values, the
        continuations right-padded, each row's positions continuing its own prompt (left
        padding: a row's prompt holds ``attention_mask.sum()`` tokens, at positions 0..n-1, as
        ``generate`` numbers them)."""
        out = [float(prompt.logprobs[r, c[0]]) for r, c in zip(rows, continuations)]
        longer = [k for k, c in enumerate(continuations) if len(c) > 1]
        if longer and prompt.cache is None:
            raise ValueError(f"{type(self).__name__}: no reusable prompt cache for multi-token continuations")
        for start in range(0, len(longer), batch_size):
            chunk = longer[start:start + batch_size]
            index = torch.tensor([rows[k] for k in chunk], device=self.device)
            cache = copy.deepcopy(prompt.cache)
            cache.batch_select_indices(index)
            width = max(len(continuations[k]) for k in chunk) - 1  # the last token is only a target
            ids = torch.zeros(len(chunk), width, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(ids)
            for j, k in enumerate(chunk):
                ids[j, :len(continuations[k]) - 1] = torch.tensor(continuations[k][:-1])
                mask[j, :len(continuations[k]) - 1] = 1
            prompt_mask = prompt.attention_mask[index]
            positions = prompt_mask.sum(dim=1, keepdim=True) + torch.arange(width, device=self.device)
            cache_kw = {self._cache_argument(): cache}
            logits = self.model(input_ids=ids, attention_mask=torch.cat([prompt_mask, mask], dim=1),
                                position_ids=positions, use_cache=True, **cache_kw).logits
            logp = torch.log_softmax(logits.float(), dim=-1)  # position t predicts token t + 1
            for j, k in enumerate(chunk):
                targets = torch.tensor(continuations[k][1:], device=self.device)
                out[k] += float(logp[j, :len(targets)].gather(-1, targets[:, None]).sum())
        return out

    def _cache_argument(self) -> str:
        """The forward's keyword for a cache: ``cache`` from transformers 5.24, ``past_key_values`` before."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def save_pretrained(self, path: str | Path) -> None:
        self.model.save_pretrained(path)
        if hasattr(self.processor, "save_pretrained"):
            self.processor.save_pretrained(path)

    def protocol(self) -> dict[str, Any]:
        """How images and prompts reach the model (results.json ``protocol.model``): the
        processor class and the image processor's resolution settings, for comparison with
        lmms-eval's own model classes."""
        image_processor = getattr(self.processor, "image_processor", None)
        out: dict[str, Any] = {"family": self.family, "processor": type(self.processor).__name__,
                               "video": hasattr(self.processor, "video_processor")
                               and getattr(self.processor, "video_processor", None) is not None}
        if image_processor is not None:
            out["image_processor"] = type(image_processor).__name__
            for key in ("size", "crop_size", "min_pixels", "max_pixels", "image_grid_pinpoints", "patch_size",
                        "merge_size", "do_pad"):
                value = getattr(image_processor, key, None)
                if value is not None:
                    out[key] = _plain(value)
        return out

    # ------------------------------------------------------------------ size
    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.model.parameters())
        lm = sum(p.numel() for layer in self.decoder_layers() for p in layer.parameters())
        return {"params_total": total, "params_decoder_layers": lm}


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a processor setting (SizeDict and tuples included)."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if hasattr(value, "items"):
        return {k: _plain(v) for k, v in dict(value).items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (int, float, str, bool)) else str(value)
