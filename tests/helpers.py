"""Helpers the tests import: composed Hydra configs, the debug presets, small samples, the
lmms-eval agreement check. Fixtures live in tests/conftest.py."""
from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from topovlm.data.types import VQASample

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose(overrides: list[str] | None = None):
    """The app's config exactly as launch.py composes it (no Hydra runtime dirs)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from topovlm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


def tiny_overrides(tmp: Path, *extra: str) -> list[str]:
    """A fast job (conf/debug/tiny.yaml: the tiny LLaVA model, a few shapes questions), cached under ``tmp``."""
    return ["debug=tiny", f"cache_dir={tmp / 'cache'}", *extra]


def make_samples(n: int = 8, with_image: bool = True) -> list[VQASample]:
    out = []
    for i in range(n):
        img = None
        if with_image:
            img = Image.new("RGB", (32, 32), "white")
            ImageDraw.Draw(img).ellipse((4 + i % 8, 4, 20 + i % 8, 20), fill=(40 * i % 255, 90, 200))
        domain = "math" if i % 2 else "non_math"
        out.append(VQASample(f"s{i}", img, f"How many circles are there? ({i})", str(i % 4), domain, "count"))
    return out


def lmms_task(name: str, tmp: Path, **kw):
    """A TaskConfig for the lmms evaluator with its datasets under ``tmp``."""
    from omegaconf import OmegaConf

    from topovlm.config import DatasetConfig, TaskConfig

    base = dict(name=name, evaluator="lmms", dataset=DatasetConfig(n=kw.pop("n", 8)), limit=4, batch_size=1,
                max_new_tokens=4, options={"data_dir": str(tmp), **kw.pop("options", {})})
    return OmegaConf.structured(TaskConfig(**{**base, **kw}))


def lmms_agrees_with_vqa(adapter, tmp: Path, n: int, limit: int, max_new_tokens: int) -> tuple[dict, dict]:
    """shapes_lmms through lmms-eval and the vqa evaluator give the same answers and metrics."""
    import pytest
    from omegaconf import OmegaConf

    from topovlm.config import DatasetConfig, TaskConfig
    from topovlm.evaluation.lmms import LmmsEvalEvaluator
    from topovlm.evaluation.vqa import VQAEvaluator

    lm_eval = LmmsEvalEvaluator(lmms_task("shapes_lmms", tmp, n=n, limit=limit, max_new_tokens=max_new_tokens))
    lm_metrics = lm_eval.evaluate(adapter)
    vqa = VQAEvaluator(OmegaConf.structured(TaskConfig(name="shapes", dataset=DatasetConfig(n=n), limit=limit,
                                                       batch_size=1, max_new_tokens=max_new_tokens)))
    vqa_metrics = vqa.evaluate(adapter)
    # the same questions, prompts and greedy settings: the same answers, document by document
    lm_preds = [lm_eval.predictions[("shapes_lmms", i)] for i in range(limit)]
    assert lm_preds == [p["prediction"] for p in vqa.predictions]
    assert lm_metrics["accuracy"] == pytest.approx(vqa_metrics["accuracy"])
    assert lm_metrics["num_samples"] == limit
    for dom in ("math", "non_math"):
        if f"accuracy/{dom}" in vqa_metrics:
            assert lm_metrics[f"accuracy_{dom}"] == pytest.approx(vqa_metrics[f"accuracy/{dom}"])
    return lm_metrics, lm_eval.protocol()


def _greedy(adapter, inputs, use_cache: bool, steps: int = 6):
    import torch

    out = adapter.model.generate(**inputs, max_new_tokens=steps, do_sample=False, use_cache=use_cache,
                                 output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=adapter.tokenizer.pad_token_id)
    return out.sequences, torch.stack(out.scores)


def assert_cache_consistent(adapter, inputs) -> None:
    """Greedy decoding with the KV cache equals decoding by full recompute (a pruned model's
    renumbered layers keep the cache right)."""
    import torch

    seq_c, scores_c = _greedy(adapter, inputs, use_cache=True)
    seq_f, scores_f = _greedy(adapter, inputs, use_cache=False)
    assert torch.equal(seq_c, seq_f)
    torch.testing.assert_close(scores_c, scores_f, atol=1e-4, rtol=1e-4)


#: layers, points and features of synthetic_capture
SYNTHETIC_L, SYNTHETIC_N, SYNTHETIC_D = 8, 36, 10


def synthetic_capture(seed: int = 0, n: int = SYNTHETIC_N, no_vision: int = 0):
    """Circle clouds that drift, then collapse to a blob in the last layers.

    The norm outputs are the residual states scaled to unit RMS (what an RMS norm with unit
    weight gives), the final norm's applied to the last layer's output."""
    import numpy as np

    from topovlm.capture import Capture

    L, D = SYNTHETIC_L, SYNTHETIC_D
    rng = np.random.default_rng(seed)
    theta = 2 * np.pi * (np.arange(n) + 0.2 * rng.random(n)) / n
    base = np.zeros((n, D))
    base[:, 0], base[:, 1] = np.cos(theta), np.sin(theta)
    pooled = {}
    for name, shift in (("last", 0.0), ("text_mean", 1.0), ("vision_mean", -1.0)):
        layers = [base + shift + 0.01 * rng.normal(size=base.shape)]
        for l in range(L):
            x = layers[-1] + 0.005 * rng.normal(size=base.shape)
            if l >= L - 2:
                x = 0.02 * rng.normal(size=base.shape)
            layers.append(x)
        pooled[name] = np.stack(layers).astype(np.float32)
    if no_vision:
        pooled["vision_mean"][:, :no_vision] = np.nan
    norms = {}
    for name, x in pooled.items():
        out = x[1:]
        rms = np.sqrt((out ** 2).mean(axis=2, keepdims=True))
        unit = out / np.where(rms > 0, rms, 1.0)
        norms[name] = np.concatenate([unit, unit[-1:]], axis=0).astype(np.float32)
    ids = [f"q{i:03d}" for i in range(n)]
    return Capture(num_layers=L, sample_ids=ids, domains=["a"] * n, pooled=pooled, norms=norms)
