"""Diagnostic figures of the topo scorer (matplotlib, Agg backend).

Each function reads the ``topology`` section that :class:`~topovlm.topo.scorer.TopoScorer`
puts in results.json, so figures can be redrawn from a finished run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

COLOURS = {"h0": "tab:blue", "h1": "tab:red", "h2": "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    """PNG (returned, logged to W&B) and a PDF beside it for papers."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.savefig(Path(path).with_suffix(".pdf"))
    plt.close(fig)
    return path


def _num_layers(section: Mapping[str, Any]) -> int:
    return len(section["consistency_combined"])


def _xlabel(section: Mapping[str, Any]) -> str:
    final = section.get("final_norm_index")
    return "layer" if final is None else f"representation ({final} = final norm)"


def _mark_removed(ax: Any, removed: Sequence[int], label: bool = True) -> None:
    """Shade the layers this job removed, so figures of one ranking differ per sparsity."""
    for n, layer in enumerate(sorted(removed)):
        ax.axvspan(layer - 0.5, layer + 0.5, color="tab:gray", alpha=0.25, lw=0,
                   label=f"removed here ({len(removed)} layers)" if label and n == 0 else None)


def _removed_title(removed: Sequence[int]) -> str:
    return f"\nremoved: {sorted(int(v) for v in removed)}" if removed else "\nnothing removed (unpruned)"


def plot_barcodes(section: Mapping[str, Any], path: Path, removed: Sequence[int] = ()) -> Path:
    plt = _plt()
    dims = section["dims"]
    num_layers = _num_layers(section)
    fig, axes = plt.subplots(1, len(dims), figsize=(5 * len(dims), 4.5), squeeze=False)
    for ax, dim in zip(axes[0], dims):
        bars = np.asarray(section["bars"][dim], dtype=float).reshape(-1, 2)
        order = np.lexsort((-(bars[:, 1] - bars[:, 0]), bars[:, 0])) if len(bars) else []
        for row, (b, d) in enumerate(bars[order]):
            ax.plot([b - 0.5, d - 0.5], [row, row], color=COLOURS.get(dim, "k"), lw=1.2)
        _mark_removed(ax, removed, label=False)
        ax.set_xlim(-0.5, num_layers - 0.5)
        ax.set_xlabel(_xlabel(section))
        ax.set_ylabel("bar")
        ax.set_title(f"{dim.upper()} zigzag barcode ({len(bars)} bars; shaded: removed)")
    return _save(plt, fig, path)


def plot_epi(section: Mapping[str, Any], epi: np.ndarray | None, path: Path, removed: Sequence[int] = ()) -> Path:
    plt = _plt()
    dims = section["dims"]
    num_layers = _num_layers(section)
    if epi is None:
        from topovlm.topo.epi import effective_persistence_image

        epi = np.stack([
            effective_persistence_image(np.asarray(section["bars"][d]), num_layers,
                                        section["epi"]["sigma"], section["epi"]["power"])
            for d in dims
        ])
    fig, axes = plt.subplots(1, len(dims), figsize=(5 * len(dims), 4.5), squeeze=False)
    for ax, dim, image in zip(axes[0], dims, epi):
        im = ax.imshow(np.asarray(image).T, origin="lower", aspect="auto", cmap="magma",
                       extent=(-0.5, num_layers - 0.5, 0.5, num_layers + 0.5))
        fig.colorbar(im, ax=ax)
        for layer in removed:  # birth layers this job removed
            ax.axvline(layer, color="white", lw=0.8, ls=":")
        ax.set_xlabel("birth layer (dotted: removed)")
        ax.set_ylabel("persistence (layers)")
        ax.set_title(f"{dim.upper()} effective persistence image")
    return _save(plt, fig, path)


def plot_betti(section: Mapping[str, Any], path: Path, removed: Sequence[int] = ()) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    _mark_removed(ax, removed)
    for dim in section["dims"]:
        ax.plot(section["betti"][dim], marker="o", ms=3, label=f"beta_{dim[1:]}", color=COLOURS.get(dim))
    ax.set_xlabel(_xlabel(section))
    ax.set_ylabel("Betti number")
    ax.set_title("Betti curves (bars alive per layer)" + _removed_title(removed), fontsize=10)
    ax.legend()
    return _save(plt, fig, path)


def plot_consistency(section: Mapping[str, Any], path: Path, removed: Sequence[int] = ()) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = np.arange(_num_layers(section))
    _mark_removed(ax, removed)
    for dim in section["dims"]:
        ax.plot(layers, section["consistency"][dim], marker=".", lw=1, alpha=0.7, label=f"S_{dim[1:]}",
                color=COLOURS.get(dim))
    combined = np.asarray(section["consistency_combined"])
    ax.plot(layers, combined, marker="o", ms=4, lw=2, color="k", label="S (combined)")
    adaptive = section.get("adaptive", {})
    if adaptive.get("layers"):
        sel = np.asarray(adaptive["layers"])
        ax.scatter(sel, combined[sel], s=80, facecolors="none", edgecolors="tab:orange", lw=2,
                   label=f"S >= {adaptive['eps']} max ({adaptive['count']} layers)", zorder=5)
    ax.set_xlabel(_xlabel(section))
    ax.set_ylabel("inter-layer consistency")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Consistency (higher = more redundant)" + _removed_title(removed), fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_activity(section: Mapping[str, Any], path: Path, removed: Sequence[int] = ()) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    layers = np.arange(_num_layers(section))
    _mark_removed(ax, removed)
    for dim in section["dims"]:
        ax.plot(layers, section["activity_by_dim"][dim], lw=1, alpha=0.7, label=dim.upper(),
                color=COLOURS.get(dim))
    ax.plot(layers, section["activity"], lw=2, color="k", label="combined")
    ax.set_xlabel(_xlabel(section))
    ax.set_ylabel("topological activity")
    ax.set_title("Topological activity (EPI summed over persistence)" + _removed_title(removed) + "\n"
                 + epi_role(section), fontsize=10)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def epi_role(section: Mapping[str, Any]) -> str:
    """Whether this curve entered the removal decision (``scorer.epi_mix``): with the default 0
    it is shown for reference only, and the shaded removed layers were chosen by consistency."""
    mix = float((section.get("epi") or {}).get("mix") or 0.0)
    if mix:
        return f"EPI entered the decision: redundancy = consistency - {mix:g} x activity"
    return "EPI did not enter the decision (epi_mix=0): shown for reference; removals follow consistency"


def write_topology_plots(section: Mapping[str, Any], epi: np.ndarray | None, out_dir: Path,
                         removed: Sequence[int] = ()) -> list[Path]:
    """The five figures of one job; ``removed`` (original indices) is shaded in each."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        plot_barcodes(section, out_dir / "topo_barcodes.png", removed),
        plot_epi(section, epi, out_dir / "topo_epi.png", removed),
        plot_betti(section, out_dir / "topo_betti.png", removed),
        plot_consistency(section, out_dir / "topo_consistency.png", removed),
        plot_activity(section, out_dir / "topo_activity.png", removed),
    ]
