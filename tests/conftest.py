"""Shared fixtures: tiny random models (built in-process), real captures, an isolated W&B.

Helpers (compose, tiny_overrides, make_samples, ...) live in tests/helpers.py; they are
also importable from here. Tests under tests/integration/ and tests/research/integration/ are
marked ``integration``.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import CONF, ROOT, compose, make_samples, tiny_overrides  # noqa: F401 - the helpers, importable from conftest as well

# tiny models run fastest on one thread (and the suite must fit a 2-core machine)
torch.set_num_threads(1)

INTEGRATION = (ROOT / "tests" / "integration", ROOT / "tests" / "research" / "integration")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The directory is the marker: tests/integration/ (and tests/research/integration/, the
    research's) is ``integration``, nothing else is."""
    for item in items:
        if any(item.path.is_relative_to(d) for d in INTEGRATION):
            item.add_marker(pytest.mark.integration)
        elif item.get_closest_marker("integration"):
            raise pytest.UsageError(f"{item.nodeid} is marked integration: move it under tests/integration/")


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # W&B never touches the network or the user's settings in tests
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    # a test that ran Hydra in this process (e.g. with the SLURM launcher) leaves its config in
    # Hydra's global HydraConfig; every test starts from none, as a fresh process does
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


# the embedded default model (integration tests: built on first use)
@pytest.fixture(scope="session")
def model_dir() -> Path:
    from topovlm.default_model import ensure_default_model

    return ensure_default_model()


@pytest.fixture(scope="session")
def loaded(model_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor


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
    from topovlm.api import CaptureSpec, StatRequest

    spec = CaptureSpec(tuple(StatRequest.make("token_cos", tokens=t) for t in ("all", "text", "vision")))
    return run_capture(tiny_llava, make_samples(8), spec, batch_size=4)
