"""Every model family through the same adapter interface: layers, inputs, vision tokens, pruning."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import make_samples
from topovlm.adapters.families import ADAPTERS
from topovlm.adapters.tiny import TINY_BUILDERS
from topovlm.capture import run_capture
from topovlm.pruning import remove_layers


@pytest.fixture(params=sorted(TINY_BUILDERS))
def adapter(request):
    model, processor = TINY_BUILDERS[request.param](num_layers=6)
    return ADAPTERS[request.param](model, processor, name=f"tiny-{request.param}")


def test_layers_inputs_and_vision_tokens(adapter):
    assert adapter.num_layers == 6
    with_images = adapter.family != "causal_lm"
    samples = make_samples(3, with_image=with_images)
    inputs = adapter.build_inputs(samples)
    vision = adapter.vision_mask(inputs["input_ids"])
    assert (vision.sum(1) > 0).all() if with_images else not vision.any()
    prompt = adapter.prompt(samples[0])
    assert samples[0].question in prompt and prompt.rstrip().endswith("assistant")
    answers = adapter.generate(samples, max_new_tokens=3)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)


def test_capture_and_pruned_generation(adapter):
    with_images = adapter.family != "causal_lm"
    samples = make_samples(4, with_image=with_images)
    cap = run_capture(adapter, samples, batch_size=2)
    assert cap.pooled["last"].shape[:2] == (7, 4)
    assert cap.meta["has_vision"] == with_images
    remove_layers(adapter, [2, 4])
    inputs = adapter.build_inputs(samples[:2])
    kw = dict(max_new_tokens=5, do_sample=False, output_scores=True, return_dict_in_generate=True,
              pad_token_id=adapter.tokenizer.pad_token_id)
    cached = adapter.model.generate(**inputs, use_cache=True, **kw)
    full = adapter.model.generate(**inputs, use_cache=False, **kw)
    assert torch.equal(cached.sequences, full.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(full.scores), atol=1e-4, rtol=1e-4)
