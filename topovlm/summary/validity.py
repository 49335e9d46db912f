"""Does a scorer predict the damage? Each scorer's ranking against the oracle's measurements.

With an ``oracle`` job in the summary (``scorer=oracle``, :mod:`topovlm.oracle`) of the same
model and task, for every other scorer:

* the rank correlation (Spearman's rho and Kendall's tau, ``scipy.stats``) between its
  redundancy and the negated leave-one-out damage: +1 means it orders the layers exactly as
  removing them hurts the development metric (the least harmful first), 0 no relation. The
  95% interval is a bootstrap over the development questions (the damage is re-measured on
  every resample; the scorer's ranking is fixed). A scorer with several calibration draws gets
  the mean over its draws' correlations.
* its gap to the greedy oracle at each sparsity on the *test* questions: the scorer's metric
  minus the oracle's, paired by question (the mean over its draws per question), with a
  t-interval over questions, conditional on these draws (the draw-level verdicts of the main
  tables say what varies between draws).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from topovlm.summary.load import SummaryJob
from topovlm.summary.statistics import CellDraws, cell_draws, job_samples

ORACLE = "oracle"
VALIDITY_CSV = "validity.csv"
BOOTSTRAP = 500  # resamples of the development questions (percentile intervals)


@dataclass
class Validity:
    model: str
    task: str
    metric: str               # the oracle's development metric
    damage: np.ndarray        # (L,) leave-one-out damage
    dev_n: int
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per scorer
    gaps: list[dict[str, Any]] = field(default_factory=list)  # one per (scorer, sparsity)

    def markdown(self) -> str:
        lines = [f"### Does a scorer predict the damage? ({self.model} · {self.task})",
                 f"Rank correlation of each scorer's redundancy with the layers' measured leave-one-out damage "
                 f"(development split, {self.metric}, n={self.dev_n} questions; +1: removes the least harmful "
                 f"layers first), 95% bootstrap interval over development questions:", "",
                 "| scorer | draws | Spearman rho [95% CI] | Kendall tau [95% CI] |", "| --- | --- | --- | --- |"]
        for r in self.rows:
            lines.append(f"| {r['scorer']} | {r['draws']} | {_ci(r, 'spearman')} | {_ci(r, 'kendall')} |")
        if self.gaps:
            lines += ["", "Gap to the greedy oracle on the test questions (scorer minus oracle, paired by question; "
                      "95% t-interval: over draws, with their spread, where the scorer's results vary between "
                      "calibration draws, else over questions):", "",
                      "| scorer | sparsity | draws | scorer | oracle | gap [95% CI] | unit | n |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            for g in self.gaps:
                lines.append(f"| {g['scorer']} | {g['sparsity']:g} | {g['draws']} | {g['value']:.3f} | "
                             f"{g['oracle']:.3f} | {_gap(g)} | {g['unit']} | {g['n']} |")
        return "\n".join(lines)


def _gap(g: dict[str, Any]) -> str:
    if math.isnan(g["gap_low"]):
        return f"{g['gap']:+.3f} [n/a]"
    return f"{g['gap']:+.3f} [{g['gap_low']:+.3f}, {g['gap_high']:+.3f}]"


def _ci(row: dict[str, Any], key: str) -> str:
    v = row[key]
    if v is None or math.isnan(v):
        return "n/a"
    return f"{v:+.2f} [{row[key + '_low']:+.2f}, {row[key + '_high']:+.2f}]"


def loo_correct(job: SummaryJob) -> np.ndarray | None:
    """The oracle's per-question leave-one-out results: (L + 1, n), row 0 the unpruned model."""
    candidates = [Path(job.path).parent / "loo_correct.npz"] if job.path else []
    candidates += [Path(p) for p in [(job.arrays or {}).get("loo_correct")] if p]
    for path in candidates:
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                return np.asarray(z[z.files[0]], dtype=np.float64)
    return None


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _ranked(redundancy: Any) -> np.ndarray:
    """Redundancy with protected layers (never removed: -inf, written as null in results.json and
    read back as NaN) ranked as the least redundant, so that they enter the correlation."""
    r = np.asarray(redundancy, dtype=np.float64)
    never = np.isnan(r) | np.isneginf(r)
    if never.any() and (~never).any():
        r = np.where(never, r[~never].min() - 1, r)
    return r


def _correlations(redundancy: np.ndarray, damage: np.ndarray) -> tuple[float, float]:
    r = _ranked(redundancy)
    if not np.isfinite(r).all() or np.ptp(r) == 0 or np.ptp(damage) == 0:
        return float("nan"), float("nan")
    return float(sps.spearmanr(r, -damage).statistic), float(sps.kendalltau(r, -damage).statistic)


def validity(jobs: list[SummaryJob], model: str, task: str, metric: str | None, seed: int = 0) -> Validity | None:
    members = [j for j in jobs if (j.model, j.task) == (model, task)]
    oracles = [j for j in members if j.scorer == ORACLE and isinstance(j.get("oracle"), dict)]
    if not oracles:
        return None
    oracle = oracles[0]
    info = oracle["oracle"]
    damage = np.asarray(info["loo_damage"], dtype=np.float64)
    correct = loo_correct(oracle)
    out = Validity(model, task, info["metric"], damage, int(info["dev_n"]))
    rng = np.random.default_rng(seed)
    boot_damage = None
    if correct is not None:
        idx = rng.integers(0, correct.shape[1], size=(BOOTSTRAP, correct.shape[1]))
        means = correct[:, idx].mean(axis=2)          # (L + 1, B)
        boot_damage = (means[0] - means[1:]).T         # (B, L)
    for label in sorted({j.label for j in members if j.scorer != ORACLE}):
        # one ranking per draw: the sparsities of a draw share it
        rankings = {tuple(np.round(_ranked(j.redundancy), 12)): j
                    for j in members if j.label == label and j.redundancy is not None}
        reds = [np.asarray(r, dtype=np.float64) for r in rankings if len(r) == len(damage)]
        if not reds:
            continue
        row: dict[str, Any] = {"model": model, "task": task, "scorer": label, "draws": len(reds)}
        for k, key in enumerate(("spearman", "kendall")):
            row[key] = _mean([_correlations(r, damage)[k] for r in reds])
            if boot_damage is not None:
                boots = np.array([_mean([_correlations(r, d)[k] for r in reds]) for d in boot_damage])
                boots = boots[np.isfinite(boots)]
                lo, hi = (np.percentile(boots, [2.5, 97.5]) if boots.size else (float("nan"),) * 2)
            else:
                lo = hi = float("nan")
            row[f"{key}_low"], row[f"{key}_high"] = float(lo), float(hi)
        out.rows.append(row)
    if metric:
        out.gaps = _gaps(members, metric)
    return out


def _draws(jobs: list[SummaryJob], metric: str) -> CellDraws | None:
    """A scorer's per-question 0/1 results in each of its draws at one sparsity."""
    cell = cell_draws([job_samples(j) for j in jobs], metric)
    return cell if cell is not None and cell.kind == "proportion" else None


def _gaps(members: list[SummaryJob], metric: str) -> list[dict[str, Any]]:
    """Each scorer minus the greedy oracle at each sparsity, paired by question. The interval is
    the comparison's own (:func:`topovlm.stats.draw_contrast`): where the scorer's results vary
    between calibration draws, the draws are the unit and their spread is in the interval."""
    from topovlm import stats

    out = []
    for sparsity in sorted({float(j.sparsity) for j in members if j.scorer == ORACLE}):
        at = [j for j in members if float(j.sparsity) == sparsity]
        oracle = _draws([j for j in at if j.scorer == ORACLE], metric)
        if oracle is None:
            continue
        for label in sorted({j.label for j in at if j.scorer != ORACLE}):
            mine = _draws([j for j in at if j.label == label], metric)
            keys = sorted(set(mine.keys) & set(oracle.keys)) if mine is not None else []
            if len(keys) < 2:
                continue
            a = mine.values[:, [mine.keys.index(k) for k in keys]]
            b = oracle.values[:, [oracle.keys.index(k) for k in keys]]
            c = stats.draw_contrast(a, b, binary=True)
            low, high = c.interval()
            out.append({"scorer": label, "sparsity": sparsity, "value": float(a.mean()), "oracle": float(b.mean()),
                        "gap": c.diff, "gap_low": low, "gap_high": high, "n": len(keys), "draws": int(a.shape[0]),
                        "unit": c.unit})
    return out


def validity_rows(items: list[Validity]) -> tuple[list[str], list[dict[str, Any]]]:
    """validity.csv: one row per scorer (correlations) and per (scorer, sparsity) (gap)."""
    columns = ["model", "task", "scorer", "kind", "sparsity", "draws", "value", "low", "high", "n"]
    rows = []
    for v in items:
        for r in v.rows:
            for key in ("spearman", "kendall"):
                rows.append({"model": v.model, "task": v.task, "scorer": r["scorer"], "kind": key, "sparsity": None,
                             "draws": r["draws"], "value": r[key], "low": r[f"{key}_low"], "high": r[f"{key}_high"],
                             "n": v.dev_n})
        for g in v.gaps:
            rows.append({"model": v.model, "task": v.task, "scorer": g["scorer"], "kind": "gap_to_oracle",
                         "sparsity": g["sparsity"], "draws": g["draws"], "value": g["gap"], "low": g["gap_low"],
                         "high": g["gap_high"], "n": g["n"]})
    return columns, rows

