#!/usr/bin/env python
"""Throughput of the harness on the embedded default against the machine's measured matmul bound.

    python bench/throughput.py                  # -> bench/results/throughput_<date>.md
    python bench/throughput.py --sweep          # + the main sweep and a fast first run, cold

Every timing is written next to the machine's load averages (``uptime``) when it started: the
machine is shared, so only ratios measured within one run are compared.

* matmul bound: torch float32 matmuls at the model's shapes and a square one, the same threads;
  the bound is the fastest of them;
* evaluation: the ``vqa`` evaluator on the first ``--questions`` test questions at batch 16,
  generation only and with ``accuracy_mc`` from the prompt pass (ABBA order), and the
  per-candidate forward (one pass over prompt + candidate each, the previous implementation)
  as the reference: its picks must equal the prompt pass's, question by question;
* FLOPs (torch's FlopCounterMode: every matmul and attention of the pass, counted in a separate
  run of the same pass) of the evaluation pass and of the calibration pass (N=128 prompts), and
  the share of the bound each pass reaches (the evaluation's counted on its first 64 questions);
* shared prefix: the tokens every prompt shares (chat template before the image) and what
  computing them once could save at most, measured on the prompt pass;
* ``--sweep``: wall time of ``launch.py -m scorer=topo,cosine sparsity=0.1,0.2,0.3`` into a
  fresh cache (the assembled default model linked in: model build excluded), and of the fast
  first run (the same with ``task.limit=80``) into an empty cache, model build included and
  timed on its own; the summed stage timings of the jobs say where the time goes;
* ``--calibration-passes``: ``launch.py -m scorer=topo,cosine,shortgpt,short_lvlm sparsity=0.25``
  twice, each into a fresh cache (the assembled default model linked in): with each scorer
  recording its own calibration pass (``++hydra.callbacks.guard.union_capture=false``: a pass
  for every scorer that needs a field the cache lacks, so none for cosine after topo), then
  with the sweep's union pass; the number of passes (the capture entries' ``passes.json``),
  the jobs' calibration time and the sweep's wall time of each. ``--passes-overrides`` adds
  overrides to both, e.g. ``"task.limit=16"`` (evaluation only: the calibration is untouched).
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
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.default_model_speed import machine  # noqa: E402 - after the sys.path line that makes bench importable

MAIN_SWEEP = ("scorer=topo,cosine", "sparsity=0.1,0.2,0.3")
PASSES_SWEEP = ("scorer=topo,cosine,shortgpt,short_lvlm", "sparsity=0.25")
ONE_PASS_PER_SCORER = "++hydra.callbacks.guard.union_capture=false"
FAST_FIRST_RUN = (*MAIN_SWEEP, "task.limit=80")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def _compose(overrides=()):
    from hydra import compose, initialize_config_dir

    from topovlm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def matmul_bound(seconds: float = 1.5) -> tuple[float, list[str]]:
    """The fastest float32 matmul rate (GFLOP/s) at the model's shapes and a square one."""
    shapes = [("square 1024", 1024, 1024, 1024),
              ("prompt pass MLP (16 x 45 tokens, 576 -> 1536)", 720, 576, 1536),
              ("prompt pass attention projection (720 tokens, 576 -> 576)", 720, 576, 576),
              ("decode step MLP (16 tokens, 576 -> 1536)", 16, 576, 1536),
              ("LM head, one position per row (16, 576 -> 49153)", 16, 576, 49153)]
    rows = []
    for label, m, k, n in shapes:
        x, w = torch.randn(m, k), torch.randn(k, n)
        torch.mm(x, w)
        best = 0.0
        for _ in range(5):  # best of five short bursts: a shared machine leaves some of them alone
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 5:
                torch.mm(x, w)
                reps += 1
            best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start) / 1e9)
        rows.append((label, best))
    bound = max(r for _, r in rows)
    out = ["| matmul (float32) | GFLOP/s |", "| --- | --- |"]
    out += [f"| {label} | {rate:.1f} |" for label, rate in rows]
    out.append(f"\nBound: **{bound:.1f} GFLOP/s** (the fastest; {torch.get_num_threads()} threads, {load_average()})")
    return bound, out


def _task(n: int, mc: bool):
    from omegaconf import OmegaConf

    cfg = _compose([f"task.limit={n}", f"task.options.multiple_choice={str(mc).lower()}"]).task
    return OmegaConf.create(OmegaConf.to_container(cfg))


def _evaluate(adapter, n: int, mc: bool):
    from topovlm.evaluation.vqa import VQAEvaluator

    ev = VQAEvaluator(_task(n, mc))
    load, start = load_average(), time.perf_counter()
    metrics = ev.evaluate(adapter)
    return time.perf_counter() - start, load, metrics, ev.predictions


def _count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def evaluation(adapter, n: int, ratio_n: int, bound: float, flop_questions: int = 64,
               rounds: int = 3) -> list[str]:
    """Generation alone vs generation + accuracy_mc on ``ratio_n`` questions (ABBA); the prompt
    pass's picks against the per-candidate reference on ``n``; FLOPs and share of the bound."""
    from topovlm.data.sources import load_samples
    from topovlm.evaluation.base import choice_loglikelihoods
    from topovlm.evaluation.vqa import candidate_answers, pick_answers

    for mc in (False, True):  # warm-up: the first passes pay one-off kernel and allocator set-up
        _evaluate(adapter, 16, mc)
    runs = {False: [], True: []}
    for r in range(rounds):  # alternating, each round in the other order (ABBA...)
        for mc in ((False, True) if r % 2 == 0 else (True, False)):
            runs[mc].append(_evaluate(adapter, ratio_n, mc))
    out = [f"### Cost of accuracy_mc: the first {ratio_n} questions, batch 16, {rounds} alternating rounds", "",
           "| pass | wall s | questions/s | load averages at its start | accuracy | accuracy_mc |",
           "| --- | --- | --- | --- | --- | --- |"]
    for mc in (False, True):
        label = "generation + accuracy_mc (prompt pass)" if mc else "generation only"
        for wall, ld, m, _ in runs[mc]:
            mc_value = f"{m['accuracy_mc']:.4f}" if mc else ""
            out.append(f"| {label} | {wall:.1f} | {ratio_n / wall:.2f} | {ld} | {m['accuracy']:.3f} | {mc_value} |")
    # a shared machine slows single passes by up to several times: the best of each compares the
    # passes at the same (least) contention; the median ratio of the rounds is given beside it
    gen = min(w for w, *_ in runs[False])
    with_mc = min(w for w, *_ in runs[True])
    ratios = sorted(b[0] / a[0] for a, b in zip(runs[False], runs[True]))
    answers_same = len({tuple(r["prediction"] for r in preds) for *_, preds in runs[False] + runs[True]}) == 1
    out += ["", f"Evaluation with accuracy_mc / without: **{with_mc / gen:.3f}x** (best of {rounds} each; "
            f"goal <= 1.2x); the rounds' own ratios: {', '.join(f'{r:.2f}' for r in ratios)}. Generated answers "
            f"identical across the {2 * rounds} passes: {answers_same}.", ""]
    if n <= 0:
        return out + _flops_table(adapter, ratio_n, gen, with_mc, bound, flop_questions)

    wall_mc, load_mc, metrics, preds = _evaluate(adapter, n, True)
    cfg = _task(n, True)
    samples = load_samples(cfg.dataset)[:n]
    choices = candidate_answers(samples)
    load, start = load_average(), time.perf_counter()
    scores = choice_loglikelihoods(adapter, samples, choices, batch_size=cfg.batch_size)
    ref_wall = time.perf_counter() - start
    picks = pick_answers(choices, scores)
    ref_acc = sum(p == s.answer for p, s in zip(picks, samples)) / n
    margins = sorted(sorted(sc)[-1] - sorted(sc)[-2] for sc in scores)
    agree = sum(r["prediction_mc"] == p for r, p in zip(preds, picks))
    out += [f"### Against the previous implementation: the first {n} questions", "",
            "| pass | wall s | load averages at its start | accuracy_mc |", "| --- | --- | --- | --- |",
            f"| generation + accuracy_mc (prompt pass) | {wall_mc:.1f} | {load_mc} | {metrics['accuracy_mc']:.4f} |",
            f"| accuracy_mc alone, one forward per candidate (previous implementation) | {ref_wall:.1f} | {load} | "
            f"{ref_acc:.4f} |", "",
            f"Picks identical to the previous implementation's: **{agree} of {n}** questions; accuracy_mc equal: "
            f"{metrics['accuracy_mc'] == ref_acc} (also per category: "
            f"{all(metrics[k] == v for k, v in _mc_metrics(samples, picks).items())}). Smallest gap between a "
            f"question's best and second-best candidate: {margins[0]:.2e} nats (median {margins[len(margins) // 2]:.2f}).",
            ""]

    return out + _flops_table(adapter, ratio_n, gen, with_mc, bound, flop_questions)


def _flops_table(adapter, ratio_n: int, gen: float, with_mc: float, bound: float, flop_questions: int) -> list[str]:
    # counted on the first flop_questions (whole batches), scaled to the timed questions
    k = min(ratio_n, flop_questions)
    flops_mc = _count_flops(lambda: _evaluate(adapter, k, True)) * ratio_n / k
    flops_gen = _count_flops(lambda: _evaluate(adapter, k, False)) * ratio_n / k
    out = [f"### FLOPs and share of the bound ({ratio_n} questions, best wall time; counted on the first {k} "
           "and scaled)", "",
            "| pass | GFLOP | wall s | GFLOP/s | share of the bound |", "| --- | --- | --- | --- | --- |",
            f"| evaluation, generation only | {flops_gen / 1e9:.0f} | {gen:.1f} | {flops_gen / 1e9 / gen:.1f} | "
            f"{flops_gen / 1e9 / gen / bound:.0%} |",
            f"| evaluation + accuracy_mc | {flops_mc / 1e9:.0f} | {with_mc:.1f} | {flops_mc / 1e9 / with_mc:.1f} | "
            f"{flops_mc / 1e9 / with_mc / bound:.0%} |"]
    return out


def _mc_metrics(samples, picks) -> dict[str, float]:
    from topovlm.evaluation.vqa import exact_match_metrics

    return {k.replace("accuracy", "accuracy_mc", 1): v for k, v in exact_match_metrics(samples, picks).items()}


def calibration(adapter, bound: float) -> list[str]:
    """The calibration pass as the harness runs it (one position's logits), timed, then counted."""
    from topovlm.capture import run_capture
    from topovlm.data.sources import load_samples

    cal = _compose().calibration
    samples = load_samples(cal.dataset, n=cal.n, seed=cal.seed)
    run_capture(adapter, samples[:cal.batch_size], batch_size=cal.batch_size)  # warm-up
    load, walls = load_average(), []
    for _ in range(2):  # best of two (shared machine)
        start = time.perf_counter()
        run_capture(adapter, samples, batch_size=cal.batch_size)
        walls.append(time.perf_counter() - start)
    wall = min(walls)
    flops = _count_flops(lambda: run_capture(adapter, samples, batch_size=cal.batch_size))
    return [f"| calibration (N={cal.n}, batch {cal.batch_size}) | {flops / 1e9:.0f} | {wall:.1f} | "
            f"{flops / 1e9 / wall:.1f} | {flops / 1e9 / wall / bound:.0%} | {load} |"]


def shared_prefix(adapter, repeats: int = 5) -> list[str]:
    """What a prefix cache could save at most: the prompt pass with and without the tokens
    every prompt shares (the chat template before the image), timed alternately."""
    from topovlm.data.sources import load_samples

    samples = load_samples(_compose().task.dataset)[:64]
    batches = [adapter.build_inputs(samples[i:i + 16]) for i in range(0, len(samples), 16)]
    rows = [ids[mask.bool()].tolist() for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])]
    image = adapter.vision_mask(batches[0]["input_ids"][:1])[0]
    first_image = int(image.nonzero()[0, 0] - (1 - batches[0]["attention_mask"][0]).sum()) if image.any() else 10**9
    shared = 0  # the visual tokens differ per image: the shared prefix ends before them
    while shared < first_image and all(len(r) > shared and r[shared] == rows[0][shared] for r in rows):
        shared += 1
    mean_len = sum(len(r) for r in rows) / len(rows)

    def without_prefix(b):  # each row's tokens after the shared prefix, left-padded again
        real = [ids[mask.bool()][shared:] for ids, mask in zip(b["input_ids"], b["attention_mask"])]
        width = max(len(r) for r in real)
        ids = torch.full((len(real), width), adapter.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, r in enumerate(real):
            ids[k, width - len(r):], mask[k, width - len(r):] = r, 1
        return {**b, "input_ids": ids, "attention_mask": mask}

    cut = [without_prefix(b) for b in batches]
    tok = adapter.tokenizer
    ids = [rows[0]]
    times = {"full": [], "cut": []}
    with torch.inference_mode():
        for _ in range(repeats + 1):  # the first round is a warm-up
            for label, bs in (("full", batches), ("cut", cut)):
                start = time.perf_counter()
                for b in bs:
                    adapter.model(**b, use_cache=True, logits_to_keep=1)
                times[label].append(time.perf_counter() - start)
    full, without = min(times["full"][1:]), min(times["cut"][1:])
    with torch.inference_mode():  # FLOPs do not depend on the machine's load
        flops = {label: _count_flops(lambda bs=bs: [adapter.model(**b, use_cache=True, logits_to_keep=1) for b in bs])
                 for label, bs in (("full", batches), ("cut", cut))}
    eval_flops = _count_flops(lambda: _evaluate(adapter, len(samples), True))
    return [f"Shared prefix: {shared} tokens ({tok.convert_ids_to_tokens(ids[0][:shared])}) of a mean "
            f"{mean_len:.1f}-token prompt (before the 16 visual tokens, which differ per image).",
            "",
            f"| prompt pass over 64 questions (batch 16) | wall s, best of {repeats} | GFLOP |", "| --- | --- | --- |",
            f"| full prompts | {full:.3f} | {flops['full'] / 1e9:.1f} |",
            f"| without the shared prefix (an upper bound on a prefix cache) | {without:.3f} | "
            f"{flops['cut'] / 1e9:.1f} |", "",
            f"A prefix cache saves at most {(flops['full'] - flops['cut']) / 1e9:.1f} GFLOP: "
            f"{(flops['full'] - flops['cut']) / flops['full']:.1%} of the prompt pass's FLOPs and "
            f"{(flops['full'] - flops['cut']) / eval_flops:.1%} of the evaluation's ({eval_flops / 1e9:.0f} GFLOP for the "
            f"same 64 questions with accuracy_mc); wall time {(full - without) / full:.1%} ({load_average()} at the end)."]


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


def _link_model(src_cache: Path, cache: Path) -> None:
    """The assembled default model and its language model, reused: only captures, rankings and
    evaluations are cold."""
    for pattern in ("default-vlm-*", "smollm2*"):
        for entry in src_cache.glob(pattern):
            os.symlink(entry, cache / entry.name)


def _stage_sums(sweep_dir: Path) -> tuple[int, dict[str, float]]:
    sums: dict[str, float] = defaultdict(float)
    jobs = [json.loads(p.read_text()) for p in sweep_dir.glob("*/results.json")]
    for job in jobs:
        for stage, seconds in job.get("timings", {}).items():
            sums[stage] += seconds
    return len(jobs), dict(sums)


def sweep(label: str, overrides: tuple[str, ...], build_model: bool) -> tuple[list[str], dict[str, float]]:
    cache = Path(tempfile.mkdtemp(prefix="topovlm-sweep-cache-"))
    sweep_dir = Path(tempfile.mkdtemp(prefix="topovlm-sweep-"))
    env = {**os.environ, "TOPOVLM_CACHE": str(cache)}
    build = None
    if build_model:  # the first use builds the default model (SmolLM2 from PyPI); timed on its own
        load, start = load_average(), time.perf_counter()
        subprocess.run([sys.executable, "-c", "from topovlm.default_model import ensure_default_model as e; e()"],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        build = (time.perf_counter() - start, load)
    else:
        _link_model(Path(os.environ.get("TOPOVLM_CACHE", Path.home() / ".cache" / "topovlm")), cache)
    cmd = [sys.executable, "launch.py", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    load, start = load_average(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    end_load = load_average()
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        return [f"| {label} | failed (exit {proc.returncode}) | | | |"], {}
    jobs, sums = _stage_sums(sweep_dir)
    rows = [f"| {label}: `launch.py -m {' '.join(overrides)}` | {wall:.0f} | {jobs} | {load} | {end_load} |"]
    if build:
        rows.append(f"| {label}: model build before it (`ensure_default_model`, SmolLM2 from PyPI) | "
                    f"{build[0]:.0f} | | {build[1]} | |")
        rows.append(f"| {label}: cold total, model build included | {wall + build[0]:.0f} | | | |")
    return rows, {"wall": wall, **sums}


def sweeps(which: str = "main,fast") -> list[str]:
    rows, stages = [], {}
    for label, overrides, build in (("main sweep", MAIN_SWEEP, False), ("fast first run", FAST_FIRST_RUN, True)):
        if label.split()[0] not in which.split(","):
            continue
        r, s = sweep(label, overrides, build)
        rows += r
        stages[label] = s
    out = ["| run (cold cache, W&B offline as `make demo`) | wall s | jobs | load averages at start | at end |",
           "| --- | --- | --- | --- | --- |", *rows, "",
           "Where the time goes (seconds summed over the jobs' `timings`; the rest of the wall time is start-up,"
           " the model load, the sweep's summary and plots):", ""]
    names = sorted({k for s in stages.values() for k in s if k != "wall"},
                   key=lambda k: -max(s.get(k, 0.0) for s in stages.values()))
    out += ["| stage | " + " | ".join(stages) + " |", "| --- |" + " --- |" * len(stages)]
    out += [f"| {k} | " + " | ".join(f"{s.get(k, 0.0):.1f}" for s in stages.values()) + " |" for k in names]
    return out


def _passes_run(overrides: tuple[str, ...]) -> dict:
    """One sweep into a fresh cache: its calibration passes, per job the calibration stage's time."""
    cache = Path(tempfile.mkdtemp(prefix="topovlm-passes-cache-"))
    sweep_dir = Path(tempfile.mkdtemp(prefix="topovlm-passes-"))
    _link_model(Path(os.environ.get("TOPOVLM_CACHE", Path.home() / ".cache" / "topovlm")), cache)
    env = {**os.environ, "TOPOVLM_CACHE": str(cache)}
    cmd = [sys.executable, "launch.py", "-m", *overrides, "logger=none", "hydra.callbacks.summary.plots=false",
           f"hydra.sweep.dir={sweep_dir}"]
    load, start = load_average(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stderr[-3000:])
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(cmd)}")
    entries = sorted((cache / "captures").glob("*/passes.json"))
    passes = [p for e in entries for p in json.loads(e.read_text())["passes"]]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/results.json"))]
    capture = {j["scorer"]: (j["timings"].get("capture", 0.0), j["identity"]["capture"]["hit"]) for j in jobs}
    return {"wall": wall, "load": load, "passes": passes, "entries": len(entries), "capture": capture,
            "served": proc.stdout.count("capture served from the sweep's union pass") +
            proc.stderr.count("capture served from the sweep's union pass")}


def calibration_passes(extra: tuple[str, ...]) -> list[str]:
    """The sweep of four scorers, one pass per scorer against the sweep's union pass."""
    runs = {label: _passes_run((*PASSES_SWEEP, *extra, *more)) for label, more in
            (("each scorer its own pass (union_capture=false)", (ONE_PASS_PER_SCORER,)),
             ("the sweep's union pass", ()))}
    command = " ".join(("launch.py -m", *PASSES_SWEEP, *extra))
    out = [f"`{command}`, each run into a fresh cache (the default model linked in), logger=none, no plots.", "",
           "| run | calibration passes | capture entries | calibration s (jobs' capture stage) | sweep wall s | "
           "load averages at start |", "| --- | --- | --- | --- | --- | --- |"]
    for label, r in runs.items():
        out.append(f"| {label} | {len(r['passes'])} | {r['entries']} | {sum(t for t, _ in r['capture'].values()):.1f} "
                   f"| {r['wall']:.0f} | {r['load']} |")
    out += ["", "| scorer | " + " | ".join(f"{label}: calibration s (cache hit)" for label in runs) + " |",
            "| --- |" + " --- |" * len(runs)]
    for scorer in runs["the sweep's union pass"]["capture"]:
        out.append(f"| {scorer} | " + " | ".join(
            "{:.1f} ({})".format(*r["capture"].get(scorer, (float("nan"), "?"))) for r in runs.values()) + " |")
    own, union = runs.values()
    own_s, union_s = (sum(t for t, _ in r["capture"].values()) for r in (own, union))
    out += ["", "Passes recorded (capture entries' passes.json):", ""]
    for label, r in runs.items():
        out.append(f"* {label}: " + "; ".join(f"{', '.join(p['recorded'])} for {', '.join(p['for'])}"
                                              for p in r["passes"]))
    out += ["", f"Calibration passes {len(own['passes'])} -> {len(union['passes'])}; calibration time "
            f"{own_s:.1f} s -> {union_s:.1f} s (saves {own_s - union_s:.1f} s, {(own_s - union_s) / own_s:.0%}); "
            f"sweep wall {own['wall']:.0f} s -> {union['wall']:.0f} s. Captures served from the union pass: "
            f"{union['served']}. short_lvlm's statistic reads attention maps (eager attention, states that differ "
            "in the last bits from the default attention's): its pass stays apart."]
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=400, help="questions of the reference comparison")
    p.add_argument("--ratio-questions", type=int, default=96,
                   help="questions of the ABBA timing of evaluation with and without accuracy_mc")
    p.add_argument("--no-passes", action="store_true",
                   help="leave out the in-process measurements: only --sweep, --memory, --calibration-passes")
    p.add_argument("--skip", default="", metavar="calibration,prefix", help="sections to leave out")
    p.add_argument("--out", type=Path, default=None, help="results file (default bench/results/throughput_<date>.md)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sweep", nargs="?", const="main,fast", default=None, metavar="main,fast",
                   help="also time the main sweep and/or the fast first run, cold")
    p.add_argument("--memory", action="store_true", help="also the calibration pass's peak memory with full logits")
    p.add_argument("--calibration-passes", action="store_true",
                   help=f"also `{' '.join(PASSES_SWEEP)}`: one calibration pass per scorer against the sweep's union "
                        "pass, each into a fresh cache")
    p.add_argument("--passes-overrides", default="", metavar="'task.limit=16 ...'",
                   help="overrides added to both --calibration-passes sweeps")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from topovlm.adapters.loading import load_adapter

    lines = [f"# Harness throughput on the embedded default ({dt.date.today().isoformat()})", "",
             f"Machine: {machine()}, nproc {os.cpu_count()}. Shared machine: load averages next to every timing; "
             f"compare ratios within this file only. Started at {load_average()}.", ""]
    if not args.no_passes:
        bound, table = matmul_bound()
        lines += ["## Matmul bound", "", *table, ""]
        adapter = load_adapter(_compose().model)
        lines += ["## Evaluation: accuracy_mc from the prompt pass", "",
                  *evaluation(adapter, args.questions, args.ratio_questions, bound), ""]
        print("\n".join(lines), flush=True)
        if "calibration" not in args.skip:
            lines += ["## Calibration pass", "",
                      "| pass | GFLOP | wall s | GFLOP/s | share of the bound | load averages |",
                      "| --- | --- | --- | --- | --- | --- |", *calibration(adapter, bound), ""]
        if "prefix" not in args.skip:
            lines += ["## Shared prefix", "", *shared_prefix(adapter), ""]
        again, _ = matmul_bound()
        lines += [f"Matmul bound measured again after the passes: {again:.1f} GFLOP/s (before: {bound:.1f}); "
                  "the shares above use the one before.", ""]
        print("\n".join(lines), flush=True)
        del adapter
    if args.memory:
        lines += ["## Calibration pass: full-vocabulary logits vs one position", "",
                  *calibration_memory(args.threads), ""]
    if args.sweep:
        lines += ["## The main sweep and the fast first run, cold", "", *sweeps(args.sweep), ""]
    if args.calibration_passes:
        lines += ["## Calibration passes of a sweep of four scorers", "",
                  *calibration_passes(tuple(args.passes_overrides.split())), ""]
    text = "\n".join(lines)
    print(text)
    out = args.out or ROOT / "bench" / "results" / f"throughput_{dt.date.today().isoformat()}.md"
    out.write_text(text + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
