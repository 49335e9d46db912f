"""The capture under ``device_map="auto"``: every hook computes on the device of the tensors it receives.

A CPU machine has one device, so the second device is simulated: a TorchFunctionMode tags
every tensor with a virtual device (the inputs and what derives from them: "gpu0"; the
outputs of the second half of the decoder: "gpu1"), propagates tags through every torch
operation and lets a ``.to(...)`` copy take the device of whatever it is combined with.
An operation inside a capture hook that mixes tensors of both virtual devices is what
raises "Expected all tensors to be on the same device" on a multi-GPU node.
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from tests.helpers import make_samples
from topovlm import capture as capture_mod
from topovlm import token_stats
from topovlm.capture import run_capture
from topovlm.api import CaptureSpec, StatRequest

_MOVES = {torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda}


class VirtualDevices(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[str, Any]] = {}
        self.checking = False
        self.violations: list[str] = []

    def tag(self, t: torch.Tensor, device: str | None) -> None:
        key = id(t)
        if device is None:
            self.tags.pop(key, None)
        else:
            self.tags[key] = (device, weakref.ref(t, lambda _, k=key: self.tags.pop(k, None)))

    def tag_of(self, t: Any) -> str | None:
        entry = self.tags.get(id(t)) if isinstance(t, torch.Tensor) else None
        return entry[0] if entry and entry[1]() is t else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        flat_in, _ = tree_flatten((args, kwargs))
        if func in _MOVES:
            if isinstance(out, torch.Tensor) and any(out is a for a in flat_in):
                out = out.clone()  # a move to the same (real) device: still a fresh copy here
            return out  # untagged: a moved tensor takes the device it is combined with
        devices = {d for d in map(self.tag_of, flat_in) if d is not None}
        if len(devices) > 1 and self.checking:
            self.violations.append(getattr(func, "__name__", str(func)))
        if len(devices) == 1:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.tag(t, next(iter(devices)))
        return out


def _capture_with_two_devices(adapter, monkeypatch) -> VirtualDevices:
    mode = VirtualDevices()
    layers = adapter.decoder_layers()
    split = len(layers) // 2

    build = adapter.build_inputs

    def build_on_gpu0(samples, *a, **kw):
        inputs = build(samples, *a, **kw)
        for v in inputs.values():
            if isinstance(v, torch.Tensor):
                mode.tag(v, "gpu0")
        return inputs

    monkeypatch.setattr(adapter, "build_inputs", build_on_gpu0)

    def on_gpu1(module, args, output):  # registered before the capture's hooks: runs first
        h = output[0] if isinstance(output, (tuple, list)) else output
        mode.tag(h, "gpu1")

    handles = [layer.register_forward_hook(on_gpu1) for layer in layers[split:]]

    make_hook = capture_mod._Recorder._layer_hook

    def checked_hook(self, index):
        hook = make_hook(self, index)

        def run(*a, **kw):
            mode.checking = True
            try:
                return hook(*a, **kw)
            finally:
                mode.checking = False

        return run

    monkeypatch.setattr(capture_mod._Recorder, "_layer_hook", checked_hook)
    spec = CaptureSpec(tuple(StatRequest.make("token_cos", tokens=t) for t in ("all", "text", "vision")))
    try:
        with mode:
            cap = run_capture(adapter, make_samples(4), spec, batch_size=2)
    finally:
        for h in handles:
            h.remove()
    assert cap.pooled["last"].shape[0] == len(layers) + 1
    return mode


def test_hooks_use_masks_on_the_layers_device(fresh_tiny_llava, monkeypatch):
    mode = _capture_with_two_devices(fresh_tiny_llava, monkeypatch)
    assert mode.violations == []


def test_the_check_catches_masks_left_on_the_input_device(fresh_tiny_llava, monkeypatch):
    """Without the move (the bug on multi-GPU nodes) the simulated device mismatch is seen."""
    monkeypatch.setattr(token_stats.TokenMasks, "on", lambda self, device: self)
    mode = _capture_with_two_devices(fresh_tiny_llava, monkeypatch)
    assert mode.violations, "masks on the input device mixed with the second device's states went unnoticed"
