#!/usr/bin/env python
"""Speed (and accuracy) of the embedded default model on the shapes benchmark.

    python bench/default_model_speed.py                 # timings -> bench/results/default_model_speed.md
    python bench/default_model_speed.py --layer-drop    # + accuracy with 30% of layers removed at random

Timings: building/loading the model, evaluating the test split (greedy, batched, as the
harness's ``vqa`` evaluator: chat template, ``max_new_tokens`` of task=shapes)
and one forward pass with hidden states over N=128 calibration samples (what a scorer
sees). Accuracy: exact match overall, per domain and per category; with
``--layer-drop``, the same after removing ``round(0.3 * 30) = 9`` decoder layers chosen
uniformly at random (layer 0 protected, as the harness's default selection does), for
3 seeds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from topovlm.data import shapes  # noqa: E402 - after the sys.path set-up above
from topovlm.default_model import ensure_default_model  # noqa: E402 - after the sys.path set-up above
from research.default_model.quick_eval import (  # noqa: E402 - after the sys.path set-up above
    accuracy, build_prompt, drop_layers, generate_answers,
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
            f"torch {torch.__version__}, python {platform.python_version()}")


def load(model_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(model_dir)


@torch.no_grad()
def calibration_forward(model, processor, samples, batch_size):
    processor.tokenizer.padding_side = "left"
    for i in range(0, len(samples), batch_size):
        chunk = samples[i: i + batch_size]
        inputs = processor(images=[s.image for s in chunk],
                           text=[build_prompt(processor, s.question) for s in chunk],
                           return_tensors="pt", padding=True)
        model(**inputs, output_hidden_states=True)


def fmt_acc(res: dict[str, float]) -> str:
    keys = ["accuracy"] + [f"accuracy/{d}" for d in shapes.DOMAINS] + [
        f"accuracy/{c}" for c in shapes.CATEGORIES]
    return " | ".join(f"{res.get(k, float('nan')):.3f}" for k in keys)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-test", type=int, default=shapes.DEFAULT_SIZES["test"])
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=6)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--layer-drop", action="store_true")
    ap.add_argument("--drop-frac", type=float, default=0.3)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t = time.perf_counter()
    model_dir = ensure_default_model()
    t_ensure = time.perf_counter() - t
    t = time.perf_counter()
    model, processor = load(model_dir)
    t_load = time.perf_counter() - t
    test = shapes.generate_split("test", args.n_test, seed=0)
    calib = shapes.generate_split("calibration", args.n_calib, seed=0)

    t = time.perf_counter()
    preds = generate_answers(model, processor, test, args.batch_size, args.max_new_tokens)
    t_eval = time.perf_counter() - t
    full = accuracy(test, preds)
    t = time.perf_counter()
    calibration_forward(model, processor, calib, args.batch_size)
    t_calib = time.perf_counter() - t

    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = ("| run | accuracy | math | non_math | " + " | ".join(shapes.CATEGORIES) + " |\n"
            "|---|" + "---|" * (3 + len(shapes.CATEGORIES)) + "\n")
    lines = [
        "# Default model: speed on the shapes benchmark\n",
        f"- date: {stamp}",
        f"- machine: {machine()}",
        f"- load average at start: {os.getloadavg()[0]:.2f} (the machine is shared; timings vary)",
        f"- model dir: `{model_dir.name}`",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| ensure_default_model (cached) | {t_ensure:.2f} |",
        f"| load model + processor | {t_load:.2f} |",
        f"| evaluate test split (n={len(test)}, batch {args.batch_size}, greedy, "
        f"max_new_tokens={args.max_new_tokens}) | {t_eval:.1f} |",
        f"| forward with hidden states over calibration (n={len(calib)}, batch {args.batch_size}) "
        f"| {t_calib:.1f} |",
        "",
        "Accuracy of the unpruned model on the test split:",
        "",
        head + f"| unpruned | {fmt_acc(full)} |",
        "",
    ]
    print("\n".join(lines), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "default_model_speed.md").write_text("\n".join(lines))

    if args.layer_drop:
        n = len(model.model.language_model.layers)
        k = round(args.drop_frac * n)
        rows = [f"| unpruned | {fmt_acc(full)} |"]
        accs = []
        for seed in range(args.seeds):
            drop = sorted(random.Random(seed).sample(range(1, n), k))
            m, p = load(model_dir)
            drop_layers(m, drop)
            res = accuracy(test, generate_answers(m, p, test, args.batch_size, args.max_new_tokens))
            accs.append(res)
            rows.append(f"| random seed {seed}: drop {drop} | {fmt_acc(res)} |")
            print(rows[-1], flush=True)
        mean = {key: sum(r.get(key, 0.0) for r in accs) / len(accs) for key in full}
        rows.append(f"| random 30% (mean of {args.seeds}) | {fmt_acc(mean)} |")
        doc = [
            "# Default model: accuracy on the shapes test split\n",
            f"- date: {stamp}",
            f"- machine: {machine()}",
            f"- test split: n={len(test)}, seed 0; greedy, max_new_tokens={args.max_new_tokens}",
            f"- layer drop: {k} of {n} decoder layers removed uniformly at random "
            "(layer 0 protected)",
            f"- chance (best constant answer per category): {shapes.CHANCE}",
            "",
            head + "\n".join(rows),
            "",
            f"Drop from removing 30% of layers at random (mean of {args.seeds} seeds): "
            f"{100 * (full['accuracy'] - mean['accuracy']):.1f} points overall, "
            f"{100 * (full['accuracy/math'] - mean['accuracy/math']):.1f} math, "
            f"{100 * (full['accuracy/non_math'] - mean['accuracy/non_math']):.1f} non_math.",
            "",
        ]
        (out / "default_model_accuracy.md").write_text("\n".join(doc))
        print("\n".join(doc))


if __name__ == "__main__":
    main()
