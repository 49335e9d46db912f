"""The lmms-eval model class over a harness adapter, :class:`AdapterLMM`.

Its own module because importing it imports lmms-eval (slow, and optional for every other
evaluator): :func:`topovlm.evaluation.lmms.make_lmm` imports it when an lmms-eval task runs,
and ``topovlm.evaluation.lmms_plugin`` subclasses it for lmms-eval's own CLI. How requests
become prompts and generations: the module docstring of :mod:`topovlm.evaluation.lmms`.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from lmms_eval.api.model import lmms

from topovlm.data.types import VQASample
from topovlm.evaluation import protocol as prompt_protocol
from topovlm.evaluation.kv_budget import KVBudget
from topovlm.progress import bar

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter

# generation settings passed on to ``model.generate``; others (``until``, ``image_aspect_ratio``
# ...) are either handled here or specific to other backends
_HF_GEN_KEYS = ("max_new_tokens", "min_new_tokens", "num_beams", "temperature", "top_p", "top_k",
                "repetition_penalty", "do_sample")
IMAGE_MARKER = "<image>"

log = logging.getLogger(__name__)


#: [project] share of the free accelerator memory a generation batch's KV cache may take (the rest:
#: the prompt pass's activations and the allocator's fragments); ``task.options.kv_cache_fraction``
DEFAULT_KV_FRACTION = 0.8


def _stops(gen: dict[str, Any]) -> list[str]:
    """lmms-eval's ``until`` as a list."""
    until = gen.get("until") or []
    return [until] if isinstance(until, str) else list(until)


class AdapterLMM(lmms):
    """An lmms-eval model over a harness adapter (see the module docstring).

    Generation length: the task's ``max_new_tokens`` (else ``default_max_new_tokens``), bounded
    by ``max_new_tokens_cap`` (an int for every task, ``{task: int}`` per task, None: no bound).
    Batch size: ``batch_size``, lowered on CUDA to the rows whose KV cache fits the free memory
    (:mod:`topovlm.evaluation.kv_budget`).
    """

    is_simple = True

    def __init__(self, adapter: "ModelAdapter", batch_size: int = 1, default_max_new_tokens: int = 1024,
                 max_new_tokens_cap: int | dict[str, int] | None = None,
                 kv_cache_fraction: float = DEFAULT_KV_FRACTION) -> None:
        super().__init__()
        self.adapter = adapter
        self.batch_size = int(batch_size)
        self.default_max_new_tokens = int(default_max_new_tokens)
        self.max_new_tokens_cap = dict(max_new_tokens_cap) if isinstance(max_new_tokens_cap, Mapping) \
            else max_new_tokens_cap
        #: (task, doc_id) -> generated text (after ``until``), for inspection and tests
        self.outputs: dict[tuple[str, int], str] = {}
        #: task -> its generation length: ``max_new_tokens`` (lmms-eval's, or the default), ``cap``,
        #: ``used`` (the smaller), ``rows`` generated and ``rows_at_limit`` (ran to ``used`` without a stop)
        self.limits: dict[str, dict[str, Any]] = {}
        self.kv_budget = KVBudget(adapter, kv_cache_fraction)
        if not self.kv_budget.applies:
            log.info("lmms-eval batches: no KV-cache budget (%s)", self.kv_budget.reason)

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

    def cap_for(self, task: str) -> int | None:
        """The harness's bound on ``task``'s generation length (None: lmms-eval's own length)."""
        cap = self.max_new_tokens_cap
        if isinstance(cap, dict):
            cap = cap.get(task)
        return None if cap is None else int(cap)

    def _limit(self, task: str, gen: dict[str, Any]) -> dict[str, Any]:
        """``task``'s entry of :attr:`limits` (made, and a bounding cap logged, on first use)."""
        if task not in self.limits:
            asked = gen.get("max_new_tokens")
            source = "lmms-eval" if asked is not None else "default"
            asked = int(asked if asked is not None else self.default_max_new_tokens)
            cap = self.cap_for(task)
            used = asked if cap is None else min(asked, cap)
            self.limits[task] = {"max_new_tokens": asked, "from": source, "cap": cap, "used": used,
                                 "capped": used < asked, "rows": 0, "rows_at_limit": 0}
            if used < asked:
                log.info("%s: max_new_tokens %d (%s) capped at %d (task.max_new_tokens_cap)", task, asked, source, used)
        return self.limits[task]

    def generate_until(self, requests: list[Any]) -> list[str]:
        if prompt_protocol.is_exact(self):  # task.protocol=lmms_exact: lmms-eval's own prompts, batch 1
            return prompt_protocol.generate_until(self, requests)
        res: list[str | None] = [None] * len(requests)
        args = [r.args for r in requests]
        # batch consecutive requests of one task with the same generation settings and at most one image
        keys = [repr((a[4], sorted(a[1].items()))) for a in args]
        self._check_first_rows(args, keys)  # a length whose KV cache cannot fit fails before any generation
        start: dict[str, int] = {}  # rows a batch of that key starts from (lowered by the KV budget)
        pbar = bar(total=len(requests), default="lmms-eval generate", leave=False, disable=self.rank != 0)
        i = 0
        while i < len(args):
            batch = [i]
            while len(batch) < start.get(keys[i], self.batch_size) and i + len(batch) < len(args) \
                    and keys[i + len(batch)] == keys[i]:
                batch.append(i + len(batch))
            task, gen = args[i][4], dict(args[i][1])
            contexts, visuals = [], []
            for j in batch:
                context, _, doc_to_visual, doc_id, _, split = args[j]
                contexts.append(context)
                visuals.append(self._visuals(doc_to_visual, task, split, doc_id))
            simple = all(len(v) <= 1 and IMAGE_MARKER not in c for c, v in zip(contexts, visuals))
            if not simple and len(batch) > 1:  # multi-image documents run one at a time
                batch, contexts, visuals = batch[:1], contexts[:1], visuals[:1]
            limit = self._limit(task, gen)
            kw = self._gen_kwargs(gen, task)
            inputs = self._batch_inputs(contexts, visuals, simple)
            rows = self.kv_budget.rows(len(batch), inputs["input_ids"].shape[1] + kw["max_new_tokens"],
                                       f"lmms-eval task {task}")
            if rows < len(batch):  # every row's cache at its worst must fit: fewer rows, from now on
                start[keys[i]] = rows
                batch, contexts, visuals = batch[:rows], contexts[:rows], visuals[:rows]
                inputs = self._batch_inputs(contexts, visuals, simple)
            i += len(batch)
            max_new = kw.pop("max_new_tokens")
            texts = self.adapter.generate_from_inputs(inputs, max_new, stop_strings=_stops(gen), **kw)
            limit["rows"] += len(batch)
            limit["rows_at_limit"] += sum(self.adapter.last_ran_out)
            for j, text in zip(batch, texts):
                for stop in _stops(gen):
                    if stop:
                        text = text.split(stop)[0]
                res[j] = text
                _, _, _, doc_id, task, _ = args[j]
                self.outputs[(task, doc_id)] = text
                self.cache_hook.add_partial("generate_until", (args[j][0], gen), text)
            pbar.update(len(batch))
        pbar.close()
        for task, limit in self.limits.items():
            if limit["capped"] and limit["rows_at_limit"]:
                log.warning("%s: %d of %d answers ran to the cap of %d tokens without a stop (lmms-eval's "
                            "max_new_tokens: %d); their scores may differ from lmms-eval's own setting's", task,
                            limit["rows_at_limit"], limit["rows"], limit["used"], limit["max_new_tokens"])
        return [r if r is not None else "" for r in res]

    def _check_first_rows(self, args: list[tuple], keys: list[str]) -> None:
        """One row of each task and setting, at its generation length, fits the KV budget."""
        if not self.kv_budget.applies:
            return
        for k in sorted(set(keys), key=keys.index):
            context, gen, doc_to_visual, doc_id, task, split = args[keys.index(k)]
            visuals = [self._visuals(doc_to_visual, task, split, doc_id)]
            simple = len(visuals[0]) <= 1 and IMAGE_MARKER not in context
            width = self._batch_inputs([context], visuals, simple)["input_ids"].shape[1]
            self.kv_budget.rows(1, width + self._gen_kwargs(dict(gen), task)["max_new_tokens"], f"lmms-eval task {task}")

    def _gen_kwargs(self, gen: dict[str, Any], task: str) -> dict[str, Any]:
        kw = {k: gen[k] for k in _HF_GEN_KEYS if k in gen and gen[k] is not None}
        asked = int(kw.get("max_new_tokens", self.default_max_new_tokens))
        cap = self.cap_for(task)
        kw["max_new_tokens"] = asked if cap is None else min(asked, cap)
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

    def _batch_inputs(self, contexts: list[str], visuals: list[list[Any]], simple: bool) -> dict[str, Any]:
        """The model inputs of a batch: the adapter's own prompts (as the built-in vqa evaluator
        builds them) for single-image documents, else one interleaved document."""
        if simple:
            samples = [VQASample(f"lmms-{k}", v[0] if v else None, c, "", "")
                       for k, (c, v) in enumerate(zip(contexts, visuals))]
            return self.adapter.build_inputs(samples)
        return self._interleaved_inputs(contexts[0], visuals[0])

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
        if prompt_protocol.is_exact(self):  # task.protocol=lmms_exact
            return prompt_protocol.loglikelihood(self, requests)
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
