"""The calibration pass: hook values, poolings, token statistics and the disk cache."""
from __future__ import annotations

import numpy as np
import torch

from tests.helpers import make_samples
from topovlm.capture import run_capture
from topovlm.capture_cache import CaptureCache
from topovlm.api import CaptureSpec, StatRequest


def test_pooled_states_match_hidden_states(tiny_llava):
    samples = make_samples(5)
    cap = run_capture(tiny_llava, samples, batch_size=2)
    inputs = tiny_llava.build_inputs(samples)
    with torch.no_grad():
        hs = tiny_llava.model(**inputs, output_hidden_states=True).hidden_states
    # hidden_states[l] is the input of layer l (the last entry has the final norm applied: skip it)
    L = tiny_llava.num_layers
    assert cap.pooled["last"].shape == (L + 1, 5, 64)
    for layer in range(L):
        np.testing.assert_allclose(cap.pooled["last"][layer], hs[layer][:, -1].numpy(), rtol=1e-4, atol=1e-5)
    vision = tiny_llava.vision_mask(inputs["input_ids"])
    text = inputs["attention_mask"].bool() & ~vision
    for layer in (0, 3):
        h = hs[layer]
        vis_mean = (h * vision[..., None]).sum(1) / vision.sum(1, keepdim=True)
        txt_mean = (h * text[..., None]).sum(1) / text.sum(1, keepdim=True)
        np.testing.assert_allclose(cap.pooled["vision_mean"][layer], vis_mean.numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(cap.pooled["text_mean"][layer], txt_mean.numpy(), rtol=1e-4, atol=1e-5)


def test_token_cosine_statistic(tiny_llava):
    samples = make_samples(4)
    spec = CaptureSpec((StatRequest.make("token_cos", tokens="all"),))
    cap = run_capture(tiny_llava, samples, spec, batch_size=4)
    inputs = tiny_llava.build_inputs(samples)
    with torch.no_grad():
        hs = tiny_llava.model(**inputs, output_hidden_states=True).hidden_states
    mask = inputs["attention_mask"].bool()
    for layer in range(tiny_llava.num_layers - 1):
        cos = torch.nn.functional.cosine_similarity(hs[layer], hs[layer + 1], dim=-1)
        expected = (cos * mask).sum(1) / mask.sum(1)
        np.testing.assert_allclose(cap.stat("token_cos(tokens=all)")[layer], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_padding_side_does_not_change_pooling(tiny_llava):
    """Samples of different lengths in one batch give the same pooled states as one by one."""
    samples = make_samples(4)
    together = run_capture(tiny_llava, samples, batch_size=4)
    alone = run_capture(tiny_llava, samples, batch_size=1)
    for p in ("last", "text_mean", "vision_mean"):
        np.testing.assert_allclose(together.pooled[p], alone.pooled[p], rtol=1e-3, atol=1e-4)


def test_cache_reuses_capture_and_adds_missing_statistics(tiny_llava, tmp_path):
    cache = CaptureCache(tmp_path)
    loads = []

    def adapter_fn():
        loads.append(1)
        return tiny_llava

    samples_fn = lambda: make_samples(6)  # noqa: E731 - a one-line local helper
    key = CaptureCache.key("tiny", "shapes:test")
    first = cache.get(key, adapter_fn, samples_fn, CaptureSpec(), batch_size=3)
    assert cache.forward_passes == 1
    again = cache.get(key, adapter_fn, samples_fn, CaptureSpec(), batch_size=3)
    assert cache.forward_passes == 1 and len(loads) == 1  # the second scorer ran no forward pass
    np.testing.assert_array_equal(first.pooled["last"], again.pooled["last"])
    spec = CaptureSpec((StatRequest.make("token_cos", tokens="text"),))
    with_stat = cache.get(key, adapter_fn, samples_fn, spec, batch_size=3)
    assert cache.forward_passes == 2  # only the missing statistic was computed
    assert with_stat.stat(spec.stats[0]).shape == (tiny_llava.num_layers, 6)
    cache.get(key, adapter_fn, samples_fn, spec, batch_size=3)
    assert cache.forward_passes == 2
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written


def test_subset_by_domain(tiny_capture):
    math = [i for i, d in enumerate(tiny_capture.domains) if d == "math"]
    sub = tiny_capture.subset(math)
    assert sub.num_samples == len(math) and set(sub.domains) == {"math"}
    assert sub.pooled["last"].shape[1] == len(math)


def test_attention_statistics_do_not_depend_on_chunking(tiny_llava):
    """A tight attention-memory budget splits each batch; the statistics stay the same."""
    from topovlm.capture import attention_chunk_size

    assert attention_chunk_size(16, 32, 2900, 1 << 30) == 1  # LLaVA-NeXT lengths: one row at a time
    assert attention_chunk_size(16, 32, 650, 1 << 30) == 16
    import baselines.short_lvlm as short_lvlm  # registers its attention statistic

    spec = CaptureSpec((StatRequest.make(short_lvlm.STAT, top_p_vision=0.5, top_p_text=0.5),))
    samples = make_samples(6)
    whole = run_capture(tiny_llava, samples, spec, batch_size=6)
    chunked = run_capture(tiny_llava, samples, spec, batch_size=6, attention_budget_bytes=1)
    for key in whole.stats:
        np.testing.assert_allclose(chunked.stats[key], whole.stats[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(chunked.pooled["last"], whole.pooled["last"], rtol=1e-4, atol=1e-5)


def test_lean_capture_equals_a_plain_forward(tiny_llava):
    samples = make_samples(4)
    lean = run_capture(tiny_llava, samples, batch_size=4)
    full = run_capture(tiny_llava, samples, batch_size=4, lean=False)
    np.testing.assert_array_equal(lean.pooled["last"], full.pooled["last"])


def test_cache_stores_pooled_states_in_half_precision_and_hits_equal_fresh(tiny_llava, tmp_path):
    samples = make_samples(4)
    cache = CaptureCache(tmp_path)
    fresh = cache.get("k", lambda: tiny_llava, lambda: samples, CaptureSpec(), 4)
    hit = CaptureCache(tmp_path).get("k", lambda: tiny_llava, lambda: samples, CaptureSpec(), 4)
    with np.load(tmp_path / "k" / "pooled.npz") as z:
        assert all(z[k].dtype == np.float16 for k in z.files)
    for p in fresh.pooled:  # the computing job sees exactly what later jobs read back
        np.testing.assert_array_equal(fresh.pooled[p], hit.pooled[p])
