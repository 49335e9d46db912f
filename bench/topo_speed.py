"""Speed of the topo scorer: complex building / zigzag / post-processing, and zigzag size.

On demand, not a test::

    python bench/topo_speed.py                          # residual-stream-like synthetic clouds
    python bench/topo_speed.py --source iid --ns 64 128 # independent Gaussian layers (worst case)
    python bench/topo_speed.py --source real:512       # the default model's clouds (one
                                                        # 512-sample capture, subsampled)
    python bench/topo_speed.py --source clouds.npz      # clouds saved by a topo run
    python bench/topo_speed.py --source real:512 --activations residual   # h_out clouds instead of
                                                        # the post-attention norms (the default)

For every (N, k) it times ``compute_topology`` (numpy flag complexes + dionysus
``fast_zigzag``) and, for the pairs in ``--baseline``, the reference path on the same
clouds: gudhi simplex trees per layer + dionysus's classic
``zigzag_homology_persistence``. Results go to ``bench/results/topo_speed_<date>.md``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from topovlm.topo.pipeline import TopologyConfig, compute_topology  # noqa: E402 - after the sys.path set-up above


# ----------------------------------------------------------------------------- clouds

def residual_clouds(num_layers: int, n: int, dim: int, seed: int = 0, latent: int = 16,
                    step: float = 0.3, noise: float = 0.05) -> np.ndarray:
    """Residual-stream-like clouds: each layer adds a small nonlinear update to the last.

    Points start on a ``latent``-dimensional linear image; every layer adds
    ``step * tanh(x A) B`` (a random two-layer update of rank ``latent``) and isotropic
    noise, so consecutive layers are similar, as in a pre-norm decoder's residual stream.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, latent)) @ rng.normal(size=(latent, dim))
    out = []
    for _ in range(num_layers):
        upd = np.tanh(x @ rng.normal(size=(dim, latent)) / np.sqrt(dim)) @ rng.normal(size=(latent, dim))
        x = x + step * upd + noise * rng.normal(size=(n, dim))
        out.append(x.copy())
    return np.stack(out).astype(np.float32)


def iid_clouds(num_layers: int, n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Independent Gaussian clouds per layer: no layer-to-layer continuity (worst case)."""
    return np.random.default_rng(seed).normal(size=(num_layers, n, dim)).astype(np.float32)


ACTIVATIONS = "post_attention_norm"  # what real sources read: post_attention_norm (+ final norm) | residual


def real_clouds(n: int, pooling: str = "last", seed: int = 0) -> np.ndarray:
    """Pooled clouds of the default model on n calibration samples (captured once): the
    post-attention norms plus the final norm (the presets' default), or h_out."""
    from topovlm.topo.clouds import layer_clouds

    capture = _real_capture(n, seed)
    norms = ACTIVATIONS == "post_attention_norm"
    return layer_clouds(capture, pooling, activations=ACTIVATIONS, include_final_norm=norms).clouds


_REAL_CACHE: dict = {}


def _real_capture(n: int, seed: int):
    """Capture of the default model (``conf/model/default.yaml``) on the calibration split."""
    key = (n, seed)
    if key not in _REAL_CACHE:
        from hydra import compose, initialize_config_dir

        from topovlm.adapters.loading import load_adapter
        from topovlm.capture import run_capture
        from topovlm.api import CaptureSpec
        from topovlm.config import register_configs
        from topovlm.data.sources import load_samples

        register_configs()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=["logger=none"])
        adapter = load_adapter(cfg.model)
        samples = load_samples(cfg.calibration.dataset, n=n, seed=seed)
        t0 = time.perf_counter()
        _REAL_CACHE[key] = run_capture(adapter, samples, CaptureSpec(norms=True),
                                       batch_size=cfg.calibration.batch_size)
        print(f"captured {n} calibration samples of {cfg.model.name} in {time.perf_counter() - t0:.0f}s",
              flush=True)
    return _REAL_CACHE[key]


def load_source(source: str, num_layers: int, n: int, dim: int, seed: int) -> np.ndarray:
    if source == "residual":
        return residual_clouds(num_layers, n, dim, seed)
    if source == "iid":
        return iid_clouds(num_layers, n, dim, seed)
    if source == "real":
        return real_clouds(n, seed=seed)
    if source.startswith("real:"):  # real:<N_max>: capture N_max samples once, subsample
        clouds = real_clouds(int(source.split(":", 1)[1]), seed=seed)
        keep = np.sort(np.random.default_rng(seed).permutation(clouds.shape[1])[:n])
        return clouds[:, keep]
    path = Path(source)
    clouds = np.load(path)["clouds"]
    if clouds.shape[1] < n:
        raise SystemExit(f"{path} has {clouds.shape[1]} points < N={n}")
    keep = np.sort(np.random.default_rng(seed).permutation(clouds.shape[1])[:n])
    return clouds[:, keep]


# ----------------------------------------------------------------------------- timing

def run_once(clouds: np.ndarray, k: int, reference: bool, max_dim: int = 1, symmetrize: str = "union") -> dict:
    cfg = TopologyConfig(k=k, max_dim=max_dim, symmetrize=symmetrize, max_zigzag_simplices=None)
    if reference:
        cfg.flag_backend, cfg.zigzag_method = "gudhi", "classic"
    res = compute_topology(clouds, cfg)
    return {
        **res.timings,
        "zz_simplices": res.sizes["zigzag_simplices"],
        "zz_events": res.sizes["zigzag_events"],
        "edges": float(np.mean(res.sizes["edges_per_layer"])),
        "triangles": float(np.mean(res.sizes["top_simplices_per_layer"])),
        "bars": {p: len(b) for p, b in res.bars.items()},
        "bars_raw": res.raw_bars,
        "combined": res.combined,
    }


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    load = os.getloadavg()
    return (f"nproc={os.cpu_count()}, CPU: {cpu}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}; load average at start {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("numpy", "scikit-learn", "gudhi", "dionysus"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", default="residual", help="residual | iid | real | real:<N_max> | path to clouds.npz")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--ns", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 15, 25])
    ap.add_argument("--baseline", nargs="*", default=["256x15"],
                    help="NxK pairs also timed with gudhi trees + classic zigzag ('all' for every pair)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per pair; the fastest is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--symmetrize", default="union", choices=["union", "mutual"])
    ap.add_argument("--max-dim", type=int, default=1, choices=[0, 1, 2])
    ap.add_argument("--activations", default="post_attention_norm", choices=["post_attention_norm", "residual"],
                    help="real sources: the post-attention norms + final norm, or the residual stream h_out")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    global ACTIVATIONS
    ACTIVATIONS = args.activations

    date = dt.date.today().isoformat()
    out = args.out or ROOT / "bench" / "results" / f"topo_speed_{date}.md"
    # warm-up: imports and first-call overheads are not part of the measurement
    run_once(residual_clouds(3, 20, 8), 3, reference=False)
    run_once(residual_clouds(3, 20, 8), 3, reference=True)

    rows, base_rows = [], []
    for n in args.ns:
        clouds = load_source(args.source, args.layers, n, args.dim, args.seed)
        for k in args.ks:
            best = min((run_once(clouds, k, False, args.max_dim, args.symmetrize) for _ in range(args.repeat)), key=lambda r: r["total"])
            rows.append((clouds.shape, k, best))
            print(f"N={n} k={k}: {best['total']:.2f}s (complexes {best['complexes']:.2f}, zigzag "
                  f"{best['zigzag']:.2f}, post {best['post']:.3f}); zigzag {best['zz_simplices']} simplices, "
                  f"{best['zz_events']} events", flush=True)
            if "all" in args.baseline or f"{n}x{k}" in args.baseline:
                ref = run_once(clouds, k, True, args.max_dim, args.symmetrize)
                same = all(np.array_equal(best["bars_raw"][p], ref["bars_raw"][p]) for p in ref["bars_raw"])
                base_rows.append((clouds.shape, k, best, ref, same))
                print(f"  reference (gudhi trees + classic zigzag): {ref['total']:.2f}s "
                      f"(complexes {ref['complexes']:.2f}, zigzag {ref['zigzag']:.2f}); "
                      f"speed-up {ref['total'] / best['total']:.1f}x; identical bars: {same}", flush=True)

    lines = [
        f"# topo scorer speed, {date}",
        "",
        f"Machine: {machine()}.",
        f"Versions: {versions()}.",
        f"Clouds: `{args.source}`, {rows[0][0][0] if rows else args.layers} representations, "
        f"d = {rows[0][0][2] if rows else args.dim}; "
        f"H0..H{args.max_dim} (max_dim = {args.max_dim}), intersection zigzag, {args.symmetrize} k-NN, "
        f"seed {args.seed}; "
        f"best of {args.repeat} run(s) per cell.",
        "Command: `python bench/topo_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
        "",
        "complexes = k-NN graphs + flag complexes + zigzag times; zigzag = dionysus fast_zigzag "
        "(cone + reduction); post = snapping, PS, Betti, consistency, EPI. Sizes: mean edges and "
        "top-dimensional simplices (triangles for H0+H1) per layer, distinct simplices and insert/remove events in the zigzag.",
        "",
        "| N | k | total s | complexes s | zigzag s | post s | edges/layer | top simplices/layer | zigzag simplices | zigzag events | bars per dim |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, k, r in rows:
        lines.append(
            f"| {shape[1]} | {k} | {r['total']:.2f} | {r['complexes']:.2f} | {r['zigzag']:.2f} | {r['post']:.3f} | "
            f"{r['edges']:.0f} | {r['triangles']:.0f} | {r['zz_simplices']} | {r['zz_events']} | "
            f"{' / '.join(str(v) for v in r['bars'].values())} |")
    if base_rows:
        lines += [
            "",
            "Reference on the same clouds: gudhi simplex trees per layer + classic "
            "`zigzag_homology_persistence`.",
            "",
            "| N | k | fast total s | reference total s | reference complexes s | reference zigzag s | speed-up | identical bars |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for shape, k, fast, ref, same in base_rows:
            lines.append(f"| {shape[1]} | {k} | {fast['total']:.2f} | {ref['total']:.2f} | {ref['complexes']:.2f} | "
                         f"{ref['zigzag']:.2f} | {ref['total'] / fast['total']:.1f}x | {same} |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        fh.write(text + "\n")
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
