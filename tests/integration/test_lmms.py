"""The lmms-eval path on the real embedded model."""
from __future__ import annotations

from tests.helpers import compose, lmms_agrees_with_vqa


def test_shapes_lmms_on_the_default_model(tmp_path):
    """The whole lmms-eval path on the real embedded model, agreeing with the vqa evaluator."""
    from topovlm.adapters.loading import load_adapter

    adapter = load_adapter(compose([]).model)
    metrics, _ = lmms_agrees_with_vqa(adapter, tmp_path, n=40, limit=20, max_new_tokens=6)
    assert metrics["accuracy"] > 0.0
