"""accuracy_mc on the real embedded model: the prompt-pass scoring (one prompt pass per question,
candidates from the first step's logits or over the cached prompt) picks exactly what one
forward per candidate picks, unpruned and with a third of the layers removed (where the
candidates' likelihoods are close and a wrong position or padding would change picks)."""
from __future__ import annotations

import pytest

from tests.helpers import compose

N = 48


@pytest.mark.parametrize("drop", [(), tuple(range(3, 30, 3))])
def test_prompt_pass_picks_equal_the_per_candidate_forward(drop):
    from omegaconf import OmegaConf

    from topovlm.adapters.loading import load_adapter
    from topovlm.data.sources import load_samples
    from topovlm.evaluation.base import choice_loglikelihoods
    from topovlm.evaluation.vqa import VQAEvaluator, candidate_answers, pick_answers
    from topovlm.pruning import remove_layers

    cfg = compose([f"task.limit={N}"])
    adapter = load_adapter(cfg.model)
    remove_layers(adapter, drop)
    ev = VQAEvaluator(OmegaConf.create(OmegaConf.to_container(cfg.task)))
    metrics = ev.evaluate(adapter)
    samples = load_samples(cfg.task.dataset)[:N]
    choices = candidate_answers(samples)
    scores = choice_loglikelihoods(adapter, samples, choices, batch_size=cfg.task.batch_size)
    picks = pick_answers(choices, scores)
    assert [r["prediction_mc"] for r in ev.predictions] == picks
    assert metrics["accuracy_mc"] == sum(p == s.answer for p, s in zip(picks, samples)) / N
