"""Removed layers wait on the CPU while the pruned model runs, and come back to the device each
of their tensors was on (a device map over several GPUs included), bit for bit.

A CPU machine has one device, so the accelerators are simulated: a TorchFunctionMode gives
tagged tensors a virtual device (what ``tensor.device`` reports) and makes ``.to(device)`` to
another device a real copy carrying the target's tag (none for the CPU), as a transfer would.
Tags follow an accelerate-style ``device_map`` of the decoder layers. Code that forgot to move
a tensor, or moved it to the wrong GPU, sees the tag it left behind.
"""
from __future__ import annotations

import weakref
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.helpers import make_samples
from topovlm.model_pool import ModelPool
from topovlm.pruning import LayerSnapshot, layers_removed, remove_layers

_DEVICE_GET = torch.Tensor.device.__get__
_DATA_GET, _DATA_SET = torch.Tensor.data.__get__, torch.Tensor.data.__set__


class VirtualDevices(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[int, tuple[torch.device, Any]] = {}
        self.copies = 0  # transfers between (virtual) devices

    def tag(self, t: torch.Tensor, device: torch.device | str | None) -> None:
        key = id(t)
        if device is None or torch.device(device).type == "cpu":
            self.tags.pop(key, None)
        else:
            self.tags[key] = (torch.device(device), weakref.ref(t, lambda _, k=key: self.tags.pop(k, None)))

    def device_of(self, t: torch.Tensor) -> torch.device:
        entry = self.tags.get(id(t))
        return entry[0] if entry and entry[1]() is t else torch.device("cpu")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == _DEVICE_GET:
            return self.device_of(args[0])
        if func == _DATA_GET:  # param.data: a view where the parameter is
            out = func(*args, **kwargs)
            self.tag(out, self.device_of(args[0]))
            return out
        if func == _DATA_SET:  # param.data = moved: the parameter now lives where ``moved`` does
            out = func(*args, **kwargs)
            self.tag(args[0], self.device_of(args[1]))
            return out
        if func is torch.Tensor.to:
            target = kwargs.get("device", args[1] if len(args) > 1 else None)
            if isinstance(target, (str, torch.device)) and torch.device(target) != self.device_of(args[0]):
                self.copies += 1
                out = args[0].detach().clone()  # a transfer: a new tensor on the target
                self.tag(out, target)
                return out
        return func(*args, **kwargs)


def _tensors(layer: torch.nn.Module) -> list[torch.Tensor]:
    return [*layer.parameters(), *layer.buffers()]


def _spread(mode: VirtualDevices, adapter, device_map: dict[str, int]) -> None:
    """Tag every decoder-layer tensor with the GPU its layer is mapped to (longest prefix)."""
    for name, t in [*adapter.model.named_parameters(), *adapter.model.named_buffers()]:
        hits = [k for k in device_map if name.startswith(k + ".")]
        if hits:
            mode.tag(t, f"cuda:{device_map[max(hits, key=len)]}")


def _layer_map(adapter) -> dict[str, int]:
    """layers 0-3 on GPU 0, 4-7 on GPU 1, as ``device_map="auto"`` splits a model over two GPUs."""
    prefix = next(n for n, m in adapter.model.named_modules() if m is adapter.decoder_layers())
    return {f"{prefix}.{i}": i // 4 for i in range(adapter.num_layers)}


def test_removed_layers_go_to_the_cpu_and_back_to_their_gpu(fresh_tiny_llava):
    adapter = fresh_tiny_llava
    layers = list(adapter.decoder_layers())
    params = [[id(p) for p in layer.parameters()] for layer in layers]
    before = [[t.detach().clone() for t in _tensors(layer)] for layer in layers]
    inputs = adapter.build_inputs(make_samples(2))
    with torch.no_grad():
        logits = adapter.model(**inputs).logits
    mode = VirtualDevices()
    with mode:
        _spread(mode, adapter, _layer_map(adapter))
        snapshot = LayerSnapshot.take(adapter)
        remove_layers(adapter, [1, 5, 6])
        on = [{t.device for t in _tensors(layer)} for layer in layers]
        restored = None
    # while pruned: the removed layers are on the CPU, the kept ones where the map put them
    assert on[1] == on[5] == on[6] == {torch.device("cpu")}
    assert on[0] == on[2] == on[3] == {torch.device("cuda:0")} and on[4] == on[7] == {torch.device("cuda:1")}
    moved_out = mode.copies
    assert moved_out == sum(len(_tensors(layers[i])) for i in (1, 5, 6))
    with mode:
        snapshot.restore(adapter)
        restored = [{t.device for t in _tensors(layer)} for layer in adapter.decoder_layers()]
    assert restored == [{torch.device(f"cuda:{i // 4}")} for i in range(8)]  # each back on its own GPU
    assert mode.copies == 2 * moved_out  # only the removed layers travelled
    for i, layer in enumerate(adapter.decoder_layers()):
        assert [id(p) for p in layer.parameters()] == params[i]  # the same parameter objects
        for a, b in zip(_tensors(layer), before[i]):
            assert torch.equal(a, b) and a.dtype == b.dtype  # bit for bit
    with torch.no_grad():
        assert torch.equal(adapter.model(**inputs).logits, logits)


def test_a_tensor_the_pruned_model_still_uses_stays(fresh_tiny_llava):
    adapter = fresh_tiny_llava
    layers = adapter.decoder_layers()
    layers[5].mlp.down_proj.weight = layers[4].mlp.down_proj.weight  # shared by a kept and a removed layer
    mode = VirtualDevices()
    with mode:
        _spread(mode, adapter, _layer_map(adapter))
        remove_layers(adapter, [5])
        shared, own = layers[4].mlp.down_proj.weight.device, layers[5].mlp.up_proj.weight.device
    assert shared == torch.device("cuda:1") and own == torch.device("cpu")


def test_scoring_removals_leave_layers_in_place_unless_asked(fresh_tiny_llava):
    adapter = fresh_tiny_llava
    layer = adapter.decoder_layers()[2]
    mode = VirtualDevices()
    with mode:
        _spread(mode, adapter, _layer_map(adapter))
        with layers_removed(adapter, [2]):
            inside = layer.self_attn.q_proj.weight.device
        copies = mode.copies
        with layers_removed(adapter, [2], offload=True):
            offloaded = layer.self_attn.q_proj.weight.device
        after = layer.self_attn.q_proj.weight.device
    assert inside == torch.device("cuda:0") and copies == 0  # one scoring pass: no transfers
    assert offloaded == torch.device("cpu") and after == torch.device("cuda:0")


def test_the_pool_holds_removed_layers_on_the_cpu_until_release(fresh_tiny_llava):
    """The runner's path: snapshot at load, prune, run, release; the next job gets the map as loaded."""
    pool = ModelPool()
    mode = VirtualDevices()
    with mode:
        _spread(mode, fresh_tiny_llava, _layer_map(fresh_tiny_llava))
        adapter = pool.acquire({"name": "tiny"}, lambda cfg: fresh_tiny_llava)
        layers = list(adapter.decoder_layers())
        remove_layers(adapter, [0, 7])
        pruned = {layers[0].mlp.gate_proj.weight.device, layers[7].mlp.gate_proj.weight.device}
        pool.release(adapter)
        back = [layer.mlp.gate_proj.weight.device for layer in adapter.decoder_layers()]
    assert pruned == {torch.device("cpu")}
    assert back == [torch.device(f"cuda:{i // 4}") for i in range(8)]
    assert pool._entry is not None  # the weights checksum agreed: the model is kept for the next job


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_removed_layers_free_gpu_memory(fresh_tiny_llava):
    adapter = fresh_tiny_llava
    adapter.model.to("cuda")
    snapshot = LayerSnapshot.take(adapter)
    before = torch.cuda.memory_allocated()
    layer_bytes = sum(t.numel() * t.element_size() for t in _tensors(adapter.decoder_layers()[3]))
    remove_layers(adapter, [3])
    assert torch.cuda.memory_allocated() <= before - layer_bytes
    snapshot.restore(adapter)
    assert torch.cuda.memory_allocated() == before
    assert all(t.is_cuda for t in adapter.model.parameters())
