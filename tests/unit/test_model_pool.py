"""One model load per sweep process: the pooled model is restored exactly between jobs."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import compose, make_samples, tiny_overrides
from topovlm.adapters.loading import load_adapter
from topovlm.model_pool import ModelPool
from topovlm.pruning import remove_layers
from topovlm.runner import run_job


def test_restored_model_equals_a_fresh_load():
    cfg = compose(["model=tiny_qwen2_vl"]).model  # per-layer config fields (layer_types, max_window_layers)
    pool = ModelPool()
    adapter = pool.acquire(cfg, load_adapter)
    inputs = adapter.build_inputs(make_samples(3))
    before_types = list(adapter.text_config().layer_types)
    remove_layers(adapter, [1, 4, 5])
    pool.release(adapter)
    again = pool.acquire(cfg, load_adapter)
    assert again is adapter and pool.loads == 1 and pool.reuses == 1
    assert again.num_layers == again.text_config().num_hidden_layers == 12 and again.kept_layers == list(range(12))
    assert list(again.text_config().layer_types) == before_types
    assert [layer.self_attn.layer_idx for layer in again.decoder_layers()] == list(range(12))
    fresh = load_adapter(cfg)
    with torch.no_grad():
        torch.testing.assert_close(again.model(**inputs).logits, fresh.model(**inputs).logits)
    # cached generation after the restore equals a fresh model's
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=fresh.tokenizer.pad_token_id)
    assert torch.equal(again.model.generate(**inputs, **kw), fresh.model.generate(**inputs, **kw))


@pytest.mark.slow
def test_a_sweep_process_loads_once_and_weight_edits_force_a_reload(tmp_path, monkeypatch):
    from topovlm import model_pool

    pool = ModelPool()
    monkeypatch.setattr(model_pool, "POOL", pool)
    a = run_job(compose(tiny_overrides(tmp_path, "scorer=cosine", "sparsity=0.25")), tmp_path / "a")
    b = run_job(compose(tiny_overrides(tmp_path, "scorer=random", "sparsity=0.5")), tmp_path / "b")
    assert pool.loads == 1 and pool.reuses == 1
    assert a["num_layers"] == b["num_layers"] and len(b["removed_layers"]) > len(a["removed_layers"])
    # the same job on a fresh load gives the same result as on the reused model
    fresh = run_job(compose(tiny_overrides(tmp_path / "fresh", "scorer=random", "sparsity=0.5", "reuse_model=false")),
                    tmp_path / "c")
    assert fresh["removed_layers"] == b["removed_layers"] and fresh["metrics"] == b["metrics"]
    # subspace compensation edits weights: that model is not handed to the next job
    run_job(compose(tiny_overrides(tmp_path, "scorer=short_lvlm", "scorer.compensation=scp", "sparsity=0.25")),
            tmp_path / "d")
    loads = pool.loads
    run_job(compose(tiny_overrides(tmp_path, "scorer=cosine", "sparsity=0.5")), tmp_path / "e")
    assert pool.loads == loads + 1
