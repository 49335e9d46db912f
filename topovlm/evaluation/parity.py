"""The harness's protocols side by side on the same documents: the harness (batched and at batch
1), ``task.protocol=lmms_exact`` and lmms-eval's own model class (``bench/gpu_smoke.py --parity``,
``bench/gpu_validate.py``, the tests). Apart from :mod:`topovlm.evaluation.protocol`, which the
evaluator imports, so that the measurement's imports (the config, the datasets) stay out of it."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from topovlm.evaluation.protocol import (POPE_GEN_KWARGS, POPE_POST_PROMPT, _vision_reader, configure, exact_class,
                                        exact_inputs, lmms_eval_model, qwen_vl_utils_route)

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter


@dataclass
class Doc:
    """One question as lmms-eval hands it to a model: the context (question + the task's prompt
    text) and the document's images."""

    context: str
    images: list[Any]
    answer: str = ""


def pope_docs(samples: Sequence[Any]) -> list[Doc]:
    """POPE-style documents from (image, question, answer) samples: POPE's instruction after the question."""
    return [Doc(f"{s.question.strip()}{POPE_POST_PROMPT}", [s.image] if s.image is not None else [], s.answer)
            for s in samples]


def shapes_pope_docs(n: int) -> list[Doc]:
    """``n`` POPE-style documents from the embedded shapes benchmark (generated locally): its yes/no
    questions with POPE's instruction in place of their own."""
    from omegaconf import OmegaConf

    from topovlm.config import DatasetConfig
    from topovlm.data.sources import load_samples
    from topovlm.data.types import VQASample

    samples = [s for s in load_samples(OmegaConf.structured(DatasetConfig(split="test"))) if s.answer in ("yes", "no")]
    return pope_docs([VQASample(s.id, s.image, s.question.replace(" Answer yes or no.", ""), s.answer, s.domain,
                                s.category) for s in samples[:n]])


def requests(docs: Sequence[Doc], gen: dict[str, Any], task: str = "parity") -> tuple[list[Any], dict[str, Any]]:
    """lmms-eval ``Instance`` requests for ``docs`` and the ``task_dict`` a model needs to answer them."""
    from lmms_eval.api.instance import Instance

    def visuals(doc: dict[str, Any]) -> list[Any]:
        return list(doc["images"])

    out = [Instance(request_type="generate_until", arguments=(d.context, copy.deepcopy(gen), visuals, i, task, "test"),
                    idx=0, metadata={"task": task, "doc_id": i, "repeats": 1}) for i, d in enumerate(docs)]
    return out, {task: {"test": [{"images": d.images} for d in docs]}}


def answers(lm: Any, docs: Sequence[Doc], gen: dict[str, Any]) -> list[str]:
    """Answers of an lmms-eval model (AdapterLMM or lmms-eval's own class) to ``docs``."""
    reqs, task_dict = requests(docs, gen)
    lm.task_dict = task_dict
    with _vision_reader(lm):
        return list(lm.generate_until(reqs))


def harness_model(adapter: "ModelAdapter", protocol: str = "harness", batch_size: int = 16) -> Any:
    from topovlm.evaluation.lmms_model import AdapterLMM

    lm = AdapterLMM(adapter, batch_size=batch_size)
    configure(lm, protocol)
    return lm


@dataclass
class Comparison:
    """The harness (batched and at batch 1), ``lmms_exact`` and lmms-eval's own class on the same documents."""

    docs: list[Doc]
    harness_prompt: str  # of the first document
    harness_ids: list[int]
    exact_prompt: str
    exact_ids: list[int]
    lmms_prompt: str | None = None  # None: lmms-eval's class was not run
    lmms_ids: list[int] | None = None
    harness_batched: list[str] = field(default_factory=list)  # harness, batches of ``batch_size``
    harness_single: list[str] = field(default_factory=list)  # harness, batch 1
    exact: list[str] = field(default_factory=list)  # lmms_exact (batch 1)
    lmms: list[str] | None = None  # lmms-eval's own class (batch 1)
    batch_size: int = 16
    lmms_prompts: list[str] = field(default_factory=list)  # every document's, from lmms-eval's class
    exact_prompts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @staticmethod
    def _differ(a: Sequence[str], b: Sequence[str]) -> int:
        return sum(x.strip() != y.strip() for x, y in zip(a, b))

    @property
    def batching_differs(self) -> int:
        """Documents whose harness answer changes between batch ``batch_size`` and batch 1."""
        return self._differ(self.harness_batched, self.harness_single)

    @property
    def prompt_differs(self) -> int:
        """Documents whose answer changes between the harness (batch 1) and ``lmms_exact``."""
        return self._differ(self.harness_single, self.exact)

    @property
    def exact_mismatches(self) -> list[str]:
        """Where ``lmms_exact`` is not lmms-eval's class: prompts, ids or answers (empty: none)."""
        if self.lmms is None:
            return []
        out = [f"prompt of document {i}" for i, (a, b) in enumerate(zip(self.exact_prompts, self.lmms_prompts))
               if a != b]
        if self.exact_ids != self.lmms_ids:
            out.append("token ids of document 0")
        out += [f"answer of document {i}: {a!r} vs lmms-eval's {b!r}" for i, (a, b) in
                enumerate(zip(self.exact, self.lmms)) if a != b]
        return out

    def correct(self, answers: Sequence[str]) -> int:
        """Answers POPE's scoring counts as right: lower-cased and stripped, equal to the document's answer."""
        return sum(a.lower().strip() == d.answer.lower().strip() for a, d in zip(answers, self.docs))

    def summary(self) -> str:
        n = len(self.docs)
        text = (f"{n} documents: harness batch {self.batch_size} vs batch 1: {self.batching_differs} answers differ; "
                f"harness vs lmms_exact (both batch 1): {self.prompt_differs} differ")
        if all(d.answer for d in self.docs):
            text += (f"; right by POPE's scoring: harness batch {self.batch_size} {self.correct(self.harness_batched)}, "
                     f"batch 1 {self.correct(self.harness_single)}, lmms_exact {self.correct(self.exact)}")
        if self.lmms is not None:
            bad = self.exact_mismatches
            text += ("; lmms_exact = lmms-eval's own class (prompts, ids, answers)" if not bad else
                     f"; lmms_exact differs from lmms-eval's own class: {'; '.join(bad[:3])}")
        return text


def compare(adapter: "ModelAdapter", docs: Sequence[Doc], gen: dict[str, Any] | None = None, batch_size: int = 16,
            reference: bool = True) -> Comparison:
    """Every document through the harness (batched, and at batch 1), ``lmms_exact``, and (``reference``)
    lmms-eval's own class around the same model; prompts and ids of the first document."""
    from topovlm.data.types import VQASample

    gen = dict(POPE_GEN_KWARGS if gen is None else gen)
    docs = list(docs)
    first = docs[0]
    sample = VQASample("parity-0", first.images[0] if first.images else None, first.context, "", "")
    harness_ids = adapter.build_inputs([sample])["input_ids"][0].tolist()  # AdapterLMM's one-image route
    exact_prompts = [exact_inputs(adapter, d.context, d.images)[0] for d in docs]
    exact_ids = exact_inputs(adapter, first.context, first.images)[1]["input_ids"][0].tolist()
    result = Comparison(docs, adapter.prompt(sample), harness_ids, exact_prompts[0], exact_ids,
                        batch_size=batch_size, exact_prompts=exact_prompts)
    if exact_class(adapter.family) == "qwen2_vl":
        result.notes.append(f"qwen2_vl's images read by {qwen_vl_utils_route()}")
    result.harness_batched = answers(harness_model(adapter, "harness", batch_size), docs, gen)
    result.harness_single = answers(harness_model(adapter, "harness", 1), docs, gen)
    result.exact = answers(harness_model(adapter, "lmms_exact"), docs, gen)
    if reference:
        lm = lmms_eval_model(adapter)
        result.lmms = answers(lm, docs, gen)
        # lmms-eval sorts requests by length (Collator): its calls are matched to documents by prompt order
        result.lmms_prompts = [text for text, _ in lm.processor_calls]
        order = _call_order(result.lmms_prompts, exact_prompts)
        result.lmms_prompts = [result.lmms_prompts[k] for k in order]
        calls = [lm.processor_calls[k] for k in order]
        result.lmms_prompt, result.lmms_ids = calls[0]
    return result


def _call_order(called: list[str], expected: list[str]) -> list[int]:
    """Indices into ``called`` for each document (prompts are matched; equal prompts in turn)."""
    left = list(range(len(called)))
    order = []
    for prompt in expected:
        k = next((k for k in left if called[k] == prompt), left[0] if left else None)
        if k is None:
            break
        left.remove(k)
        order.append(k)
    return order


def dtype_name(adapter: "ModelAdapter") -> str:
    return str(adapter.model.dtype).removeprefix("torch.")


def describe(c: Comparison) -> str:
    """The first document's prompts and ids side by side, and each document's answers (text)."""
    def ids(values: list[int] | None) -> str:
        if values is None:
            return "-"
        return (f"{len(values)} ids: {values[:12]} ... {values[-8:]}" if len(values) > 24 else f"{values}")

    lines = ["question (POPE-style): " + repr(c.docs[0].context), "",
             "harness prompt (processor chat template):", repr(c.harness_prompt), ids(c.harness_ids), "",
             "lmms_exact prompt:", repr(c.exact_prompt), ids(c.exact_ids), ""]
    if c.lmms is not None:
        lines += ["lmms-eval's own class, as it called the processor:", repr(c.lmms_prompt), ids(c.lmms_ids), ""]
    lines.append("| doc | harness batch %d | harness batch 1 | lmms_exact | lmms-eval class |" % c.batch_size)
    lines.append("| --- | --- | --- | --- | --- |")
    for i in range(len(c.docs)):
        ref = "-" if c.lmms is None else repr(c.lmms[i])
        lines.append(f"| {i} | {c.harness_batched[i]!r} | {c.harness_single[i]!r} | {c.exact[i]!r} | {ref} |")
    lines += ["", c.summary(), *c.notes]
    return "\n".join(lines)
