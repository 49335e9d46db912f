"""Document functions of the ``shapes_lmms`` task.

The question text already carries its answer-format instruction, so the prompt is the
question itself (no pre/post prompt): the model sees exactly what the built-in ``vqa``
evaluator shows it, and predictions are scored with the same normalised exact match.
"""
from __future__ import annotations

from typing import Any

from topovlm.data.normalize import normalize_answer


def shapes_doc_to_visual(doc: dict[str, Any]) -> list[Any]:
    image = doc.get("image")
    return [image.convert("RGB")] if image is not None else []


def shapes_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any] | None = None) -> str:
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def shapes_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    pred = results[0] if results else ""
    ok = float(normalize_answer(pred) == normalize_answer(doc["answer"]))
    out: dict[str, Any] = {"accuracy": ok}
    for group in ("math", "non_math", "colour", "shape", "spatial", "count", "arithmetic"):
        # every document reports every metric; the aggregation keeps its own group
        member = doc["domain"] == group or doc["category"] == group
        out[f"accuracy_{group}"] = (member, ok)
    return out


def aggregate_by_group(items: list[tuple[bool, float]]) -> float:
    """Mean over the documents of one domain / category (NaN when there are none)."""
    values = [ok for member, ok in items if member]
    return sum(values) / len(values) if values else float("nan")
