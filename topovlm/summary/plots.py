"""The summary's PNG (and PDF) plots, under ``plots/``: the headline metric vs sparsity per
task, the per-category metrics, the removed-layer map, the score profiles, the agreement heat maps, and the statistics plots
(paired comparison, agreement with the unpruned model, regimes, Pareto, calibration variance).
matplotlib is imported when a plot is drawn."""
from __future__ import annotations

import logging
import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topovlm.summary.agreement import Agreement, first_per_draw
from topovlm.summary.load import SummaryJob, groups
from topovlm.summary.statistics import Comparison
from topovlm.stats import (VERDICT_BEST, VERDICT_EQUIVALENT, VERDICT_INCONCLUSIVE, VERDICT_NA, VERDICT_SAME,
                           VERDICT_WORSE)
from topovlm.summary.tables import REFERENCE, MetricTable, slug

if TYPE_CHECKING:
    from topovlm.summary.build import Summary
    from topovlm.summary.validity import Validity

log = logging.getLogger("topovlm.summary")

def write_plots(summary: Summary, plot_dir: Path) -> list[Path]:
    """All PNGs; a plot that fails is logged and skipped, never the whole summary."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    jobs = summary.jobs
    tasks = [(fn, (summary, model, task, plot_dir)) for model, task in groups(jobs)
             for fn in (plot_metric_vs_sparsity, plot_by_category)]
    for model in sorted({j.model for j in jobs}):
        tasks.append((plot_removed_layers, (jobs, model, plot_dir)))
        tasks.append((plot_score_profiles, (jobs, model, plot_dir)))
    tasks += [(plot_agreement, (a, plot_dir)) for a in summary.agreements]
    for model, task in groups(jobs):
        tasks += [(fn, (summary, model, task, plot_dir)) for fn in
                  (plot_comparison, plot_agreement_with_unpruned, plot_regimes, plot_pareto, plot_calibration_variance)]
    tasks += [(plot_validity, (v, jobs, plot_dir)) for v in summary.validity]
    for fn, args in tasks:
        try:
            path = fn(*args)
        except Exception as err:  # noqa: BLE001 - one broken plot must not lose the summary
            log.warning("plot %s failed: %s", fn.__name__, err)
            continue
        if path is not None:
            written.append(path)
    return written


def _save(fig: Any, path: Path) -> Path:
    """The PNG, and a PDF (vector, for papers) next to it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path


def _grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.6, 3.4), **kw: Any) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             layout="constrained", **kw)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


#: one marker meaning in every plot: hollow = shown worse than another scorer at that sparsity
HOLLOW = "hollow: shown worse than another scorer (Holm)"


def _proportion(t: MetricTable) -> bool:
    vals = [st.mean for row in t.cells.values() for st in row.values()]
    return t.higher_is_better and t.metric.startswith("accuracy") and all(0.0 <= v <= 1.0 for v in vals)


def chance_level(summary: Summary, model: str, task: str) -> float | None:
    """The accuracy of a uniform guess among the answers of the question's category (the closed
    set accuracy_mc picks from: every distinct target of that category in the evaluated
    questions), averaged over the questions of samples.jsonl; None without per-sample records."""
    from collections import defaultdict

    from topovlm.summary.statistics import job_samples

    for j in summary.jobs:
        if (j.model, j.task) != (model, task):
            continue
        recs = job_samples(j)
        if not recs or any(r.get("target") is None for r in recs):
            continue
        answers: dict[str, set[str]] = defaultdict(set)
        for r in recs:
            answers[str(r.get("category") or "")].add(str(r["target"]).strip().lower())
        return sum(1.0 / len(answers[str(r.get("category") or "")]) for r in recs) / len(recs)
    return None


def _metric_panel(ax: Any, t: MetricTable, chance: float | None = None, title_size: int = 10) -> bool:
    """One metric: a line per scorer from the unpruned value, error bars (95% interval over
    samples, else std over seeds), hollow markers where shown worse; y in [0, 1] for accuracies,
    with the unpruned and chance lines. Returns whether the error bars are intervals."""
    labels = sorted(t.cells)
    any_ci = False
    for k, lab in enumerate(labels):
        row = t.cells[lab]
        xs = sorted(row)
        ys = [row[s].mean for s in xs]
        ivs = [t.intervals.get(lab, {}).get(s) for s in xs]
        if all(iv is not None and iv.method != "none" for iv in ivs) and ivs:
            any_ci = True
            lo = [max(0.0, y - iv.low) for y, iv in zip(ys, ivs)]
            hi = [max(0.0, iv.high - y) for y, iv in zip(ys, ivs)]
        else:
            lo = hi = [row[s].std or 0.0 for s in xs]
        worse = [t.verdicts.get(lab, {}).get(s) == VERDICT_WORSE for s in xs]
        if t.reference is not None and 0.0 not in row:
            riv = t.reference_interval
            xs, ys = [0.0] + xs, [t.reference.mean] + ys
            lo = [t.reference.mean - riv.low if riv else 0.0] + lo
            hi = [riv.high - t.reference.mean if riv else 0.0] + hi
            worse = [False] + worse
        off = (k - (len(labels) - 1) / 2) * 0.004  # keeps overlapping error bars apart
        xo = [x + (off if x else 0.0) for x in xs]
        # past ten scorers the colours repeat: the line style tells the second set apart
        line = ax.errorbar(xo, ys, yerr=[lo, hi] if any(lo) or any(hi) else None, marker=None, capsize=2,
                           label=lab, linewidth=1.2, linestyle=("-", "--", ":")[(k // 10) % 3])
        colour = line[0].get_color()
        ax.scatter([x for x, w in zip(xo, worse) if not w], [y for y, w in zip(ys, worse) if not w],
                   color=colour, zorder=3, s=22)
        ax.scatter([x for x, w in zip(xo, worse) if w], [y for y, w in zip(ys, worse) if w],
                   facecolors="white", edgecolors=colour, zorder=3, s=22)
    if t.reference is not None:
        ax.axhline(t.reference.mean, color="grey", linestyle="--", linewidth=1, label=REFERENCE)
    if chance is not None:
        ax.axhline(chance, color="black", linestyle=":", linewidth=1, label="chance (a uniform guess in the category)")
    if _proportion(t):
        ax.set_ylim(0.0, 1.0)
    ax.set_title(f"{t.metric} ({'lower' if t.lower_is_better else 'higher'} is better)", fontsize=title_size)
    ax.set_xlabel("sparsity (fraction of layers removed)", fontsize=8)
    ax.grid(alpha=0.3)
    return any_ci


def _note(any_ci: bool) -> str:
    return ("bars: 95% interval (over calibration draws where the removals vary, else over questions); " + HOLLOW) \
        if any_ci else "bars: std over seeds"


def _headline_metrics(summary: Summary, model: str, task: str) -> list[str]:
    """The headline metric and its multiple-choice twin (accuracy and accuracy_mc)."""
    head = summary.headlines.get((model, task))
    if not head:
        return []
    twin = head[:-3] if head.endswith("_mc") else f"{head}_mc"
    have = {t.metric for t in summary.tables if (t.model, t.task) == (model, task)}
    return [m for m in sorted({head, twin}, key=lambda m: (m.endswith("_mc"), m)) if m in have]


def plot_metric_vs_sparsity(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """The headline figure: the headline metric only (with accuracy_mc beside accuracy), y in
    [0, 1] for accuracies, the unpruned and chance lines, the legend below the panels."""
    heads = _headline_metrics(summary, model, task)
    tables = [t for m in heads for t in summary.tables if (t.model, t.task, t.metric) == (model, task, m)]
    if not tables:
        return None
    import matplotlib.pyplot as plt

    chance = chance_level(summary, model, task)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4.6), layout="constrained", squeeze=False)
    any_ci = False
    for ax, t in zip(axes[0], tables):
        any_ci |= _metric_panel(ax, t, chance if t.metric.startswith("accuracy") else None)
    axes[0][0].set_ylabel(tables[0].metric)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(4, len(labels)), fontsize=8)
    fig.suptitle(f"{model} · {task}\n{_note(any_ci)}", fontsize=10)
    return _save(fig, plot_dir / f"metric_vs_sparsity__{slug(model)}__{slug(task)}.png")


def plot_by_category(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """The per-domain and per-category metrics (exploratory), one small panel each, one legend."""
    heads = set(_headline_metrics(summary, model, task))
    tables = [t for t in summary.tables if (t.model, t.task) == (model, task) and t.metric not in heads]
    if not tables:
        return None
    fig, axes = _grid(len(tables), ncols=4, size=(3.6, 2.9))
    any_ci = False
    for ax, t in zip(axes, tables):
        any_ci |= _metric_panel(ax, t, title_size=9)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(5, len(labels)), fontsize=8)
    fig.suptitle(f"{model} · {task}: per domain and category (exploratory)\n{_note(any_ci)}", fontsize=10)
    return _save(fig, plot_dir / f"metric_by_category__{slug(model)}__{slug(task)}.png")


def _removed_fraction(jobs: list[SummaryJob], model: str) -> tuple[list[float], list[str], int, dict]:
    sets: dict[float, dict[str, dict[tuple, list[int]]]] = defaultdict(lambda: defaultdict(dict))
    num_layers = 0
    for j in jobs:
        if j.model == model and float(j.sparsity) > 0:
            sets[float(j.sparsity)][j.label].setdefault(j.draw, list(j.removed_layers or []))
            num_layers = max(num_layers, int(j.num_layers or 0))
    labels = sorted({lab for by in sets.values() for lab in by})
    return sorted(sets), labels, num_layers, sets


def plot_removed_layers(jobs: list[SummaryJob], model: str, plot_dir: Path) -> Path | None:
    """Layer x scorer map at each sparsity: the share of seeds that remove each layer."""
    import numpy as np

    sps, labels, num_layers, sets = _removed_fraction(jobs, model)
    if not sps or not num_layers:
        return None
    fig, axes = _grid(len(sps), ncols=1, size=(max(6.0, 0.32 * num_layers + 2.5), 0.45 * len(labels) + 1.4))
    one_draw = all(len(by_seed) <= 1 for by in sets.values() for by_seed in by.values())
    for ax, s in zip(axes, sps):
        grid = np.full((len(labels), num_layers), np.nan)
        for i, lab in enumerate(labels):
            by_seed = sets[s].get(lab)
            if not by_seed:
                continue
            grid[i] = 0.0
            for layers in by_seed.values():
                for layer in layers:
                    if 0 <= layer < num_layers:
                        grid[i, layer] += 1.0 / len(by_seed)
        im = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=7)
        ax.set_xlabel("decoder layer")
        ax.set_title(f"removed layers at sparsity {s:g}", fontsize=10)
    if one_draw:  # one calibration draw: a layer is removed or not, no share to scale
        fig.suptitle(f"{model}: removed layers (red) per scorer, one calibration draw")
    else:
        fig.colorbar(im, ax=axes, shrink=0.8, label="share of calibration draws removing the layer")
        fig.suptitle(model)
    return _save(fig, plot_dir / f"removed_layers__{slug(model)}.png")


def _removal_direction(job: SummaryJob) -> str:
    """Which end of the native score a scorer removes first (its redundancy's order)."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(job.scores or [], job.redundancy or [])
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return ""
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return "" if rho is None or not math.isfinite(rho) else ("high score removed first" if rho > 0
                                                             else "low score removed first")


def plot_score_profiles(jobs: list[SummaryJob], model: str, plot_dir: Path) -> Path | None:
    """Every scorer's per-layer score (mean over seeds, band = min..max), which end is removed
    first, and the layers removed at each sparsity (first seed) marked on the curve."""
    import matplotlib.pyplot as plt
    import numpy as np

    members = [j for j in jobs if j.model == model]
    profiles = first_per_draw(members, "scores")
    if not profiles:
        return None
    labels = sorted(profiles)
    sparsities = sorted({j.sparsity for j in members if j.removed_layers})
    markers = dict(zip(sparsities, "vs^Dpo*hX"))
    colours = dict(zip(sparsities, plt.get_cmap("autumn")(np.linspace(0.0, 0.8, max(1, len(sparsities))))))
    fig, axes = _grid(len(labels), size=(4.6, 3.2))
    for ax, lab in zip(axes, labels):
        arr = np.array([[np.nan if v is None else float(v) for v in p] for p in profiles[lab].values()], dtype=float)
        x = np.arange(arr.shape[1])
        with warnings.catch_warnings():  # a layer without a score (e.g. a protected one) stays a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, axis=0)
            ax.plot(x, mean, marker=".", color="tab:blue", zorder=2)
            if arr.shape[0] > 1:
                ax.fill_between(x, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), alpha=0.25, zorder=1)
        own = [j for j in members if j.label == lab]
        seen: set[float] = set()
        for j in sorted(own, key=lambda j: (j.sparsity, repr(j.draw))):
            if j.sparsity in seen or not j.removed_layers:
                continue
            seen.add(j.sparsity)
            removed = [i for i in j.removed_layers if i < len(mean)]
            # offset each sparsity's markers so nested removal sets stay visible
            offset = (sparsities.index(j.sparsity) + 1) * 0.04 * (np.nanmax(mean) - np.nanmin(mean) or 1.0)
            ax.scatter(removed, mean[removed] + offset, marker=markers.get(j.sparsity, "o"), s=22,
                       color=colours.get(j.sparsity), edgecolor="black", linewidth=0.4, zorder=3,
                       label=f"removed at {j['sparsity']:g}")
        direction = _removal_direction(own[0]) if own else ""
        ax.set_title(lab + (f" ({arr.shape[0]} seeds)" if arr.shape[0] > 1 else "")
                     + (f"\n{direction}" if direction else ""), fontsize=9)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.collections if h.get_label().startswith("removed")}
    if handles:
        fig.legend([handles[k] for k in sorted(handles)], sorted(handles), loc="outside lower center",
                   ncols=len(handles), fontsize=8)
    fig.suptitle(f"{model}: score per layer (markers: layers removed at each sparsity)")
    return _save(fig, plot_dir / f"score_profiles__{slug(model)}.png")


def plot_agreement(ag: Agreement, plot_dir: Path) -> Path | None:
    """Heat maps with colour bars: Kendall tau of the redundancy rankings, Jaccard of the
    removed sets per sparsity; each cell's value in black or white, whichever reads."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize

    if len(ag.labels) < 3:  # two scorers: one number per panel, already in summary.md's table
        return None
    panels = [("Kendall tau of layer rankings", ag.tau_matrix(), -1.0, "RdBu_r")]
    panels += [(f"Jaccard of removed sets, sparsity {s:g}", ag.overlap_matrix(s), 0.0, "viridis")
               for s in sorted(ag.overlap)]
    n = len(ag.labels)
    side = 0.5 * n + 2.2
    fig, axes = _grid(len(panels), ncols=2, size=(side + 1.8, side))
    for ax, (title, mat, vmin, cmap_name) in zip(axes, panels):
        arr = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
        cmap, norm = plt.get_cmap(cmap_name), Normalize(vmin=vmin, vmax=1.0)
        im = ax.imshow(arr, cmap=cmap, norm=norm)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_xticks(range(n), ag.labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), ag.labels, fontsize=8)
        for i in range(n):
            for k in range(n):
                if not np.isnan(arr[i, k]):
                    r, g, b, _ = cmap(norm(arr[i, k]))
                    colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(k, i, f"{arr[i, k]:.2f}", ha="center", va="center", fontsize=7, color=colour)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{ag.model}: ranking agreement")
    return _save(fig, plot_dir / f"agreement__{slug(ag.model)}.png")


# --------------------------------------------------------------------------- statistics plots

_VERDICT_COLOURS = {VERDICT_BEST: "tab:green", VERDICT_EQUIVALENT: "tab:cyan", VERDICT_SAME: "tab:blue",
                    VERDICT_INCONCLUSIVE: "tab:orange", VERDICT_WORSE: "tab:red", VERDICT_NA: "grey"}


def _headline_comparisons(summary: Summary, model: str, task: str) -> list[Comparison]:
    metric = summary.headlines.get((model, task))
    return summary.stats.of(model, task, metric) if summary.stats is not None and metric else []


def plot_comparison(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Forest plot: each scorer's difference to the best at each sparsity, with its 95% interval
    simultaneous over the family (the adjusted verdict's), coloured by the verdict."""
    rows = [c for c in _headline_comparisons(summary, model, task)]
    if not any(c.test is not None for c in rows):
        return None
    sps = sorted({c.sparsity for c in rows})
    labels = sorted({c.label for c in rows})
    fig, axes = _grid(len(sps), ncols=len(sps), size=(max(4.2, 8.0 / len(sps)), 0.42 * len(labels) + 2.2),
                      sharey=True)
    for ax, s in zip(axes, sps):
        for i, lab in enumerate(labels):
            c = next((c for c in rows if c.sparsity == s and c.label == lab), None)
            if c is None:
                continue
            colour = _VERDICT_COLOURS[c.verdict]
            lo, hi = c.diff_interval
            face = "white" if c.verdict == VERDICT_WORSE else colour  # hollow = shown worse, in every plot
            if c.test is not None and not math.isnan(lo):
                ax.errorbar([c.test.diff], [i], xerr=[[c.test.diff - lo], [hi - c.test.diff]], fmt="o", color=colour,
                            mfc=face, capsize=3)
            elif c.test is not None:
                ax.plot([c.test.diff], [i], marker="o", mfc=face, color=colour)
            elif c.verdict == VERDICT_BEST:
                ax.plot([0.0], [i], marker="*", markersize=12, color=colour)
        ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"sparsity {s:g}\nbest: {next((c.best for c in rows if c.sparsity == s), '')}", fontsize=8)
        ax.set_xlabel(f"{rows[0].metric}: scorer − best")
        ax.grid(alpha=0.3)
    import matplotlib.lines as mlines

    handles = [mlines.Line2D([], [], color=col, marker="*" if v == VERDICT_BEST else "o", linestyle="", label=v,
                             mfc="white" if v == VERDICT_WORSE else col)
               for v, col in _VERDICT_COLOURS.items() if v != VERDICT_NA]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"{model} · {task}: difference to the best scorer\n95% simultaneous intervals; verdicts: "
                 "Holm over all pairs", fontsize=10)
    return _save(fig, plot_dir / f"comparison__{slug(model)}__{slug(task)}.png")


def plot_agreement_with_unpruned(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Share of samples whose answer did not change against the unpruned model, per scorer."""
    rows = [c for c in _headline_comparisons(summary, model, task) if c.agreement is not None]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    labels = sorted({c.label for c in rows})
    for k, lab in enumerate(labels):
        cs = sorted((c for c in rows if c.label == lab), key=lambda c: c.sparsity)
        off = (k - (len(labels) - 1) / 2) * 0.003
        xs = [0.0] + [c.sparsity + off for c in cs]
        ys = [1.0] + [c.agreement.value for c in cs]
        lo = [0.0] + [c.agreement.value - c.agreement.low for c in cs]
        hi = [0.0] + [c.agreement.high - c.agreement.value for c in cs]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=lab)
    ax.set_xlabel("sparsity (fraction of layers removed)")
    ax.set_ylabel("agreement with the unpruned model")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{model} · {task}: answers unchanged by pruning (95% interval)", fontsize=10)
    return _save(fig, plot_dir / f"agreement_with_unpruned__{slug(model)}__{slug(task)}.png")


def plot_regimes(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Spread across scorers (best − worst, bootstrap interval) and how many are shown worse than none."""
    regs = (summary.stats.regimes.get((model, task)) if summary.stats else None) or []
    if not regs or max(r.n_scorers for r in regs) < 3:  # two scorers: the verdict line says it all
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    xs = [r.sparsity for r in regs]
    width = 0.6 * (min(b - a for a, b in zip(xs, xs[1:])) if len(xs) > 1 else 0.1)
    ax2 = ax.twinx()
    ax2.bar(xs, [r.n_not_shown_worse for r in regs], width=width, color="tab:blue", alpha=0.25,
            label="shown worse than none")
    n_max = max(r.n_scorers for r in regs)
    ax2.set_ylim(0, n_max)
    ax2.set_yticks(range(n_max + 1))
    ax2.set_ylabel(f"scorers shown worse than none (of {n_max})")
    lo = [r.spread - r.spread_low if not math.isnan(r.spread_low) else 0.0 for r in regs]
    hi = [r.spread_high - r.spread if not math.isnan(r.spread_high) else 0.0 for r in regs]
    ax.errorbar(xs, [r.spread for r in regs], yerr=[[max(0.0, v) for v in lo], [max(0.0, v) for v in hi]], marker="o",
                color="tab:red", capsize=3, label="best − worst (95% bootstrap)")
    for r in regs:
        ax.annotate(r.label, (r.sparsity, r.spread), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    top = max(max(r.spread, r.spread_high if not math.isnan(r.spread_high) else 0.0) for r in regs)
    ax.set_ylim(0, top * 1.3 + 1e-9)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    metric = summary.headlines.get((model, task))
    ax.set_xlabel("sparsity (fraction of layers removed)")
    ax.set_ylabel(f"spread of {metric} across scorers")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title(f"{model} · {task}: regimes", fontsize=10)
    return _save(fig, plot_dir / f"regimes__{slug(model)}__{slug(task)}.png")


def plot_pareto(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Headline metric (95% interval) against measured prefill and decode speedup; the ideal
    speedup of each sparsity as a dotted line, the Pareto front, flagged speedups hollow."""
    from topovlm import stats

    rows = (summary.stats.cost.get((model, task)) if summary.stats else None) or []
    rows = [r for r in rows if r.quality is not None]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    metric = summary.headlines.get((model, task))
    lower = not rows[0].quality.higher_is_better
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6), layout="constrained", sharey=True)
    labels = sorted({r.label for r in rows})
    colours = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    markers = {s: m for s, m in zip(sorted({r.sparsity for r in rows}), "osD^v<>p")}
    for ax, kind in zip(axes, ("prefill", "decode")):
        pts = []
        for r in rows:
            st = r.prefill if kind == "prefill" else r.decode
            if st is None:
                continue
            q = r.quality
            flag = stats.speedup_flag(st.mean, r.ideal)
            yerr = None
            if q.interval is not None and q.interval.method != "none":
                yerr = [[max(0.0, q.mean - q.interval.low)], [max(0.0, q.interval.high - q.mean)]]
            ax.errorbar([st.mean], [q.mean], xerr=[st.std] if st.std else None, yerr=yerr, fmt=markers[r.sparsity],
                        color=colours[r.label], mfc="white" if q.verdict == VERDICT_WORSE else colours[r.label],
                        capsize=2, markersize=7)
            if flag:  # suspect timing: a mark beside the point (hollow means "shown worse" in every plot)
                ax.annotate("!", (st.mean, q.mean), textcoords="offset points", xytext=(6, 4), fontsize=10,
                            fontweight="bold", color=colours[r.label])
            pts.append((st.mean, q.mean))
        for s, ideal in sorted({(r.sparsity, r.ideal) for r in rows if r.ideal}):
            ax.axvline(ideal, color="grey", linestyle=":", linewidth=1)
            ax.text(ideal, 1.0, f" ideal {s:g}", rotation=90, va="top", ha="right", fontsize=7, color="grey",
                    transform=ax.get_xaxis_transform())
        ax.axvline(1.0, color="black", linewidth=0.8)
        front = stats.pareto_front(pts, lower_is_better=lower)
        if len(front) > 1:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="black", alpha=0.4, linewidth=1,
                    label="Pareto front")
        ref = next((t.reference for t in summary.tables if (t.model, t.task, t.metric) == (model, task, metric)), None)
        if ref is not None:
            ax.scatter([1.0], [ref.mean], marker="*", s=120, color="black", zorder=5, label=REFERENCE)
        ax.set_xlabel(f"measured {kind} speedup (× unpruned)")
        ax.grid(alpha=0.3)
        ax.set_title(f"{kind}", fontsize=10)
    axes[0].set_ylabel(metric)
    import matplotlib.lines as mlines

    handles = [mlines.Line2D([], [], color=colours[lab], marker="o", linestyle="", label=lab) for lab in labels]
    handles += [mlines.Line2D([], [], color="black", marker=m, linestyle="", label=f"sparsity {s:g}")
                for s, m in markers.items()]
    handles += [mlines.Line2D([], [], color="black", marker="o", mfc="white", linestyle="", label=HOLLOW),
                mlines.Line2D([], [], color="black", marker="$!$", linestyle="",
                              label="!: speedup below 1 or far from ideal (timing noise)")]
    handles += axes[0].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(f"{model} · {task}: quality against measured speedup (dotted: ideal L / kept)", fontsize=10)
    return _save(fig, plot_dir / f"pareto__{slug(model)}__{slug(task)}.png")


def plot_calibration_variance(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Per sparsity and scorer: SD over calibration draws next to one draw's sampling SE (same scale)."""
    rows = (summary.stats.draws.get((model, task)) if summary.stats else None) or []
    rows = [r for r in rows if r.variance.n_draws > 1]
    if not rows:
        return None
    import numpy as np

    sps = sorted({r.sparsity for r in rows})
    labels = sorted({r.label for r in rows})
    fig, axes = _grid(len(sps), ncols=len(sps), size=(4.6, 0.38 * len(labels) + 2.0), sharey=True, sharex=True)
    y = np.arange(len(labels))
    for ax, s in zip(axes, sps):
        by = {r.label: r for r in rows if r.sparsity == s}
        std = [by[lab].variance.std or 0.0 if lab in by else np.nan for lab in labels]
        samp = [by[lab].variance.sampling_se or np.nan if lab in by else np.nan for lab in labels]
        jac = [by[lab].stability.mean_jaccard if lab in by else None for lab in labels]
        ax.barh(y - 0.2, std, height=0.4, color="tab:orange", label="std over calibration draws")
        ax.barh(y + 0.2, samp, height=0.4, color="tab:blue", alpha=0.6, label="sampling SE (one draw)")
        for i, j in enumerate(jac):
            if j is not None:
                ax.text(1.01, i, f"J={j:.2f}", fontsize=7, va="center", ha="left", transform=ax.get_yaxis_transform())
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title(f"sparsity {s:g}", fontsize=9)
        ax.set_xlabel(rows[0].metric)
        ax.grid(alpha=0.3, axis="x")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(f"{model} · {task}: SD over calibration draws vs sampling SE "
                 f"(J = mean pairwise Jaccard of removed layers)", fontsize=10)
    return _save(fig, plot_dir / f"calibration_variance__{slug(model)}__{slug(task)}.png")


def plot_validity(v: "Validity", jobs: list[SummaryJob], plot_dir: Path) -> Path | None:
    """Per-layer leave-one-out damage (bars, bootstrap 95% interval), and under it each scorer's
    removal order (1 = removed first; its first draw), so a scorer that tracks the damage has its
    low ranks where the bars are short."""
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy import stats as sps

    from topovlm.storage import safe_name
    from topovlm.summary.validity import BOOTSTRAP, ORACLE, loo_correct

    members = [j for j in jobs if (j.model, j.task) == (v.model, v.task)]
    labels = [r["scorer"] for r in v.rows]
    ranks = []
    for label in labels:
        j = next(j for j in members if j.label == label and j.redundancy is not None)
        red = np.asarray(j.redundancy, dtype=np.float64)
        ranks.append(sps.rankdata(-np.nan_to_num(red, nan=-np.inf), method="ordinal"))
    n = len(v.damage)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7.0, 0.32 * n + 2), 2.2 + 0.32 * max(1, len(labels)) + 2.6),
                                      gridspec_kw={"height_ratios": [2.6, 0.32 * max(1, len(labels)) + 0.6]},
                                      sharex=True)
    oracle = next(j for j in members if j.scorer == ORACLE)
    correct = loo_correct(oracle)
    err = None
    if correct is not None:
        rng = np.random.default_rng(0)
        idx = rng.integers(0, correct.shape[1], size=(BOOTSTRAP, correct.shape[1]))
        means = correct[:, idx].mean(axis=2)
        boot = means[0] - means[1:]
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=1)
        err = np.vstack([v.damage - lo, hi - v.damage]).clip(min=0)
    top.bar(range(n), v.damage, color="#4c72b0", yerr=err, capsize=2, error_kw={"elinewidth": 0.8})
    top.axhline(0, color="black", lw=0.6)
    top.set_ylabel(f"{v.metric} drop\nwithout the layer")
    top.set_title(f"Measured leave-one-out damage (development split, n={v.dev_n}) and each scorer's removal order",
                  fontsize=10)
    if labels:
        im = bottom.imshow(np.array(ranks), aspect="auto", cmap="viridis_r", vmin=1, vmax=n)
        bottom.set_yticks(range(len(labels)))
        bottom.set_yticklabels([f"{lab} (rho {r['spearman']:+.2f})" for lab, r in zip(labels, v.rows)], fontsize=8)
        fig.colorbar(im, ax=bottom, fraction=0.03, pad=0.01, label="removal order")
    bottom.set_xlabel("decoder layer")
    bottom.set_xticks(range(0, n, max(1, n // 15)))
    fig.tight_layout()
    plot_dir.mkdir(parents=True, exist_ok=True)
    return _save(fig, plot_dir / f"{safe_name(f'validity_{v.model}_{v.task}')}.png")
