"""Peak memory is summed over every GPU the model is on, each one reset; the checkpoint size
stated before a save counts a tied tensor once, as it is written.

A CPU machine has no GPU: the model's spread over two GPUs is simulated with the virtual devices
of test_pruning_offload (what ``tensor.device`` reports), and torch.cuda's peak counters are
replaced by per-device figures the test sets, so the device set, the resets and the sum are the
code's own.
"""
from __future__ import annotations

import pytest
import torch

from tests.unit.test_pruning_offload import VirtualDevices, _layer_map, _spread
from topovlm import efficiency
from topovlm.efficiency import (EfficiencySettings, JobEfficiency, as_devices, model_devices, peak_memory,
                                reset_peak_memory, sum_device_peaks)

GPU0, GPU1, GPU2 = (torch.device("cuda", i) for i in range(3))


class FakeCounters:
    """torch.cuda's peak counters on three GPUs: the figures each device reports, and which were reset."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.allocated = {0: 300, 1: 200, 2: 7000}  # GPU 2: another model's, not this one's
        self.reserved = {0: 400, 1: 250, 2: 8000}
        self.resets: list[int] = []
        for name, fn in {"is_available": lambda: True, "synchronize": lambda d=None: None,
                         "current_device": lambda: 0, "is_initialized": lambda: False,
                         "reset_peak_memory_stats": lambda d: self.resets.append(d.index),
                         "max_memory_allocated": lambda d: self.allocated[d.index],
                         "max_memory_reserved": lambda d: self.reserved[d.index]}.items():
            monkeypatch.setattr(torch.cuda, name, fn)


def test_model_devices_are_where_its_tensors_are(fresh_tiny_llava):
    adapter = fresh_tiny_llava
    assert model_devices(adapter.model) == [torch.device("cpu")]
    adapter.decoder_layers()[7].to("meta")  # weights accelerate loads on demand hold no memory
    assert model_devices(adapter.model) == [torch.device("cpu")]
    mode = VirtualDevices()
    with mode:
        _spread(mode, adapter, _layer_map(adapter))  # layers 0-3 on GPU 0, 4-6 on GPU 1
        devices = model_devices(adapter.model, "auto", None)  # names that are no device are left out
    assert devices == [torch.device("cpu"), GPU0, GPU1]
    assert as_devices(["cuda:1", GPU1, "cpu", 0]) == [torch.device("cpu"), GPU0, GPU1]


def test_peaks_are_summed_over_devices_with_each_devices_own():
    out = sum_device_peaks({"cuda:0": {"allocated": 300, "reserved": 400}, "cuda:1": {"allocated": 200, "reserved": 250}})
    assert out["peak_memory_bytes"] == 500 and out["peak_memory_reserved_bytes"] == 650
    assert out["peak_memory_per_device_bytes"] == {"cuda:0": 300, "cuda:1": 200}
    assert out["peak_memory_reserved_per_device_bytes"] == {"cuda:0": 400, "cuda:1": 250}


def test_every_gpu_of_the_model_is_reset_and_counted(fresh_tiny_llava, monkeypatch):
    counters = FakeCounters(monkeypatch)
    adapter = fresh_tiny_llava
    mode = VirtualDevices()
    with mode:
        _spread(mode, adapter, _layer_map(adapter))
        devices = model_devices(adapter.model)
    assert reset_peak_memory(devices) == "cuda_max_memory_allocated"
    assert counters.resets == [0, 1]  # both of the model's GPUs, not GPU 2
    mem = peak_memory(devices)
    assert mem["peak_memory_bytes"] == 500 and mem["peak_memory_per_device_bytes"] == {"cuda:0": 300, "cuda:1": 200}
    assert mem["peak_memory_reserved_bytes"] == 650


def test_a_jobs_peak_spans_the_gpus_the_model_was_seen_on(fresh_tiny_llava, monkeypatch):
    """Configured as ``cuda`` (GPU 0), the model spread by a device map over GPUs 0 and 1."""
    counters = FakeCounters(monkeypatch)
    adapter = fresh_tiny_llava
    job = JobEfficiency(EfficiencySettings(enabled=False), None, "tiny", "cuda")
    assert counters.resets == [0] and job.job_peak_method == "cuda_max_memory_allocated"
    mode = VirtualDevices()
    with mode:
        _spread(mode, adapter, _layer_map(adapter))
        job.measure_baseline(adapter)  # the job sees the loaded model here
        counters.allocated[1] = 900  # GPU 1's peak rises later in the job
        out = job.finish(adapter, pruned=False, eval_wall_time_s=None, original_layers=8)
    assert out["job_peak_memory_bytes"] == 300 + 900
    assert out["job_peak_memory_per_device_bytes"] == {"cuda:0": 300, "cuda:1": 900}
    assert out["job_peak_memory_method"] == "cuda_max_memory_allocated"
    flat = efficiency.flat_numeric(out)  # W&B gets each device's figure
    assert flat["job_peak_memory_per_device_bytes/cuda:1"] == 900.0


def test_earlier_windows_peaks_are_kept_per_device():
    before = sum_device_peaks({"cuda:0": {"allocated": 800, "reserved": 900}, "cuda:1": {"allocated": 10, "reserved": 20}})
    now = sum_device_peaks({"cuda:0": {"allocated": 300, "reserved": 400}, "cuda:1": {"allocated": 200, "reserved": 250}})
    out = efficiency._max_peaks(before, now)
    assert out["peak_memory_per_device_bytes"] == {"cuda:0": 800, "cuda:1": 200}
    assert out["peak_memory_bytes"] == 810  # the larger of the two windows' sums


def test_the_stated_checkpoint_size_counts_tied_weights_once(tmp_path):
    from topovlm.adapters.tiny import tiny_llama
    from topovlm.export import checkpoint_bytes

    model, _ = tiny_llama(num_layers=2, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    written = sum(f.stat().st_size for f in tmp_path.glob("*.safetensors"))
    tied = model.lm_head.weight.numel() * model.lm_head.weight.element_size()
    assert abs(checkpoint_bytes(model) - written) < 2**14  # the safetensors header
    assert written < sum(t.numel() * t.element_size() for t in model.state_dict().values()) - tied // 2
