"""Validate a checkpoint end to end in minutes: one table, a non-zero exit on any failure.

Rows, each with its time and peak memory: the load; a calibration capture; every registered
scorer on a small calibration set (a scorer whose config check refuses this run, e.g. the oracle
outside the shapes benchmark, is skipped with the reason); the unpruned and the pruned model on
a task slice; the pruned model saved (``topovlm.export.write_checkpoint``) and reloaded: every
tensor bit for bit and every answer the same; protocol parity (``topovlm.evaluation.protocol``:
the harness's batched and batch-1 answers, ``task.protocol=lmms_exact`` and lmms-eval's own
model class on POPE-style questions; lmms_exact must equal lmms-eval's class in prompt, ids and
answers). Drives the harness's own stages (``topovlm.runner``: prepare, load_model,
calibration_samples, score, select, prune, job_result).

    python bench/gpu_validate.py /models/llava-1.5-7b-hf                    # POPE, 200 questions, cuda
    python bench/gpu_validate.py /models/Qwen2-VL-7B-Instruct --task shapes  # no dataset download
    python bench/gpu_validate.py DIR --device cpu --dtype float32 --task shapes --limit 8 --calibration-n 8

The preset (conf/model/) follows the checkpoint's config.json (``--model`` overrides). Prints the
table (and writes ``bench/results/gpu_validate_<name>_<date>.md`` unless ``--no-write``); exit
code 0 only when no row failed.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: config.json model_type (text model_type for LLaVA-NeXT) -> the preset that loads it
PRESETS = {"llava": "llava-1.5-7b", "llava_next": "llava-v1.6-vicuna-7b", "llava_next/mistral": "llava-v1.6-mistral-7b",
           "qwen2_vl": "qwen2-vl-7b", "qwen2_5_vl": "qwen2.5-vl-7b"}
#: the scorer whose removal is evaluated, saved and reloaded (the first of these that ran)
PRUNE_ORDER = ("topo", "cosine", "shortgpt", "angular")


class Failure(Exception):
    """A row's check failed (the message is the row's detail)."""


class Skip(Exception):
    """A row does not apply to this run (the message says why)."""


@dataclass
class Row:
    step: str
    status: str
    seconds: float
    peak_gib: float | None
    detail: str


def preset_for(checkpoint: Path) -> str:
    config = json.loads((checkpoint / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type == "llava_next" and (config.get("text_config") or {}).get("model_type") == "mistral":
        model_type = "llava_next/mistral"
    if model_type not in PRESETS:
        raise SystemExit(f"{checkpoint}: model_type={model_type!r} has no preset here ({', '.join(PRESETS)}); "
                         "pass --model")
    return PRESETS[model_type]


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from topovlm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


class Table:
    """Rows, each timed with its peak memory (CUDA: allocated during the row; CPU: the process's peak RSS so far)."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda") and torch.cuda.is_available()
        self.rows: list[Row] = []

    def _peak(self) -> float:
        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    @contextmanager
    def row(self, step: str) -> Iterator[dict[str, str]]:
        """Times the block; ``out["detail"]`` is the row's text. Failure / Skip / any error end the row."""
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        out = {"detail": ""}
        start, status = time.perf_counter(), "ok"
        try:
            yield out
        except Skip as why:
            status, out["detail"] = "skip", str(why)
        except Failure as why:
            status, out["detail"] = "FAIL", str(why)
        except Exception as err:  # noqa: BLE001 - every error is a failed row, reported with its traceback
            traceback.print_exc()
            status, out["detail"] = "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        seconds = time.perf_counter() - start
        self.rows.append(Row(step, status, seconds, self._peak(), out["detail"]))
        print(f"[{status}] {step} ({seconds:.1f} s): {out['detail']}", flush=True)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status == "FAIL"]

    def markdown(self, title: str, header: str) -> str:
        peak = "peak GiB (GPU, allocated)" if self.cuda else "peak GiB (process RSS)"
        lines = [f"# {title}", "", header, "", f"| step | status | s | {peak} | detail |", "| --- | --- | --- | --- | --- |"]
        for r in self.rows:
            detail = r.detail.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {r.step} | {r.status} | {r.seconds:.1f} | "
                         f"{'-' if r.peak_gib is None else f'{r.peak_gib:.2f}'} | {detail} |")
        verdict = "PASS" if not self.failed else f"FAIL ({', '.join(r.step for r in self.failed)})"
        return "\n".join([*lines, "", f"**{verdict}**"])


def predictions(evaluator: Any) -> list[str]:
    """Each evaluated document's answer, in document order."""
    return [str(r.get("prediction")) for r in evaluator.sample_records()]


def headline(metrics: dict[str, Any]) -> str:
    return next((k for k in ("accuracy", "pope_accuracy", "pope_f1_score", "perplexity") if k in metrics),
                next(iter(metrics)))


def tensors_differ(a: Any, b: Any) -> list[str]:
    """Names of the state-dict entries of two models that are missing in one or not bit-equal."""
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    out = sorted(set(sa) ^ set(sb))
    out += [k for k in sorted(set(sa) & set(sb))
            if sa[k].shape != sb[k].shape or sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k].to(sa[k].device))]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="checkpoint directory (config.json, weights, processor)")
    p.add_argument("--model", default=None, help="preset (conf/model/); default: from config.json's model_type")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default=None, help="default: the preset's on cuda, float32 on cpu")
    p.add_argument("--task", default="pope", help="task preset (pope needs its dataset cached; shapes needs nothing)")
    p.add_argument("--limit", type=int, default=200, help="evaluated questions")
    p.add_argument("--batch-size", type=int, default=16, help="task.batch_size")
    p.add_argument("--calibration", default="shapes", help="calibration preset (shapes: generated locally)")
    # 32: topo's and knn_overlap's k=15 neighbours need more than 16 points, ppl / sleb read 32 samples
    p.add_argument("--calibration-n", type=int, default=32)
    p.add_argument("--scorers", default=None, help="comma-separated (default: every registered scorer)")
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--parity-n", type=int, default=32, help="POPE-style questions of the protocol parity row")
    p.add_argument("--parity-max-new-tokens", type=int, default=128, help="POPE's generation length")
    p.add_argument("--cache-dir", default=None, help="default: a temporary directory, removed at the end")
    p.add_argument("--no-write", action="store_true", help="print the table only")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. model.attn_implementation=eager")
    args = p.parse_args(argv)

    import torch

    from topovlm import runner
    from topovlm.evaluation import parity
    from topovlm.model_pool import POOL
    from topovlm.registry import available_scorers

    ckpt = args.checkpoint.resolve()
    preset = args.model or preset_for(ckpt)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cache = Path(args.cache_dir) if args.cache_dir else Path(tempfile.mkdtemp(prefix="topovlm-validate-"))
    scorers = args.scorers.split(",") if args.scorers else available_scorers()

    def overrides(scorer: str, path: Path = ckpt) -> list[str]:
        out = [f"model={preset}", f"model.path={path}", f"model.device={device}", f"task={args.task}",
               f"task.limit={args.limit}", f"task.batch_size={args.batch_size}", f"calibration={args.calibration}",
               f"calibration.n={args.calibration_n}", f"scorer={scorer}", f"sparsity={args.sparsity}", "logger=none",
               f"cache_dir={cache}", "efficiency.enabled=false", "reuse_model=false"]
        if scorer == "oracle":  # the row checks that it runs: 8 development questions, a 10% search
            out += ["scorer.dev_n=8", "scorer.max_removed=0.1"]
        if device == "cpu":
            out += ["model.device_map=null", "model.attn_implementation=null"]
        if args.dtype or device == "cpu":
            out.append(f"model.dtype={args.dtype or 'float32'}")
        return out + list(args.overrides)

    table = Table(device)
    state: dict[str, Any] = {}
    with table.row("load") as out:
        job = runner.prepare(compose(overrides(scorers[0])), cache / "jobs" / "load", None, "validate", None)
        state["samples"] = runner.calibration_samples(job)
        state["adapter"] = adapter = runner.load_model(job)
        state["fingerprint"] = runner.model_fingerprint(adapter)
        out["detail"] = (f"{preset} from {ckpt.name}: {adapter.num_layers} decoder layers, "
                         f"{sum(t.numel() for t in adapter.model.parameters()):,} parameters, "
                         f"{parity.dtype_name(adapter)} on {adapter.device}")
    adapter = state.get("adapter")
    try:
        if adapter is not None:
            validate_loaded(args, table, state, adapter, overrides, scorers, cache)
    finally:
        if adapter is not None:
            POOL.release(adapter)
        if not args.cache_dir:
            shutil.rmtree(cache, ignore_errors=True)

    gpu = torch.cuda.get_device_name(0) if table.cuda else "no GPU"
    title = f"Checkpoint validation: {ckpt.name} ({preset})"
    header = (f"{dt.date.today().isoformat()}, {platform.node()}, {gpu}, torch {torch.__version__}; task={args.task} "
              f"limit={args.limit} batch={args.batch_size}, calibration={args.calibration} n={args.calibration_n}, "
              f"sparsity={args.sparsity}. Command: `python bench/gpu_validate.py {' '.join(argv or sys.argv[1:])}`")
    text = table.markdown(title, header)
    print(text)
    if not args.no_write:
        dest = ROOT / "bench" / "results" / f"gpu_validate_{ckpt.name}_{dt.date.today().isoformat()}.md"
        dest.write_text(text + "\n")
        print(f"written: {dest}")
    if table.failed:
        print(f"\nFAILED: {', '.join(r.step for r in table.failed)}", file=sys.stderr)
        return 1
    return 0


def validate_loaded(args: argparse.Namespace, table: Table, state: dict[str, Any], adapter: Any, overrides: Any,
                    scorers: list[str], cache: Path) -> None:
    """Every row after the load, on the loaded (unpruned) ``adapter``."""
    import numpy as np
    import torch

    from topovlm import export, runner
    from topovlm.adapters.loading import load_adapter
    from topovlm.capture import run_capture
    from topovlm.errors import ConfigError
    from topovlm.evaluation import build_evaluator, parity

    samples, fingerprint = state["samples"], state["fingerprint"]
    with table.row("capture") as out:
        cap = run_capture(adapter, samples, batch_size=16)
        pooled = cap.pooled["last"]
        if not np.isfinite(pooled).all():
            raise Failure("non-finite hidden states in the capture")
        if adapter.family != "causal_lm" and not cap.meta.get("has_vision"):
            raise Failure("the capture saw no vision tokens")
        out["detail"] = (f"{len(samples)} calibration samples, {pooled.shape[0]} hidden states each, "
                         f"vision tokens seen: {cap.meta.get('has_vision')}")

    rankings: dict[str, tuple[Any, Any]] = {}
    for name in scorers:
        with table.row(f"score: {name}") as out:
            try:
                job = runner.prepare(compose(overrides(name)), cache / "jobs" / name, None, "validate", None)
            except ConfigError as why:  # the scorer's own check refuses this run (data it needs, sizes)
                raise Skip(str(why).splitlines()[0]) from None
            ranking = runner.score(job, adapter, fingerprint, samples, runner.Timer())
            redundancy = np.asarray(ranking.result.redundancy, float)  # the runner checked its shape
            if np.isnan(redundancy).any():  # -inf / inf mark layers a scorer never / always removes; NaN is a bug
                raise Failure(f"NaN redundancy of layers {np.flatnonzero(np.isnan(redundancy)).tolist()}")
            removed, policy, _ = runner.select(job, ranking)
            rankings[name] = (job, ranking)
            out["detail"] = f"removes {removed} at sparsity {args.sparsity:g} ({policy})"

    prune_with = next((s for s in (*PRUNE_ORDER, *rankings) if s in rankings), None)
    with table.row("reference eval (unpruned)") as out:
        if prune_with is None:
            raise Failure("no scorer produced a ranking")
        job, ranking = rankings[prune_with]
        ref_eval = build_evaluator(job.cfg.task)
        ref = ref_eval.evaluate(adapter)
        key = headline(ref)
        state.update(ref=ref, key=key)
        out["detail"] = f"{job.cfg.task.name}: {key}={ref[key]:.3f} on {int(ref.get('num_samples', 0))} questions"

    with table.row("protocol parity") as out:
        docs = parity.shapes_pope_docs(args.parity_n)
        gen = dict(parity.POPE_GEN_KWARGS, max_new_tokens=args.parity_max_new_tokens)
        comparison = parity.compare(adapter, docs, gen, batch_size=args.batch_size)
        print(parity.describe(comparison), flush=True)
        bad = comparison.exact_mismatches
        if bad:
            raise Failure("lmms_exact is not lmms-eval's own class: " + "; ".join(bad[:4]))
        out["detail"] = f"{parity.dtype_name(adapter)}, {comparison.summary()}"

    with table.row("pruned eval") as out:
        if "ref" not in state:
            raise Skip("no reference evaluation")
        job, ranking = rankings[prune_with]
        removed, policy, notes = runner.select(job, ranking)
        kept, edit = runner.prune(job, adapter, removed, samples)
        evaluator = build_evaluator(job.cfg.task)
        metrics = evaluator.evaluate(adapter)
        key = state["key"]
        if int(metrics.get("num_samples", -1)) != int(state["ref"].get("num_samples", -2)):
            raise Failure(f"{metrics.get('num_samples')} questions evaluated, the unpruned model {state['ref'].get('num_samples')}")
        state.update(pruned=predictions(evaluator), kept=kept, removed=removed,
                     result=runner.job_result(job, ranking, samples, len(kept) + len(removed), removed, kept, policy,
                                              notes, metrics, state["ref"], evaluator, adapter, fingerprint, {}, edit,
                                              [], {}, runner.Timer()))
        out["detail"] = (f"{prune_with} removed {removed}: {key}={metrics[key]:.3f} "
                         f"(unpruned {state['ref'][key]:.3f})")

    with table.row("save + reload") as out:
        if "result" not in state:
            raise Skip("no pruned model")
        saved = cache / "pruned_model"
        export.write_checkpoint(adapter, saved, state["result"])
        stamped = json.loads((saved / "config.json").read_text())["pruning"]
        if stamped["removed_layers"] != state["removed"]:
            raise Failure(f"config.json says removed {stamped['removed_layers']}, the model {state['removed']}")
        cfg = compose(overrides(prune_with or "cosine", path=saved))
        reloaded = load_adapter(cfg.model)
        try:
            if reloaded.num_layers != len(state["kept"]):
                raise Failure(f"the reloaded model has {reloaded.num_layers} layers, the pruned one {len(state['kept'])}")
            differ = tensors_differ(adapter.model, reloaded.model)
            if differ:
                raise Failure(f"{len(differ)} tensors differ after reload: {', '.join(differ[:3])}")
            evaluator = build_evaluator(cfg.task)
            evaluator.evaluate(reloaded)
            again = predictions(evaluator)
            changed = [i for i, (a, b) in enumerate(zip(state["pruned"], again)) if a != b]
            if changed or len(again) != len(state["pruned"]):
                first = changed[0] if changed else 0
                raise Failure(f"{len(changed)} of {len(again)} answers changed after reload (first: document {first}, "
                              f"{state['pruned'][first]!r} -> {again[first]!r})")
            out["detail"] = (f"{len(state['kept'])} layers, every tensor bit-equal, {len(again)} answers equal; "
                             f"{sum(f.stat().st_size for f in saved.iterdir()) / 2**30:.2f} GiB on disk")
        finally:
            del reloaded
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
