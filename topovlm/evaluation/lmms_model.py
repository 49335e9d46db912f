"""The lmms-eval model class over a harness adapter, :class:`AdapterLMM`.

Its own module because importing it imports lmms-eval (slow, and optional for every other
evaluator): :func:`topovlm.evaluation.lmms.make_lmm` imports it when an lmms-eval task runs,
and ``topovlm.evaluation.lmms_plugin`` subclasses it for lmms-eval's own CLI. How requests
become prompts and generations: the module docstring of :mod:`topovlm.evaluation.lmms`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lmms_eval.api.model import lmms
from topovlm.progress import bar

from topovlm.data.types import VQASample

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter

# generation settings passed on to ``model.generate``; others (``until``, ``image_aspect_ratio``
# ...) are either handled here or specific to other backends
_HF_GEN_KEYS = ("max_new_tokens", "min_new_tokens", "num_beams", "temperature", "top_p", "top_k",
                "repetition_penalty", "do_sample")
IMAGE_MARKER = "<image>"


class AdapterLMM(lmms):
    """An lmms-eval model over a harness adapter (see the module docstring)."""

    is_simple = True

    def __init__(self, adapter: "ModelAdapter", batch_size: int = 1, default_max_new_tokens: int = 1024) -> None:
        super().__init__()
        self.adapter = adapter
        self.batch_size = int(batch_size)
        self.default_max_new_tokens = int(default_max_new_tokens)
        #: (task, doc_id) -> generated text (after ``until``), for inspection and tests
        self.outputs: dict[tuple[str, int], str] = {}

    # lmms-eval reads these
    @property
    def model(self) -> Any:
        return self.adapter.model

    @property
    def tokenizer(self) -> Any:
        return self.adapter.tokenizer

    @property
    def device(self) -> torch.device:
        return self.adapter.device

    def _visuals(self, doc_to_visual: Any, task: str, split: str, doc_id: int) -> list[Any]:
        import PIL.Image

        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual else []
        flat: list[Any] = []
        for v in visuals or []:
            flat.extend(v if isinstance(v, (list, tuple)) else [v])
        for v in flat:
            if not isinstance(v, PIL.Image.Image):
                raise NotImplementedError(
                    f"task {task}: only image inputs are supported by the topovlm lmms-eval model, got {type(v).__name__}")
        return [v.convert("RGB") for v in flat]

    def generate_until(self, requests: list[Any]) -> list[str]:
        res: list[str | None] = [None] * len(requests)
        args = [r.args for r in requests]
        # batch consecutive requests with the same generation settings and at most one image
        order = list(range(len(requests)))
        pbar = bar(total=len(requests), default="lmms-eval generate", leave=False, disable=self.rank != 0)
        i = 0
        while i < len(order):
            batch = [order[i]]
            key = repr(sorted(args[order[i]][1].items()))
            while (len(batch) < self.batch_size and i + len(batch) < len(order)
                   and repr(sorted(args[order[i + len(batch)]][1].items())) == key):
                batch.append(order[i + len(batch)])
            i += len(batch)
            contexts, visuals, gen = [], [], dict(args[batch[0]][1])
            for j in batch:
                context, _, doc_to_visual, doc_id, task, split = args[j]
                contexts.append(context)
                visuals.append(self._visuals(doc_to_visual, task, split, doc_id))
            simple = all(len(v) <= 1 and IMAGE_MARKER not in c for c, v in zip(contexts, visuals))
            if not simple and len(batch) > 1:  # multi-image documents run one at a time
                i -= len(batch) - 1
                batch, contexts, visuals = batch[:1], contexts[:1], visuals[:1]
            texts = self._generate(contexts, visuals, gen, simple)
            until = gen.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            for j, text in zip(batch, texts):
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                res[j] = text
                _, _, _, doc_id, task, _ = args[j]
                self.outputs[(task, doc_id)] = text
                self.cache_hook.add_partial("generate_until", (args[j][0], gen), text)
            pbar.update(len(batch))
        pbar.close()
        return [r if r is not None else "" for r in res]

    def _gen_kwargs(self, gen: dict[str, Any]) -> dict[str, Any]:
        kw = {k: gen[k] for k in _HF_GEN_KEYS if k in gen and gen[k] is not None}
        kw.setdefault("max_new_tokens", self.default_max_new_tokens)
        temperature = float(kw.pop("temperature", 0) or 0)
        sample = bool(kw.pop("do_sample", False)) and temperature > 0
        kw["do_sample"] = sample
        if sample:
            kw["temperature"] = temperature
        else:
            kw.pop("top_p", None)
            kw.pop("top_k", None)
        kw["num_beams"] = int(kw.get("num_beams", 1))
        return kw

    def _generate(self, contexts: list[str], visuals: list[list[Any]], gen: dict[str, Any], simple: bool) -> list[str]:
        kw = self._gen_kwargs(gen)
        max_new = kw.pop("max_new_tokens")
        until = gen.get("until") or []
        stops = [until] if isinstance(until, str) else list(until)  # honoured inside generate
        if simple:  # the adapter's own prompt + inputs, as the built-in vqa evaluator uses
            samples = [VQASample(f"lmms-{k}", v[0] if v else None, c, "", "")
                       for k, (c, v) in enumerate(zip(contexts, visuals))]
            return self.adapter.generate(samples, max_new_tokens=max_new, stop_strings=stops, **kw)
        inputs = self._interleaved_inputs(contexts[0], visuals[0])
        return self.adapter.generate_from_inputs(inputs, max_new, stop_strings=stops, **kw)

    def _interleaved_inputs(self, context: str, images: list[Any], continuation: str | None = None) -> dict[str, Any]:
        """Inputs for a document with several images or ``<image>`` markers in its text."""
        adapter = self.adapter
        if adapter.family == "causal_lm" or not images:
            sample = VQASample("lmms", None, context.replace(IMAGE_MARKER, "").strip(), "", "")
            return adapter.build_inputs([sample], answers=None if continuation is None else [continuation])
        parts = context.split(IMAGE_MARKER)
        # images without a marker go first (as llava_hf does); markers without an image are dropped
        content: list[dict[str, str]] = [{"type": "image"}] * max(0, len(images) - (len(parts) - 1))
        placed = len(content)
        for k, part in enumerate(parts):
            if k > 0 and placed < len(images):
                content.append({"type": "image"})
                placed += 1
            if part.strip():
                content.append({"type": "text", "text": part.strip()})
        prompt = adapter.processor.apply_chat_template([{"role": "user", "content": content}],
                                                       add_generation_prompt=True, tokenize=False)
        if continuation is not None:
            prompt += continuation
        self.tokenizer.padding_side = "left"
        batch = adapter.processor(text=[prompt], images=images, return_tensors="pt", padding=True)
        return {k: v.to(adapter.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _inputs(self, context: str, images: list[Any], continuation: str | None) -> dict[str, Any]:
        if len(images) <= 1 and IMAGE_MARKER not in context:
            sample = VQASample("lmms", images[0] if images else None, context, "", "")
            return self.adapter.build_inputs([sample], answers=None if continuation is None else [continuation])
        return self._interleaved_inputs(context, images, continuation)

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        res = []
        for context, target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            doc = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else target(doc)
            images = self._visuals(doc_to_visual, task, split, doc_id)
            ctx = self._inputs(context, images, None)["input_ids"]
            full = self._inputs(context, images, continuation)
            n_ctx = ctx.shape[1]
            logits = self.adapter.model(**full, use_cache=False).logits[0].float()
            ids = full["input_ids"][0]
            cont_ids = ids[n_ctx:]
            logp = torch.log_softmax(logits[n_ctx - 1:-1], dim=-1)
            total = logp.gather(-1, cont_ids[:, None]).sum().item()
            greedy = bool((logp.argmax(-1) == cont_ids).all().item())
            res.append((float(total), greedy))
        return res

    def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
        raise NotImplementedError("multi-round generation is not supported by the topovlm lmms-eval model")
