"""Does the peak memory of a layer-pruned model track its parameter ratio, within what the
activations explain? On CPU, where ``efficiency`` reports no ``peak_memory_ratio``.

On a GPU the job's ``peak_memory_ratio`` is ``max_memory_allocated`` of the pruned model over
the unpruned one's: the model's tensors plus the activations of the timed input. On CPU the
harness has only the process's resident-set peak, which counts the whole process (here: the
unpruned model this script keeps for the next sparsity, Python, libraries), so it reports no
ratio. This script measures the CPU counterpart of ``max_memory_allocated``: the model's own
tensors (``model_memory_bytes``) plus the highest level torch's CPU allocations reach above
them while the model runs the fixed efficiency input (a prefill, then greedy generation of
``--new-tokens`` tokens), read from the profiler's memory events (``profile_memory=True``:
every allocation and free, in order). The process's RSS peak ratio is shown beside it.

For each sparsity, evenly spaced decoder layers (never the first) are removed from a copy of
the model. The check: ``model_pruned <= peak_pruned <= model_pruned + activations_unpruned``
(weights always resident; activations do not grow when layers go), i.e. ``peak_memory_ratio``
lies between the pruned model's share of the unpruned peak and that share plus the unpruned
activations' share.

Writes ``bench/results/memory_ratio_<model>_<date>.md`` and exits non-zero when the check fails.

    nice -n 10 .venv/bin/python bench/memory_ratio.py --model default --threads 1
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from efficiency_speedup import even_drop, load  # noqa: E402 - after the sys.path set-up above
from topovlm.efficiency import (EfficiencySettings, device_name, fixed_inputs, model_memory_bytes,  # noqa: E402
                                peak_memory, reset_peak_memory)
from topovlm.pruning import remove_layers  # noqa: E402 - after the sys.path set-up above


def allocation_peak(events: list[tuple[int, int]]) -> int:
    """The highest running total of (time, +allocated / -freed bytes) events, above the start."""
    level = peak = 0
    for _, nbytes in sorted(events):
        level += nbytes
        peak = max(peak, level)
    return peak


@torch.inference_mode()
def run_peak(adapter, settings: EfficiencySettings) -> dict[str, int]:
    """Model bytes, the allocation peak above them, and the process RSS peak, for one prefill and
    one greedy generation of the fixed input."""
    from torch.profiler import ProfilerActivity, profile

    model, tok = adapter.model, adapter.tokenizer
    inputs = fixed_inputs(adapter, settings)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    gc.collect()
    reset_peak_memory("cpu")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(**inputs, use_cache=True)
        model.generate(**inputs, max_new_tokens=settings.new_tokens, min_new_tokens=settings.new_tokens,
                       do_sample=False, pad_token_id=pad)
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    rss = peak_memory("cpu")
    return {"model": model_memory_bytes(model), "activations": allocation_peak(events),
            "rss": rss["peak_memory_bytes"], "params": adapter.parameter_counts()["params_total"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", choices=["auto", "default", "smollm2", "tiny"])
    ap.add_argument("--sparsities", default="0.1,0.2,0.3")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--tolerance", type=float, default=0.01, help="slack of the check, as a share of the unpruned peak")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    name, base_adapter = load(args.model)
    settings = EfficiencySettings(prompt_words=args.prompt_words, new_tokens=args.new_tokens)
    n = base_adapter.num_layers
    base = run_peak(base_adapter, settings)
    base_peak = base["model"] + base["activations"]
    rows, ok = [], True
    for s in [float(x) for x in args.sparsities.split(",")]:
        adapter = copy.deepcopy(base_adapter)
        drop = even_drop(n, round(s * n))
        remove_layers(adapter, drop)
        m = run_peak(adapter, settings)
        peak = m["model"] + m["activations"]
        low, high = m["model"] / base_peak, (m["model"] + base["activations"]) / base_peak
        ratio = peak / base_peak
        good = low - args.tolerance <= ratio <= high + args.tolerance
        ok &= good
        rows.append((s, n - len(drop), m["params"] / base["params"], m["model"] / base["model"], peak, ratio,
                     low, high, m["activations"], m["rss"] / base["rss"], good))
        del adapter
        gc.collect()

    mib = 2**20
    date = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"# Peak memory ratio vs parameter ratio on CPU ({name})", "",
        f"- date: {date}",
        f"- machine: {platform.node()} / {device_name(base_adapter.device)} / torch {torch.__version__}, "
        f"{args.threads} thread(s)",
        f"- model: {base_adapter.name}, {n} decoder layers, {base['params'] / 1e6:.1f} M parameters, "
        f"{base['model'] / mib:.0f} MiB of tensors",
        f"- input: {args.prompt_words} prompt words, a prefill and greedy generation of {args.new_tokens} tokens, batch 1",
        f"- unpruned: model {base['model'] / mib:.1f} MiB + activation peak {base['activations'] / mib:.1f} MiB "
        f"= {base_peak / mib:.1f} MiB (torch's CPU allocations, profiler memory events); process RSS peak "
        f"{base['rss'] / mib:.0f} MiB",
        f"- check: model_pruned <= peak_pruned <= model_pruned + activations_unpruned (slack {args.tolerance:.0%} of the "
        f"unpruned peak): {'PASS' if ok else 'FAIL'}", "",
        "| sparsity | layers kept | params ratio | model memory ratio | peak (MiB) | peak memory ratio | "
        "bounds | activations (MiB) | process RSS peak ratio | ok |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|:-:|",
    ]
    for s, kept, pr, mr, peak, ratio, low, high, act, rss, good in rows:
        lines.append(f"| {s:g} | {kept}/{n} | {pr:.3f} | {mr:.3f} | {peak / mib:.1f} | {ratio:.3f} | "
                     f"[{low:.3f}, {high:.3f}] | {act / mib:.1f} | {rss:.3f} | {'yes' if good else 'NO'} |")
    lines += ["", "The process RSS peak ratio does not follow the model: the process holds the unpruned model "
              "(kept for the next sparsity) beside the pruned copy, Python and the libraries; it measures the "
              "process, not the model, which is why `efficiency` reports no `peak_memory_ratio` on CPU."]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"memory_ratio_{name}_{date[:10]}.md"
    path.write_text(text)
    print(text)
    print(f"written {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
