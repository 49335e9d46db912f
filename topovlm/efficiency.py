"""Efficiency of a (pruned) model, per job: size, latency, throughput, memory, and speedup.

:func:`measure` runs the model on one fixed synthetic input (same for pruned and
unpruned models of a family: a fixed 64x64 image and a question of repeated words,
``prompt_words`` long) and reports

* ``params_total``, ``params_decoder_layers``, ``num_decoder_layers``;
* ``prefill_latency_s``: one forward over the prompt (with KV cache), median of
  ``repeats`` after ``warmup`` runs;
* ``decode_tokens_per_s``: greedy generation of exactly ``new_tokens`` tokens, median
  time minus the median prefill, over ``new_tokens - 1`` decode steps;
* ``generate_latency_s``: the median time of that generation;
* ``model_memory_bytes``: the model's own tensors (parameters and buffers, each storage
  counted once): what pruning saves, whatever else the process holds;
* ``peak_memory_bytes`` during the measurement on GPU (see below).

The probe is on by default on GPU and off by default on CPU (``efficiency.enabled=null``):
timings on a shared CPU are noise (a 10% pruned model came out slower than the unpruned
one), and each job spent about half a minute on them. ``efficiency.enabled=true`` measures
on CPU too; results.json's ``efficiency.skipped`` says why a job measured nothing.

On GPU every timed region is bracketed by ``torch.cuda.synchronize()``.

Peak memory (``peak_memory_method`` says which one was used):

* CUDA: ``torch.cuda.max_memory_allocated`` (tensors; ``..._reserved`` too) of every GPU
  the model's parameters and buffers are on (:func:`model_devices`; with ``device_map`` a
  model spans several), each reset by ``torch.cuda.reset_peak_memory_stats``;
  ``peak_memory_bytes`` is the sum of each GPU's own peak (:func:`sum_device_peaks`: the
  simultaneous total is at most that, equal on one GPU) and ``peak_memory_per_device_bytes``
  each GPU's. A pruned model's removed layers wait on the CPU (:mod:`topovlm.pruning`), so a
  pruned model's figure holds its kept layers only. Tensors the model keeps on the CPU under a
  ``device_map`` are not in it;
* CPU (Linux): the process's resident-set high-water mark (``VmHWM``), reset by
  writing ``5`` to ``/proc/self/clear_refs``, reported as ``process_peak_rss_bytes``
  only: it counts the whole process (Python, libraries, the dataset, other jobs' leftovers, and
  a pooled model's removed layers, which wait in the same memory), so on CPU there is no
  ``peak_memory_ratio``: the pruned-to-unpruned memory ratio is ``model_memory_ratio``, from
  ``model_memory_bytes``.
  tracemalloc is not used: it does not see torch's allocations; torch has no CPU
  peak-allocation counter outside the profiler (``bench/memory_ratio.py`` reads the
  profiler's memory events for the CPU counterpart of the GPU figure);
* elsewhere: ``ru_maxrss`` (not resettable: a process-lifetime peak).

:class:`JobEfficiency` is what the runner uses: it resets the peak at the start of a
job, measures the unpruned model once per (model, input settings, machine) and caches
it under ``<cache_dir>/efficiency/``, measures the pruned one, and reports speedups:
``prefill_speedup = baseline latency / pruned latency``, ``decode_speedup = pruned
tokens/s / baseline tokens/s``, ``ideal_speedup = original layers / kept layers``
(what removing decoder layers would give if they were all the cost).
"""
from __future__ import annotations

import itertools
import json
import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Union

import torch

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass
class EfficiencySettings:
    enabled: bool | None = None  # None: on GPU, off on CPU (see the module docstring)
    prompt_words: int = 64  # question length; the prompt's token count is reported
    new_tokens: int = 16
    warmup: int = 1
    repeats: int = 3  # a job is timed on top of its evaluation: keep it a small fraction of it
    batch_size: int = 1
    cache: bool = True  # cache the unpruned model's numbers per model and machine

    @classmethod
    def from_cfg(cls, cfg: Any, model_source: str | None = None, device: Any = None) -> "EfficiencySettings":
        """From an ``efficiency`` config node (None: defaults; lighter ones for tiny test models).
        ``enabled`` unset: on when ``device`` is a GPU, off otherwise."""
        base = cls(prompt_words=8, new_tokens=4, warmup=1, repeats=3) if model_source == "tiny" else cls()
        data = {k: v for k, v in (cfg or {}).items() if v is not None}  # None: keep the default
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"efficiency: unknown keys {sorted(unknown)}; allowed: {', '.join(cls.__dataclass_fields__)}")
        out = cls(**{**asdict(base), **data})
        if out.enabled is None:
            out.enabled = on_gpu(device)
        return out

    def skipped(self, explicit: bool) -> str | None:
        """Why nothing was timed (None: it was); ``explicit``: the config set ``enabled``."""
        if self.enabled:
            return None
        if explicit:
            return "efficiency.enabled=false"
        return ("off by default on CPU: timings on a shared CPU are noise and cost about 30 s per job; "
                "efficiency.enabled=true measures them")


def on_gpu(device: Any) -> bool:
    try:
        return device is not None and torch.device(str(device)).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def model_memory_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers, each storage once (tied weights share one)."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return int(sum(seen.values()))


# ---------------------------------------------------------------------------------------- memory
def _proc_status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


#: one device or several
Devices = Union[torch.device, str, int, Iterable[Union[torch.device, str, int]], None]


def _device(d: torch.device | str | int) -> torch.device | None:
    """``d`` as a device, a bare ``cuda`` given its index (the current GPU); None if not a device."""
    try:
        dev = torch.device(d) if not isinstance(d, int) else torch.device("cuda", d)
    except (RuntimeError, TypeError):
        return None
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return dev


def as_devices(devices: Devices) -> list[torch.device]:
    """One device or several, as a sorted list without repeats (unparsable names, e.g. ``auto``, left out)."""
    if devices is None:
        return []
    items = [devices] if isinstance(devices, (str, int, torch.device)) else list(devices)
    unique = {str(d): d for d in (_device(x) for x in items) if d is not None}
    return sorted(unique.values(), key=lambda d: (d.type, -1 if d.index is None else d.index))


def model_devices(model: torch.nn.Module, *extra: Any) -> list[torch.device]:
    """The devices holding the model's parameters and buffers (``meta`` tensors, weights that
    accelerate loads on demand, hold no memory and are left out), plus ``extra`` (the device its
    inputs go to)."""
    held = (t.device for t in itertools.chain(model.parameters(), model.buffers()) if t.device.type != "meta")
    return as_devices([*held, *(e for e in extra if e is not None)])


def _cuda(devices: Devices) -> list[torch.device]:
    if not torch.cuda.is_available():
        return []
    return [d for d in as_devices(devices) if d.type == "cuda"]


def used_cuda_devices() -> list[torch.device]:
    """The GPUs this process already holds memory on (none before CUDA starts; reading the
    allocator's counters starts nothing)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return []
    return [torch.device("cuda", i) for i in range(torch.cuda.device_count()) if torch.cuda.memory_reserved(i) > 0]


def sum_device_peaks(per_device: Mapping[str, Mapping[str, int]]) -> dict[str, Any]:
    """The peak-memory entries from each GPU's ``{"allocated": .., "reserved": ..}`` peaks:
    the sums, and each device's own figures."""
    return {"peak_memory_bytes": int(sum(v["allocated"] for v in per_device.values())),
            "peak_memory_reserved_bytes": int(sum(v["reserved"] for v in per_device.values())),
            "peak_memory_per_device_bytes": {d: int(v["allocated"]) for d, v in per_device.items()},
            "peak_memory_reserved_per_device_bytes": {d: int(v["reserved"]) for d, v in per_device.items()},
            "peak_memory_method": "cuda_max_memory_allocated"}


def reset_peak_memory(device: Devices = None) -> str:
    """Start a new peak-memory window on ``device`` (one or several; every GPU among them is
    reset); returns the method that will be used."""
    gpus = _cuda(device)
    if gpus:
        for dev in gpus:
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        return "cuda_max_memory_allocated"
    try:
        _CLEAR_REFS.write_text("5")
        if _proc_status_kb("VmHWM") is not None:
            return "rss_hwm"
    except OSError:
        pass
    return "ru_maxrss"


def peak_memory(device: Devices = None) -> dict[str, Any]:
    """Peak since the last :func:`reset_peak_memory`, summed over the GPUs among ``device``
    (see the module docstring)."""
    gpus = _cuda(device)
    if gpus:
        per_device = {}
        for dev in gpus:
            torch.cuda.synchronize(dev)
            per_device[str(dev)] = {"allocated": torch.cuda.max_memory_allocated(dev),
                                    "reserved": torch.cuda.max_memory_reserved(dev)}
        return sum_device_peaks(per_device)
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None and _CLEAR_REFS.exists():
        return {"peak_memory_bytes": hwm * 1024, "peak_memory_method": "rss_hwm"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_bytes": int(rss) * (1 if platform.system() == "Darwin" else 1024),
            "peak_memory_method": "ru_maxrss"}


# ---------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_repeats(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> tuple[float, list[float]]:
    """(median, every time) of ``repeats`` synchronised runs after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times



def fixed_inputs(adapter: "ModelAdapter", settings: EfficiencySettings) -> dict[str, torch.Tensor]:
    """The fixed benchmark input: a 64x64 picture (vision models) and a repeated-word question."""
    from PIL import Image, ImageDraw

    from topovlm.data.types import VQASample

    image = None
    if adapter.family != "causal_lm":
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).ellipse((8, 8, 40, 40), fill=(200, 40, 40))
    words = " ".join(["shape"] * max(1, settings.prompt_words))
    sample = VQASample("efficiency", image, f"{words} What color is the circle? Answer with one word.", "", "")
    return adapter.build_inputs([sample] * settings.batch_size)


@torch.inference_mode()
def measure(adapter: "ModelAdapter", settings: EfficiencySettings | None = None) -> dict[str, Any]:
    """Size, prefill latency, decode throughput and peak memory of ``adapter``'s model."""
    s = settings or EfficiencySettings()
    model, device = adapter.model, adapter.device
    counts = adapter.parameter_counts()
    inputs = fixed_inputs(adapter, s)
    tok = adapter.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    devices = model_devices(model, device)  # every GPU of a spread model
    reset_peak_memory(devices)

    def prefill() -> Any:
        return model(**inputs, use_cache=True)

    def generate(n: int) -> Callable[[], Any]:
        return lambda: model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad)

    t_prefill, prefill_times = _timed_repeats(prefill, device, s.warmup, s.repeats)
    # decode: per repeat, N tokens minus 1 token, timed back to back (paired: the difference of
    # two separate medians came out near zero or negative on a loaded machine)
    one, many = generate(1), generate(s.new_tokens)
    for _ in range(s.warmup):
        one(), many()
    pairs = []
    for _ in range(max(1, s.repeats)):
        t1 = _timed_repeats(one, device, 0, 1)[0]
        tn = _timed_repeats(many, device, 0, 1)[0]
        pairs.append((t1, tn))
    t_generate = statistics.median(tn for _, tn in pairs)
    decode_times = [tn - t1 for t1, tn in pairs]
    decode_time = statistics.median(decode_times)
    steps = s.batch_size * max(1, s.new_tokens - 1)
    mem = peak_memory(devices)
    if mem["peak_memory_method"] != "cuda_max_memory_allocated":  # the whole process's: named as such
        mem = {"process_peak_rss_bytes": mem["peak_memory_bytes"], "process_peak_rss_method": mem["peak_memory_method"]}
    return {
        **counts,
        "model_memory_bytes": model_memory_bytes(model),
        "num_decoder_layers": adapter.num_layers,
        "prompt_tokens": int(inputs["input_ids"].shape[1]),
        "batch_size": s.batch_size,
        "new_tokens": s.new_tokens,
        "prefill_latency_s": t_prefill,
        "generate_latency_s": t_generate,
        # None when the decode steps took no measurable time over the noise (loaded machine); None,
        # not NaN, because JSON has no NaN: a cached baseline must equal a fresh one
        "decode_tokens_per_s": steps / decode_time if decode_time > 0 else None,
        # repeat spread, for the variance of the medians above
        "prefill_latency_range_s": [min(prefill_times), max(prefill_times)],
        "decode_time_range_s": [min(decode_times), max(decode_times)],
        **mem,
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
    }


def device_name(device: torch.device | str) -> str:
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"cpu:{platform.processor() or platform.machine()}:{os.cpu_count()}cores"


def speedups(pruned: dict[str, Any], base: dict[str, Any], original_layers: int) -> dict[str, float]:
    kept = max(1, int(pruned["num_decoder_layers"]))
    out = {
        "ideal_speedup": original_layers / kept,
        "prefill_speedup": base["prefill_latency_s"] / pruned["prefill_latency_s"],
        "decode_speedup": (pruned["decode_tokens_per_s"] / base["decode_tokens_per_s"]
                           if pruned["decode_tokens_per_s"] and base["decode_tokens_per_s"] else None),
        "generate_speedup": base["generate_latency_s"] / pruned["generate_latency_s"],
        "params_ratio": pruned["params_total"] / base["params_total"],
        "decoder_params_ratio": pruned["params_decoder_layers"] / max(1, base["params_decoder_layers"]),
    }
    if base.get("model_memory_bytes") and pruned.get("model_memory_bytes"):
        out["model_memory_ratio"] = pruned["model_memory_bytes"] / base["model_memory_bytes"]
    if base.get("peak_memory_bytes") and pruned.get("peak_memory_bytes"):  # GPU: tensors allocated while timing
        out["peak_memory_ratio"] = pruned["peak_memory_bytes"] / base["peak_memory_bytes"]
    return out


# ---------------------------------------------------------------------------------------- per job
class JobEfficiency:
    """Efficiency bookkeeping of one runner job (pruned and unpruned)."""

    def __init__(self, settings: EfficiencySettings, cache_root: Path | None, model_key: str, device: Any = None) -> None:
        self.settings = settings
        self.cache_root = cache_root
        self.model_key = model_key
        self.baseline: dict[str, Any] | None = None
        self.baseline_from_cache = False
        self.device = device
        # the GPUs whose peaks make the job's: the configured one, those the model is seen on
        self.devices = as_devices(device)
        # the job's peak-memory window starts here, on every GPU the process already uses (a
        # pooled model's); one it has not touched yet starts counting from zero anyway
        self.job_peak_method = reset_peak_memory([*self.devices, *used_cuda_devices()])
        self.explicit = False  # the config set efficiency.enabled (else: the device's default)
        self._peak_before: dict[str, Any] = {}  # peaks of earlier windows (measure() starts its own window)

    def watch(self, adapter: "ModelAdapter") -> None:
        """Count the GPUs ``adapter``'s model is on (with ``device_map``, several)."""
        self.devices = as_devices([*self.devices, *model_devices(adapter.model, adapter.device)])

    def _save_peak(self) -> None:
        self._peak_before = _max_peaks(self._peak_before, peak_memory(self.devices))

    def _path(self, adapter: "ModelAdapter", kept: list[int] | None = None) -> Path | None:
        """Cache file of the unpruned model's numbers, or (``kept``) of one kept-layer set's."""
        if self.cache_root is None or not self.settings.cache:
            return None
        from topovlm.identity import digest

        ident = {"model": self.model_key, "settings": asdict(self.settings), "device": device_name(adapter.device),
                 "host": platform.node(), "threads": torch.get_num_threads(), "dtype": str(next(adapter.model.parameters()).dtype)}
        if kept is None:
            return self.cache_root / "efficiency" / f"unpruned-{digest(ident)}.json"
        return self.cache_root / "efficiency" / f"kept-{digest({**ident, 'kept_layers': list(kept)})}.json"

    def _measure_pruned(self, adapter: "ModelAdapter") -> tuple[dict[str, Any], bool]:
        """Timing depends on the architecture only: once per distinct kept-layer set and model."""
        path = self._path(adapter, list(adapter.kept_layers))
        if path is not None and path.is_file():
            try:
                return json.loads(path.read_text()), True
            except (OSError, ValueError):
                pass
        current = measure(adapter, self.settings)
        if path is not None:
            from topovlm.results import write_json_atomic

            write_json_atomic(path, current)
        return current, False

    def measure_baseline(self, adapter: "ModelAdapter") -> dict[str, Any] | None:
        """The unpruned model's numbers (call before pruning): from the cache, else measured and cached."""
        self.watch(adapter)
        if not self.settings.enabled:
            return None
        path = self._path(adapter)
        if path is not None and path.is_file():
            try:
                self.baseline = json.loads(path.read_text())
                self.baseline_from_cache = True
                return self.baseline
            except (OSError, ValueError):
                pass
        self._save_peak()
        self.baseline = measure(adapter, self.settings)
        if path is not None:
            from topovlm.results import write_json_atomic

            write_json_atomic(path, self.baseline)
        return self.baseline

    def finish(self, adapter: "ModelAdapter", *, pruned: bool, eval_wall_time_s: float | None,
               original_layers: int) -> dict[str, Any]:
        """Everything for results.json's ``efficiency`` (the job's peak memory is read first)."""
        self.watch(adapter)
        job_peak = _max_peaks(self._peak_before, peak_memory(self.devices))
        gpu = job_peak["peak_memory_method"] == "cuda_max_memory_allocated"
        out: dict[str, Any] = {**adapter.parameter_counts(), "num_decoder_layers": adapter.num_layers,
                               "num_decoder_layers_original": original_layers,
                               "model_memory_bytes": model_memory_bytes(adapter.model),
                               # GPU: the tensors the job allocated; CPU: the whole process's, named so
                               ("job_peak_memory_bytes" if gpu else "process_peak_rss_bytes"):
                                   job_peak["peak_memory_bytes"],
                               ("job_peak_memory_method" if gpu else "process_peak_rss_method"):
                                   job_peak["peak_memory_method"]}
        if gpu:
            out["job_peak_memory_per_device_bytes"] = job_peak["peak_memory_per_device_bytes"]
        if eval_wall_time_s is not None:
            out["eval_wall_time_s"] = float(eval_wall_time_s)
        if not self.settings.enabled:
            out["skipped"] = self.settings.skipped(self.explicit)
            return out
        if pruned or self.baseline is None:
            current, out["measurement_from_cache"] = self._measure_pruned(adapter) if pruned else \
                (measure(adapter, self.settings), False)
        else:
            current = dict(self.baseline)
        out.update(current)
        if self.baseline is not None:
            out.update(speedups(current, self.baseline, original_layers))
            out["baseline"] = {k: self.baseline[k] for k in ("prefill_latency_s", "decode_tokens_per_s",
                                                              "generate_latency_s", "params_total",
                                                              "model_memory_bytes", "peak_memory_bytes")
                               if k in self.baseline}
            out["baseline_from_cache"] = self.baseline_from_cache
        return out


def _max_peaks(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two peak windows' figures as one: each entry the larger of the two (per device too)."""
    if not a:
        return dict(b)
    out = {**a, **b}
    for key in ("peak_memory_bytes", "peak_memory_reserved_bytes"):
        if key in a or key in b:
            out[key] = max(a.get(key, 0), b.get(key, 0))
    for key in ("peak_memory_per_device_bytes", "peak_memory_reserved_per_device_bytes"):
        if key in a or key in b:
            da, db = a.get(key, {}), b.get(key, {})
            out[key] = {d: max(da.get(d, 0), db.get(d, 0)) for d in sorted({*da, *db})}
    return out


def flat_numeric(eff: dict[str, Any]) -> dict[str, float]:
    """The numeric entries (nested ``baseline`` as ``baseline/<k>``), for W&B."""
    out: dict[str, float] = {}
    for k, v in eff.items():
        if isinstance(v, dict):
            out.update({f"{k}/{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, (int, float)) and not isinstance(vv, bool)})
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out
