"""Which differences are real: intervals, paired tests and variance across calibration draws.

Pure functions over per-sample records (``samples.jsonl``, :mod:`topovlm.samples`) and
per-job values; the summary (:mod:`topovlm.summary`) arranges them into tables and plots.
Every interval and test uses a maintained implementation:

* proportions of one job: Wilson score interval (``scipy.stats.binomtest(...).proportion_ci``);
* any other statistic (a mean over calibration draws, a per-sample loss, a perplexity):
  percentile bootstrap over samples (``scipy.stats.bootstrap``);
* accuracy of two methods on the same samples: McNemar's exact test (the two-sided
  binomial test on the discordant pairs, ``scipy.stats.binomtest``, as
  ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``);
* other paired metrics: a paired bootstrap interval of the mean difference
  (``scipy.stats.bootstrap(paired=True)``) and the paired sign-flip randomisation test
  (``scipy.stats.permutation_test(permutation_type="samples")``) for its p-value;
* several comparisons in one table: Holm's step-down correction
  (``statsmodels.stats.multitest.multipletests(method="holm")``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Callable, Iterable, Sequence

import numpy as np

CONFIDENCE = 0.95
N_RESAMPLES = 4999
ALPHA = 0.05


# --------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval; ``method`` says how it was obtained."""
    value: float
    low: float
    high: float
    n: int
    method: str  # "wilson" | "bootstrap" | "stderr" | "none"

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def fmt(self, digits: int = 3) -> str:
        if self.method == "none" or any(math.isnan(v) for v in (self.low, self.high)):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_dict(self, prefix: str = "") -> dict[str, Any]:
        return {f"{prefix}value": self.value, f"{prefix}ci_low": self.low, f"{prefix}ci_high": self.high,
                f"{prefix}n": self.n, f"{prefix}ci_method": self.method}


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion (``scipy.stats.binomtest``)."""
    from scipy.stats import binomtest

    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "none")
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return Interval(successes / n, float(ci.low), float(ci.high), int(n), "wilson")


def proportion_interval(flags: Sequence[bool | float]) -> Interval:
    """Wilson for 0/1 outcomes; the bootstrap of the mean when some are fractional
    (e.g. a sample's correctness averaged over calibration draws)."""
    arr = np.asarray([float(v) for v in flags if v is not None], dtype=float)
    if arr.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "none")
    if np.all((arr == 0) | (arr == 1)):
        return wilson(int(arr.sum()), int(arr.size))
    return bootstrap_interval(arr)


def bootstrap_interval(*data: Sequence[float], statistic: Callable[..., Any] | None = None,
                       confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Interval:
    """Percentile bootstrap over samples (``scipy.stats.bootstrap``; several arrays are
    resampled together, row by row). ``statistic`` defaults to the mean of one array and must
    accept an ``axis`` keyword (it is called vectorised)."""
    from scipy.stats import bootstrap

    arrays = [np.asarray(d, dtype=float) for d in data]
    n = int(arrays[0].size)
    if statistic is None:
        if len(arrays) != 1:
            raise ValueError("several arrays need a statistic")
        statistic = _mean
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, "none")
    value = float(statistic(*arrays, axis=-1))
    if n < 2 or all(np.all(a == a[0]) for a in arrays):  # nothing to resample: no sampling spread
        return Interval(value, value, value, n, "bootstrap")
    res = bootstrap(tuple(arrays), statistic, paired=len(arrays) > 1, vectorized=True,
                    confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                    random_state=np.random.default_rng(seed))
    return Interval(value, float(res.confidence_interval.low), float(res.confidence_interval.high), n, "bootstrap")


def _mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def perplexity_interval(nll_sums: Sequence[float], num_tokens: Sequence[float], **kw: Any) -> Interval:
    """Token-weighted perplexity ``exp(sum nll / sum tokens)``, bootstrap over samples."""
    def ppl(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.exp(np.sum(a, axis=axis) / np.sum(b, axis=axis))

    return bootstrap_interval(nll_sums, num_tokens, statistic=ppl, **kw)


def stderr_interval(value: float, stderr: float, n: int = 0) -> Interval:
    """A normal interval from a reported standard error (lmms-eval's ``<metric>_stderr``)."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + CONFIDENCE / 2))
    return Interval(float(value), float(value) - z * stderr, float(value) + z * stderr, n, "stderr")


# --------------------------------------------------------------------------- paired tests

@dataclass(frozen=True)
class PairedTest:
    """One method against another on the same samples (``a`` minus ``b``)."""
    test: str            # "mcnemar_exact" | "paired_permutation"
    p_value: float
    diff: float          # mean(a) - mean(b)
    diff_low: float      # 95% paired bootstrap interval of the difference
    diff_high: float
    n: int
    a_only: int | None = None  # McNemar: samples a gets right and b wrong
    b_only: int | None = None


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> PairedTest:
    """McNemar's exact test: the two-sided binomial test of the discordant pairs against 1/2.
    Identical predictions (no discordant pair) give p = 1."""
    from scipy.stats import binomtest

    a = np.asarray(a_correct, dtype=bool)
    b = np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes of different lengths: {a.size} vs {b.size}")
    a_only = int(np.sum(a & ~b))
    b_only = int(np.sum(~a & b))
    p = 1.0 if a_only + b_only == 0 else float(binomtest(a_only, a_only + b_only, 0.5).pvalue)
    ci = paired_bootstrap(a.astype(float), b.astype(float))
    return PairedTest("mcnemar_exact", min(p, 1.0), ci.value, ci.low, ci.high, int(a.size), a_only, b_only)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], **kw: Any) -> Interval:
    """95% paired bootstrap interval of ``mean(a - b)`` (samples resampled together)."""
    def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    return bootstrap_interval(np.asarray(a, dtype=float), np.asarray(b, dtype=float), statistic=diff, **kw)


def paired_permutation(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedTest:
    """Paired comparison of any per-sample value: the sign-flip randomisation test of the
    mean difference (``scipy.stats.permutation_test``) and its paired bootstrap interval."""
    from scipy.stats import permutation_test

    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values of different lengths: {x.size} vs {y.size}")
    ci = paired_bootstrap(x, y, seed=seed)
    if np.allclose(x, y):
        return PairedTest("paired_permutation", 1.0, ci.value, ci.low, ci.high, int(x.size))

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    res = permutation_test((x, y), stat, permutation_type="samples", vectorized=True, n_resamples=n_resamples,
                           alternative="two-sided", random_state=np.random.default_rng(seed))
    return PairedTest("paired_permutation", float(min(res.pvalue, 1.0)), ci.value, ci.low, ci.high, int(x.size))


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Holm-adjusted p-values (``statsmodels.stats.multitest.multipletests``); NaN stays NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], alpha=alpha, method="holm")[1]
    return [float(v) for v in out]


# --------------------------------------------------------------------------- agreement, variance, stability

def agreement_with_reference(agree: Sequence[bool | float | None]) -> Interval:
    """The share of samples whose answer did not change against the unpruned model."""
    return proportion_interval([v for v in agree if v is not None])


@dataclass(frozen=True)
class DrawVariance:
    """A metric over calibration draws: mean ± std, kept apart from the sampling interval."""
    mean: float
    std: float | None
    n_draws: int
    sampling_half_width: float | None  # mean 95% half-width of the single-draw intervals

    def fmt(self, digits: int = 3) -> str:
        text = f"{self.mean:.{digits}f}"
        if self.n_draws > 1:
            text += f" ± {(self.std or 0.0):.{digits}f}"
        return text


def draw_variance(values: Sequence[float], sampling: Sequence[Interval] = ()) -> DrawVariance | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None
    widths = [iv.half_width for iv in sampling if iv.method != "none" and not math.isnan(iv.half_width)]
    return DrawVariance(float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None, len(vals),
                        float(np.mean(widths)) if widths else None)


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


@dataclass(frozen=True)
class RemovalStability:
    """How stable a scorer's removed set is across calibration draws."""
    mean_jaccard: float | None        # mean over pairs of draws; None with one draw
    frequency: list[float]            # per layer: share of draws that remove it
    n_draws: int

    def always(self) -> list[int]:
        return [i for i, f in enumerate(self.frequency) if f == 1.0]

    def sometimes(self) -> list[int]:
        return [i for i, f in enumerate(self.frequency) if 0.0 < f < 1.0]


def removal_stability(sets: Sequence[Iterable[int]], num_layers: int) -> RemovalStability:
    sets = [set(int(i) for i in s) for s in sets]
    pairs = [jaccard(a, b) for a, b in combinations(sets, 2)]
    freq = [0.0] * int(num_layers)
    for s in sets:
        for layer in s:
            if 0 <= layer < num_layers:
                freq[layer] += 1.0 / len(sets)
    return RemovalStability(float(np.mean(pairs)) if pairs else None, freq, len(sets))


# --------------------------------------------------------------------------- regimes, cost

@dataclass(frozen=True)
class Regime:
    """Spread across scorers at one sparsity (the domain-aware paper's regimes, measured)."""
    sparsity: float
    best: str
    worst: str
    spread: float                 # best minus worst (in the metric's better direction)
    n_scorers: int
    n_indistinguishable: int      # scorers not significantly worse than the best (the best included)

    @property
    def label(self) -> str:
        """``convergent`` when no scorer is distinguishable from the best, else
        ``ranking-sensitive`` (the choice of layers matters at this budget)."""
        return "convergent" if self.n_indistinguishable == self.n_scorers else "ranking-sensitive"


def regime(sparsity: float, values: dict[str, float], indistinguishable: Iterable[str], lower_is_better: bool) -> Regime | None:
    if not values:
        return None
    order = sorted(values, key=lambda k: values[k], reverse=not lower_is_better)
    best, worst = order[0], order[-1]
    spread = abs(values[best] - values[worst])
    same = set(indistinguishable) | {best}
    return Regime(float(sparsity), best, worst, float(spread), len(values), len(same & set(values)))


def ideal_speedup(num_layers: int, kept: int) -> float | None:
    """Decoder-bound speedup when ``kept`` of ``num_layers`` layers remain (upper bound: embeddings,
    vision tower and the LM head are not removed)."""
    return None if not kept else num_layers / kept


def speedup_flag(measured: float | None, ideal: float | None, tolerance: float = 0.35) -> str:
    """``below 1`` (pruning made it slower: noise or overheads), ``far from ideal`` (more than
    ``tolerance`` of the ideal gain missing or exceeded), or ``""``."""
    if measured is None or ideal is None or math.isnan(measured):
        return ""
    if measured < 1.0:
        return "below 1"
    gain, ideal_gain = measured - 1.0, ideal - 1.0
    if ideal_gain > 0 and abs(gain - ideal_gain) > tolerance * ideal_gain:
        return "far from ideal"
    return ""


def implausible_speedup(measured: float | None, ideal: float | None) -> bool:
    """A speedup no layer removal can give (above twice the ideal, or not finite): a timing
    artefact, e.g. a decode time taken as the difference of two noisy medians coming out near 0."""
    if measured is None:
        return False
    if not math.isfinite(measured) or measured <= 0:
        return True
    return ideal is not None and measured > 2.0 * ideal


def pareto_front(points: Sequence[tuple[float, float]], lower_is_better: bool = False) -> list[int]:
    """Indices of the points not dominated in (higher x, better y), sorted by x."""
    idx = []
    for i, (x, y) in enumerate(points):
        dominated = False
        for k, (u, v) in enumerate(points):
            better_y = v < y if lower_is_better else v > y
            same_or_better_y = v <= y if lower_is_better else v >= y
            if k != i and u >= x and same_or_better_y and (u > x or better_y):
                dominated = True
                break
        if not dominated:
            idx.append(i)
    return sorted(idx, key=lambda i: points[i][0])
