"""First contact with a real checkpoint: capture -> score -> prune -> evaluate, one table.

Runs the harness's own job (``topovlm.runner.run_job``, exactly what ``launch.py`` runs)
for a few scorers at one sparsity on a small evaluation limit, and prints a pass/fail
table with the time of every stage. Needs only a local checkpoint: calibration and
evaluation default to the embedded shapes benchmark, generated locally, so no dataset
download is involved (``--task pope --limit 50`` once POPE is in the Hugging Face cache;
``--calibration coco_captions`` once that set is).

    python bench/gpu_smoke.py      # the embedded default model, no checkpoint needed (make bench)
    python bench/gpu_smoke.py --model llava-1.5-7b --path /models/llava-1.5-7b-hf
    python bench/gpu_smoke.py --model qwen2-vl-7b --path /models/Qwen2-VL-7B-Instruct --scorers cosine,topo
    python bench/gpu_smoke.py --model llava-1.5-7b --path DIR --device cpu --dtype float32   # no GPU

Exit code 0 when every job passed. Writes ``bench/results/gpu_smoke_<model>_<date>.md``
(with the machine and GPU) unless ``--no-write``.

``--parity`` checks the prompting protocol instead of running jobs: for POPE-style questions
(the shapes benchmark's yes/no questions with POPE's instruction) it prints the harness's prompt
text and token ids beside ``task.protocol=lmms_exact``'s and those of lmms-eval's own model class
(``llava_hf`` / ``qwen2_vl``, its ``generate_until`` run around the same loaded model), then every
question's answer: the harness batched and at batch 1, lmms_exact and lmms-eval's class (batch 1).
Exit code 1 when lmms_exact differs from lmms-eval's class (topovlm/evaluation/protocol.py).

    python bench/gpu_smoke.py --parity --model llava-1.5-7b --path /models/llava-1.5-7b-hf
    python bench/gpu_smoke.py --parity --model llava-1.5-7b --path DIR --device cpu --dtype bfloat16 --parity-n 32
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STAGES = ("load_model", "capture", "score", "select_prune", "reference_evaluate", "evaluate", "efficiency")


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from topovlm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()} ({platform.processor() or platform.machine()}), {gpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="model preset (conf/model/); default: the embedded model")
    p.add_argument("--path", default=None, help="local checkpoint directory (or a cached hub id) of a --model preset")
    p.add_argument("--scorers", default="cosine,shortgpt,topo")
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--task", default="shapes", help="task preset; shapes needs no download")
    p.add_argument("--limit", type=int, default=40, help="evaluated documents / questions")
    p.add_argument("--calibration", default="shapes", help="calibration preset (conf/calibration/)")
    p.add_argument("--calibration-n", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda (preset default) or cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--cache-dir", default=None, help="default: a temporary directory (nothing reused)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--parity", action="store_true", help="check the prompt protocols instead of running jobs")
    p.add_argument("--parity-n", type=int, default=8, help="POPE-style questions of --parity")
    p.add_argument("--parity-batch-size", type=int, default=16, help="the harness's batch in --parity")
    p.add_argument("--parity-max-new-tokens", type=int, default=128, help="POPE's generation length")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.device_map=null")
    args = p.parse_args(argv)
    if args.path is None and args.model != "default":
        p.error(f"--model {args.model} needs --path (a local checkpoint directory or a cached hub id)")

    if args.parity:
        return parity(args)

    from topovlm.runner import run_job

    cache = args.cache_dir or tempfile.mkdtemp(prefix="topovlm-smoke-")
    rows, ok = [], True
    for scorer in args.scorers.split(","):
        overrides = [f"model={args.model}", *([f"model.path={args.path}"] if args.path else []), f"task={args.task}",
                     f"task.limit={args.limit}",
                     f"calibration={args.calibration}", f"calibration.n={args.calibration_n}", f"scorer={scorer}",
                     f"sparsity={args.sparsity}", "logger=none", f"cache_dir={cache}", *args.overrides]
        if args.device:
            overrides.append(f"model.device={args.device}")
            if args.device == "cpu":
                overrides.append("model.device_map=null")
        if args.dtype:
            overrides.append(f"model.dtype={args.dtype}")
        start = time.perf_counter()
        try:
            res = run_job(_compose(overrides), Path(cache) / "jobs" / scorer)
            timings = res["timings"]
            metrics = res["metrics"]
            headline = next((k for k in ("accuracy", "pope_f1_score", "perplexity") if k in metrics), next(iter(metrics)))
            detail = (f"removed {res['removed_layers']} of {res['num_layers']}; {headline}={metrics[headline]:.3f} "
                      f"(unpruned {(res.get('reference_metrics') or {}).get(headline, float('nan')):.3f})")
            rows.append((scorer, "pass", [timings.get(s) for s in STAGES], time.perf_counter() - start, detail))
        except Exception as err:  # noqa: BLE001 - the table reports every failure
            ok = False
            traceback.print_exc()
            rows.append((scorer, "FAIL", [None] * len(STAGES), time.perf_counter() - start,
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"))

    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731 - a one-line local helper
    lines = [f"# GPU smoke test: {args.model} ({args.path or 'embedded'})", "",
             f"{dt.date.today().isoformat()}, {_machine()}; task={args.task} limit={args.limit}, "
             f"calibration={args.calibration} n={args.calibration_n}, sparsity={args.sparsity}", "",
             "| scorer | status | " + " | ".join(f"{s} s" for s in STAGES) + " | total s | detail |",
             "| --- " * (len(STAGES) + 4) + "|"]
    for scorer, status, times, total, detail in rows:
        lines.append(f"| {scorer} | {status} | " + " | ".join(map(fmt, times)) + f" | {total:.1f} | {detail} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        out = ROOT / "bench" / "results" / f"gpu_smoke_{args.model}_{dt.date.today().isoformat()}.md"
        out.write_text(table + "\n")
        print(f"written: {out}")
    return 0 if ok else 1


def parity(args: argparse.Namespace) -> int:
    """``--parity``: the model of the preset (and --path), the harness against lmms-eval's prompting."""
    from topovlm.adapters.loading import load_adapter
    from topovlm.evaluation import protocol
    from topovlm.evaluation import parity

    overrides = [f"model={args.model}", *([f"model.path={args.path}"] if args.path else []), *args.overrides]
    if args.device:
        overrides.append(f"model.device={args.device}")
        if args.device == "cpu":
            overrides += ["model.device_map=null", "model.attn_implementation=null"]
    if args.dtype:
        overrides.append(f"model.dtype={args.dtype}")
    adapter = load_adapter(_compose(overrides).model)
    gen = dict(protocol.POPE_GEN_KWARGS, max_new_tokens=args.parity_max_new_tokens)
    result = parity.compare(adapter, parity.shapes_pope_docs(args.parity_n), gen, args.parity_batch_size)
    print(f"# Prompt protocols: {args.model} ({args.path or 'embedded'}), {parity.dtype_name(adapter)} on "
          f"{adapter.device}; {_machine()}\n")
    print(parity.describe(result))
    if result.exact_mismatches:
        print("\nMISMATCH: lmms_exact differs from lmms-eval's own class: " + "; ".join(result.exact_mismatches),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
