#!/usr/bin/env python
"""Throughput of the harness itself on the embedded default, each ratio measured in one run.

    python bench/throughput.py                  # -> bench/results/throughput_<date>.md
    python bench/throughput.py --sweep          # + the README's main sweep, with and without model reuse

* evaluation: the ``vqa`` evaluator (generation only) on the first ``--questions`` test questions at batch 16
  and at batch 1 (greedy, left-padded; the answers are compared too);
* calibration: peak memory (this process's resident-set high-water mark, reset before each
  pass) of the calibration forward over N=128 samples with full-vocabulary logits and
  without them (the harness's pass keeps the logits of one position);
* ``--sweep``: wall time of ``launch.py -m scorer=topo,cosine sparsity=0.1,0.2,0.3`` on a
  cold cache (model build excluded: the assembled default model stays cached), and the
  share of the summed job time that is neither calibration nor evaluation.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.default_model_speed import machine  # noqa: E402


def _compose(overrides=()):
    from hydra import compose, initialize_config_dir

    from topovlm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def eval_throughput(adapter, n: int) -> list[str]:
    from omegaconf import OmegaConf

    from topovlm.evaluation.vqa import VQAEvaluator

    rows, answers = [], {}
    for bs in (16, 1):
        cfg = _compose([f"task.limit={n}", f"task.batch_size={bs}", "task.options.multiple_choice=false"]).task
        ev = VQAEvaluator(OmegaConf.create(OmegaConf.to_container(cfg)))
        start = time.perf_counter()
        metrics = ev.evaluate(adapter)
        wall = time.perf_counter() - start
        answers[bs] = [p["prediction"] for p in ev.predictions]
        rows.append((bs, wall, n / wall, metrics["accuracy"]))
    same = answers[16] == answers[1]
    out = ["| batch size | wall s | questions/s | accuracy |", "| --- | --- | --- | --- |"]
    out += [f"| {bs} | {w:.1f} | {q:.2f} | {a:.3f} |" for bs, w, q, a in rows]
    out.append(f"\nbatch 16 / batch 1 throughput: **{rows[0][2] / rows[1][2]:.2f}x** "
               f"(goal >= 5x); answers identical: {same}")
    return out


_CAPTURE_CHILD = """
import sys, time, torch
sys.path.insert(0, {root!r})
torch.set_num_threads({threads})
from bench.throughput import _compose
from topovlm.adapters.loading import load_adapter
from topovlm.capture import run_capture
from topovlm.data.sources import load_samples
from topovlm.efficiency import peak_memory, reset_peak_memory
cfg = _compose()
adapter = load_adapter(cfg.model)
samples = load_samples(cfg.calibration.dataset, n=cfg.calibration.n, seed=cfg.calibration.seed)
head = adapter.model.get_output_embeddings()
sizes = []
head.register_forward_hook(lambda m, i, o: sizes.append(o.numel() * o.element_size()))
reset_peak_memory("cpu")
start = time.perf_counter()
run_capture(adapter, samples, batch_size=cfg.calibration.batch_size, lean={lean})
print(time.perf_counter() - start, peak_memory("cpu")["peak_memory_bytes"], max(sizes))
"""


def calibration_memory(threads: int) -> list[str]:
    """Each pass in a fresh process, so that one pass's freed memory cannot hide the other's peak."""
    rows = []
    for lean in (False, True):
        code = _CAPTURE_CHILD.format(root=str(ROOT), threads=threads, lean=lean)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        wall, peak, logits = map(float, out.stdout.split()[-3:])
        rows.append((lean, wall, peak, logits))
    cal = _compose().calibration
    out = ["| logits | wall s | peak RSS MiB (process) | largest LM-head output per batch MiB |",
           "| --- | --- | --- | --- |"]
    out += [f"| {'one position' if lean else 'every token'} | {w:.1f} | {p / 2**20:.0f} | {g / 2**20:.1f} |"
            for lean, w, p, g in rows]
    out.append(f"\nN={cal.n}, batch {cal.batch_size}: peak with full logits - peak without = "
               f"{(rows[0][2] - rows[1][2]) / 2**20:.0f} MiB (resident-set high-water mark, model load included)")
    return out


def sweep(extra: list[str], variants: tuple[str, ...] = ("reuse", "no_reuse")) -> list[str]:
    out = []
    for label, args in (("one model load per process", []), ("a load per job", ["reuse_model=false"])):
        if ("reuse" if not args else "no_reuse") not in variants:
            continue
        cache = tempfile.mkdtemp(prefix="topovlm-sweep-cache-")
        sweep_dir = tempfile.mkdtemp(prefix="topovlm-sweep-")
        env = {**os.environ, "TOPOVLM_CACHE": cache}
        # the assembled default model is reused: only captures, rankings and evaluations are cold
        default = Path(os.environ.get("TOPOVLM_CACHE", Path.home() / ".cache" / "topovlm"))
        for entry in default.glob("default-vlm-*"):
            os.symlink(entry, Path(cache) / entry.name)
        for entry in default.glob("smollm2*"):
            os.symlink(entry, Path(cache) / entry.name)
        cmd = [sys.executable, "launch.py", "-m", "scorer=topo,cosine", "sparsity=0.1,0.2,0.3", "logger=none",
               f"hydra.sweep.dir={sweep_dir}", *args, *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            out.append(f"| {label} | failed (exit {proc.returncode}) | | |")
            print(proc.stderr[-3000:])
            continue
        jobs = [json.loads(p.read_text()) for p in Path(sweep_dir).glob("*/results.json")]
        total = sum(sum(v for v in j["timings"].values()) for j in jobs)
        work = sum(j["timings"].get(k, 0.0) for j in jobs for k in ("capture", "evaluate", "reference_evaluate"))
        out.append(f"| {label} | {wall:.0f} | {len(jobs)} | {100 * (1 - work / total):.1f}% |")
    return ["| sweep | wall s | jobs | share of job time outside calibration and evaluation |",
            "| --- | --- | --- | --- |", *out]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sweep", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from topovlm.adapters.loading import load_adapter

    adapter = load_adapter(_compose().model)
    lines = [f"# Harness throughput on the embedded default ({dt.date.today().isoformat()})", "",
             f"Machine: {machine()}. Shared machine: compare ratios within this file only.", "",
             "## Evaluation: batch 16 vs batch 1", "", *eval_throughput(adapter, args.questions), "",
             "## Calibration pass: full-vocabulary logits vs one position", "", *calibration_memory(args.threads), ""]
    if args.sweep:
        lines += ["## The README's main sweep, cold caches", "", *sweep([]), ""]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results" / f"throughput_{dt.date.today().isoformat()}.md"
    out.write_text(text + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
