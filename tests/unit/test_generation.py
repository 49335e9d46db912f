"""Batched generation: left-padded batches answer exactly as one-by-one; stop sequences end decoding."""
from __future__ import annotations

import pytest

from tests.helpers import make_samples
from topovlm.adapters.families import ADAPTERS
from topovlm.adapters.tiny import TINY_BUILDERS


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def adapter(request):
    model, processor = TINY_BUILDERS[request.param](num_layers=4)
    return ADAPTERS[request.param](model, processor, name=f"tiny-{request.param}")


def _questions(n):
    samples = make_samples(n)  # questions of different lengths: real left padding
    return [s.__class__(s.id, s.image, s.question + " word" * (i % 3), s.answer, s.domain, s.category)
            for i, s in enumerate(samples)]


def test_batched_answers_equal_batch_of_one(adapter):
    samples = _questions(6)
    batched = adapter.generate(samples, max_new_tokens=5)
    single = [adapter.generate([s], max_new_tokens=5)[0] for s in samples]
    assert batched == single


def test_stop_strings_end_each_sequence_early(tiny_llava):
    adapter = tiny_llava  # the tiny Qwen2-VL repeats one byte-level token: no clean stop string to pick
    samples = _questions(3)
    free = adapter.generate(samples, max_new_tokens=8)
    # a stop string the model produces early: a whole-character token after the first one
    row, stop = next((i, t) for i, s in enumerate(samples) for t in _tokens_of(adapter, s)[1:4]
                     if t.strip() and t.isprintable() and "\ufffd" not in t)
    calls = []
    handle = adapter.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        first = adapter.generate(samples[row:row + 1], max_new_tokens=8, stop_strings=[stop])
    finally:
        handle.remove()
    assert first[0] == free[row].split(stop)[0].strip()
    assert len(calls) < 8  # decoding ended at the stop string, not at max_new_tokens
    stopped = adapter.generate(samples, max_new_tokens=8, stop_strings=[stop])
    assert stopped == [t.split(stop)[0].strip() for t in free] and all(stop not in t for t in stopped)


def _tokens_of(adapter, sample) -> list[str]:
    inputs = adapter.build_inputs([sample])
    out = adapter.model.generate(**inputs, max_new_tokens=8, do_sample=False,
                                 pad_token_id=adapter.tokenizer.pad_token_id)[0, inputs["input_ids"].shape[1]:]
    return [adapter.tokenizer.decode(out[k:k + 1]) for k in range(len(out))]


def test_lmms_batched_equals_batch_of_one(tiny_llava, tmp_path):
    from omegaconf import OmegaConf

    from topovlm.config import DatasetConfig, TaskConfig
    from topovlm.evaluation.lmms import LmmsEvalEvaluator

    def run(bs):
        ev = LmmsEvalEvaluator(OmegaConf.structured(TaskConfig(
            name="shapes_lmms", evaluator="lmms", dataset=DatasetConfig(n=8), limit=6, batch_size=bs,
            max_new_tokens=3, options={"data_dir": str(tmp_path)})))
        metrics = ev.evaluate(tiny_llava)
        return metrics, [ev.predictions[("shapes_lmms", i)] for i in range(6)]

    (m1, p1), (m4, p4) = run(1), run(4)
    assert p1 == p4 and m1 == m4
