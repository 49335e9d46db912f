"""Batched generation on the real embedded model: left-padded batches answer exactly as one-by-one."""
from __future__ import annotations

from tests.helpers import compose


def test_embedded_model_batched_answers_equal_batch_of_one():
    from topovlm.adapters.loading import load_adapter
    from topovlm.data.sources import load_samples

    cfg = compose([])
    adapter = load_adapter(cfg.model)
    samples = load_samples(cfg.task.dataset)[:24]
    batched = adapter.generate(samples, max_new_tokens=6)
    single = [adapter.generate([s], max_new_tokens=6)[0] for s in samples]
    assert batched == single
