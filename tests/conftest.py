"""Shared fixtures: tiny random models (built in-process), composed Hydra configs, temp caches."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from topovlm.data.types import VQASample

# tiny models run fastest on one thread (and the suite must fit a 2-core machine)
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # W&B never touches the network or the user's settings in tests
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))


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


@pytest.fixture(scope="session")
def tiny_llava():
    from topovlm.adapters.families import LlavaAdapter
    from topovlm.adapters.tiny import tiny_llava as build

    model, processor = build(num_layers=8)
    return LlavaAdapter(model, processor, name="tiny-llava", source="tiny")


@pytest.fixture
def fresh_tiny_llava():
    """A model the test may prune (function scope)."""
    from topovlm.adapters.families import LlavaAdapter
    from topovlm.adapters.tiny import tiny_llava as build

    model, processor = build(num_layers=8)
    return LlavaAdapter(model, processor, name="tiny-llava", source="tiny")


@pytest.fixture(scope="session")
def tiny_capture(tiny_llava):
    """A real capture of the tiny LLaVA on 8 image questions, with token-level cosines."""
    from topovlm.capture import run_capture
    from topovlm.scoring import CaptureSpec, StatRequest

    spec = CaptureSpec(tuple(StatRequest.make("token_cos", tokens=t) for t in ("all", "text", "vision")))
    return run_capture(tiny_llava, make_samples(8), spec, batch_size=4)
