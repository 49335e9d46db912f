"""Efficiency metrics: measurement, speedups, peak-memory reset, the unpruned baseline cache, the runner."""
from __future__ import annotations

import json

import mmap

import pytest

from tests.helpers import compose, tiny_overrides
from topovlm import efficiency
from topovlm.efficiency import EfficiencySettings, JobEfficiency, measure, peak_memory, reset_peak_memory, speedups

FAST = EfficiencySettings(enabled=True, prompt_words=4, new_tokens=3, warmup=1, repeats=2)


def test_measure_and_speedup_after_pruning(fresh_tiny_llava):
    from topovlm.pruning import remove_layers

    adapter = fresh_tiny_llava
    base = measure(adapter, FAST)
    for key in ("params_total", "params_decoder_layers", "prefill_latency_s", "decode_tokens_per_s",
                "generate_latency_s", "model_memory_bytes", "prompt_tokens"):
        assert base[key] > 0, key
    assert base["num_decoder_layers"] == 8 and base["new_tokens"] == 3
    remove_layers(adapter, [2, 5])
    pruned = measure(adapter, FAST)
    assert pruned["prompt_tokens"] == base["prompt_tokens"]  # the same fixed input
    assert pruned["params_decoder_layers"] == base["params_decoder_layers"] * 6 // 8
    sp = speedups(pruned, base, original_layers=8)
    assert sp["ideal_speedup"] == pytest.approx(8 / 6)
    assert sp["decoder_params_ratio"] == pytest.approx(0.75)
    assert sp["prefill_speedup"] > 0 and sp["decode_speedup"] > 0
    # memory is the model's own tensors, not the process's: it falls with the layers removed
    layer_bytes = sum(p.numel() * p.element_size() for p in adapter.decoder_layers()[0].parameters())
    assert base["model_memory_bytes"] - pruned["model_memory_bytes"] == 2 * layer_bytes
    assert sp["model_memory_ratio"] == pytest.approx(pruned["model_memory_bytes"] / base["model_memory_bytes"])
    assert sp["model_memory_ratio"] < 1
    assert "peak_memory_ratio" not in sp and "peak_memory_bytes" not in base  # CPU: no whole-process ratio


def test_peak_memory_is_reset():
    method = reset_peak_memory("cpu")
    if method != "rss_hwm":
        pytest.skip("no resettable RSS high-water mark on this platform")
    # an anonymous mapping goes back to the OS when closed (a freed tensor may stay in the heap)
    size = 64 * 2**20
    block = mmap.mmap(-1, size)
    block.write(b"\1" * size)  # touched: resident
    high = peak_memory("cpu")["peak_memory_bytes"]
    block.close()
    reset_peak_memory("cpu")
    assert peak_memory("cpu")["peak_memory_bytes"] < high - 32 * 2**20


def test_unpruned_baseline_is_cached_per_model(tiny_llava, tmp_path, monkeypatch):
    calls = []
    real = efficiency.measure
    monkeypatch.setattr(efficiency, "measure", lambda a, s: calls.append(1) or real(a, s))
    first = JobEfficiency(FAST, tmp_path, "tiny-a")
    base = first.measure_baseline(tiny_llava)
    second = JobEfficiency(FAST, tmp_path, "tiny-a")
    assert second.measure_baseline(tiny_llava) == base and second.baseline_from_cache
    assert len(calls) == 1
    JobEfficiency(FAST, tmp_path, "tiny-b").measure_baseline(tiny_llava)  # another model: measured
    assert len(calls) == 2
    out = second.finish(tiny_llava, pruned=False, eval_wall_time_s=1.5, original_layers=8)
    assert len(calls) == 2  # unpruned job: its own numbers are the baseline's
    assert out["prefill_speedup"] == 1.0 and out["eval_wall_time_s"] == 1.5 and out["model_memory_bytes"] > 0


def test_settings_from_config():
    assert EfficiencySettings.from_cfg(None, "tiny").new_tokens < EfficiencySettings.from_cfg(None).new_tokens
    assert EfficiencySettings.from_cfg({"repeats": 9}).repeats == 9
    with pytest.raises(ValueError, match="unknown keys"):
        EfficiencySettings.from_cfg({"repeat": 9})
    # unset: off on CPU (timings there are noise), on on GPU; an explicit value wins
    assert EfficiencySettings.from_cfg(None, device="cpu").enabled is False
    assert EfficiencySettings.from_cfg({"enabled": None}, device="cuda").enabled is True
    assert EfficiencySettings.from_cfg({"enabled": True}, device="cpu").enabled is True
    assert "off by default on CPU" in EfficiencySettings.from_cfg(None, device="cpu").skipped(explicit=False)


def test_cpu_job_skips_efficiency_by_default_and_the_summary_says_why(tmp_path):
    from topovlm.runner import run_job
    from topovlm.summary import build_summary

    res = run_job(compose(tiny_overrides(tmp_path, "task.dataset.n=4", "calibration.n=6", "sparsity=0.25")),
                  tmp_path / "sweep" / "0_a")
    eff = res["efficiency"]
    assert "prefill_speedup" not in eff and not (tmp_path / "cache" / "efficiency").exists()
    assert eff["skipped"].startswith("off by default on CPU") and eff["model_memory_bytes"] > 0
    md = build_summary([tmp_path / "sweep"], plots=False).full_markdown()
    assert "Efficiency: not measured (off by default on CPU" in md


def test_runner_records_efficiency_and_speedup(tmp_path):
    from topovlm.runner import run_job

    base = ["task.dataset.n=4", "task.max_new_tokens=2", "calibration.n=6", "efficiency.enabled=true"]
    res = run_job(compose(tiny_overrides(tmp_path, *base, "sparsity=0.25")), tmp_path / "a")
    eff = json.loads((tmp_path / "a" / "results.json").read_text())["efficiency"]
    assert eff == res["efficiency"]
    assert eff["num_decoder_layers"] == 9 and eff["num_decoder_layers_original"] == 12
    assert eff["ideal_speedup"] == pytest.approx(12 / 9) and eff["params_ratio"] < 1
    assert eff["eval_wall_time_s"] > 0 and eff["baseline_from_cache"] is False
    assert len(list((tmp_path / "cache" / "efficiency").glob("unpruned-*.json"))) == 1
    res2 = run_job(compose(tiny_overrides(tmp_path, *base, "sparsity=0.5")), tmp_path / "b")
    assert res2["efficiency"]["baseline_from_cache"] is True  # a sweep measures the unpruned model once
    assert res2["efficiency"]["baseline"] == eff["baseline"]


def test_unmeasurable_decode_is_none_and_survives_the_cache(fresh_tiny_llava):
    # on a loaded machine the decode steps can take no measurable time over the noise: the
    # baseline says None (not NaN, which JSON turns into null), so a cached copy equals a fresh one
    from topovlm.results import to_jsonable

    base = measure(fresh_tiny_llava, FAST)
    base["decode_tokens_per_s"] = None
    assert json.loads(json.dumps(to_jsonable(base))) == base
    sp = speedups(dict(base, decode_tokens_per_s=12.0), base, original_layers=8)
    assert sp["decode_speedup"] is None and sp["prefill_speedup"] > 0
