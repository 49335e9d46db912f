"""Exact-match visual QA over (image, question, answer) records, overall and per domain."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Sequence


from topovlm import progress
from topovlm.data.normalize import normalize_answer
from topovlm.data.sources import load_samples
from topovlm.api import Evaluator
from topovlm.evaluation.base import prompt_pass_loglikelihoods

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.data.types import VQASample


class VQAEvaluator(Evaluator):
    """Greedy generation; a prediction is correct when its normalised form equals the answer's.

    Metrics: ``accuracy`` and ``accuracy/<domain>`` and ``accuracy/<category>`` (fractions).
    With ``task.options.multiple_choice`` (on for ``task=shapes``), also ``accuracy_mc`` (per
    domain and category too): the candidate answer the model finds most likely among its
    category's closed answer set (every answer of that category in the evaluated split), as
    lm-evaluation-harness scores multiple-choice tasks. A model whose generations stop parsing
    still ranks candidates, so this metric degrades towards chance rather than to 0. The prompt
    runs once per question: the generation's prompt pass gives the single-token candidates'
    log-likelihoods (its first step's logits) and the keys/values longer candidates continue
    from; the picks equal one forward per candidate
    (:func:`~topovlm.evaluation.base.choice_loglikelihoods`, the fallback where the cache cannot
    be reused).
    """

    HIGHER_IS_BETTER = {"accuracy": True, "accuracy_mc": True}

    def __init__(self, task_cfg: Any) -> None:
        super().__init__(task_cfg)
        self.predictions: list[dict[str, str]] = []

    def evaluate(self, adapter: "ModelAdapter") -> dict[str, float]:
        samples = load_samples(self.cfg.dataset)
        if self.cfg.limit is not None:
            samples = samples[: self.cfg.limit]
        if not samples:
            raise ValueError(f"task {self.cfg.name!r} has no samples")
        predictions: list[str] = []
        bs = self.cfg.batch_size
        mc = bool((self.cfg.options or {}).get("multiple_choice"))
        choices = candidate_answers(samples) if mc else []
        scores: list[list[float]] = []
        for start in progress.bar(range(0, len(samples), bs), f"eval {self.cfg.name}", leave=False):
            batch = samples[start:start + bs]
            inputs = adapter.build_inputs(batch)
            if not mc:
                predictions += adapter.generate_from_inputs(inputs, max_new_tokens=self.cfg.max_new_tokens)
                continue
            # one prompt pass per question serves the generation and every candidate answer
            texts, prompt = adapter.generate_with_prompt_pass(inputs, max_new_tokens=self.cfg.max_new_tokens)
            predictions += texts
            scores += prompt_pass_loglikelihoods(adapter, batch, choices[start:start + bs], prompt, bs)
        metrics = exact_match_metrics(samples, predictions)
        self.predictions = [{"id": s.id, "prediction": p, "answer": s.answer, "correct": is_correct(p, s.answer),
                             "domain": s.domain, "category": s.category} for s, p in zip(samples, predictions)]
        if mc:
            picks = pick_answers(choices, scores)
            metrics.update({k.replace("accuracy", "accuracy_mc", 1): v
                            for k, v in exact_match_metrics(samples, picks).items()})
            for record, pick in zip(self.predictions, picks):
                record.update(prediction_mc=pick, correct_mc=is_correct(pick, record["answer"]))
        metrics["num_samples"] = float(len(samples))
        return metrics

    # ------------------------------------------------------------------ per-sample records
    def sample_records(self) -> list[dict[str, Any]]:
        """One record per question of the last ``evaluate``: ``id`` (the benchmark's sample id,
        the same in every job of a sweep), ``domain``, ``category``, ``prediction``, ``target``,
        ``correct``."""
        return [{"id": r["id"], "domain": r["domain"], "category": r["category"], "prediction": r["prediction"],
                 "target": r["answer"], "correct": bool(r["correct"]),
                 **({"prediction_mc": r["prediction_mc"], "correct_mc": bool(r["correct_mc"])}
                    if "prediction_mc" in r else {})} for r in self.predictions]


def candidate_answers(samples: Sequence["VQASample"]) -> list[list[str]]:
    """Each sample's candidates: every answer of its category among ``samples``, sorted."""
    answer_sets: dict[str, list[str]] = defaultdict(list)
    for s in samples:
        if s.answer not in answer_sets[s.category]:
            answer_sets[s.category].append(s.answer)
    return [sorted(answer_sets[s.category]) for s in samples]


def pick_answers(choices: Sequence[Sequence[str]], scores: Sequence[Sequence[float]]) -> list[str]:
    """The likeliest candidate of each sample (the first of equals, in the candidates' order)."""
    return [cs[max(range(len(cs)), key=sc.__getitem__)] for cs, sc in zip(choices, scores)]


def is_correct(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)


def exact_match_metrics(samples: Sequence["VQASample"], predictions: Iterable[str]) -> dict[str, float]:
    """``accuracy`` overall, ``accuracy/<domain>`` and ``accuracy/<category>``, as fractions."""
    hits: dict[str, list[bool]] = defaultdict(list)
    for s, p in zip(samples, predictions):
        ok = is_correct(p, s.answer)
        hits["accuracy"].append(ok)
        hits[f"accuracy/{s.domain}"].append(ok)
        if s.category:
            hits[f"accuracy/{s.category}"].append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items()}
