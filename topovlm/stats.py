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

Where a scorer's removals vary between calibration draws (or seeds), the draw is the unit of
inference (:func:`draw_contrast`): a t-test over draw means whose variance adds the draws'
spread to the questions' sampling variance (Welch-Satterthwaite degrees of freedom), the
prediction interval of one new draw (:func:`prediction_interval`), and the draws a test would
need at the observed spread (:func:`draws_needed`, ``statsmodels.stats.power``). Scorers are
compared over all pairs at one sparsity with Holm (:func:`compare_all_pairs`): the scorers shown
worse than none form a 95% confidence set of the best, and the observed best is tested like
every other scorer; a two-stage bootstrap (questions resampled jointly, draws within each
scorer) gives P(best) and an interval on the spread (:func:`best_bootstrap`). Equivalence is
claimed only by TOST against a stated margin (``statsmodels.stats.weightstats.ttost_paired``).
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
#: equivalence margin (TOST) in the units of a per-question proportion: 0.05 = 5 points of accuracy
EQUIVALENCE_MARGIN = 0.05
#: the power at which :func:`draws_needed` sizes the number of calibration draws
POWER = 0.8

# a scorer's verdict against the others at its sparsity (the summary's words)
VERDICT_BEST = "best"                   # the highest observed mean (P(best) says how sure)
VERDICT_SAME = "not shown different"    # no pair with a better scorer rejected, no equivalence shown
VERDICT_EQUIVALENT = "equivalent"       # TOST against the best within the margin (Holm)
VERDICT_WORSE = "worse"                 # shown worse than at least one scorer (Holm over all pairs)
VERDICT_INCONCLUSIVE = "inconclusive"   # too few calibration draws to decide
VERDICT_NA = "n/a"                      # no per-question records

# how a scorer's per-question results behave over its calibration draws
DRAW_SINGLE = "one draw"
DRAW_FIXED = "identical over draws"
DRAW_VARIES = "varies over draws"


# --------------------------------------------------------------------------- intervals

@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval; ``method`` says how it was obtained."""
    value: float
    low: float
    high: float
    n: int
    method: str  # "wilson" | "bootstrap" | "stderr" | "draw_t" | "prediction" | "constant" | "none"

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
    if n < 2 or all(np.all(a == a[0]) for a in arrays):
        # nothing to resample: a zero-width interval that says nothing about certainty, named as such
        return Interval(value, value, value, n, "constant")
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
    p_floor: float = 0.0       # the smallest p a Monte Carlo test can give (0: exact)
    diff_constant: bool = False  # every pair of samples differs by the same: a zero-width interval

    @property
    def at_floor(self) -> bool:
        """The p-value is the Monte Carlo floor: the true p may be anything below it."""
        return self.p_floor > 0 and self.p_value <= self.p_floor * (1 + 1e-9)


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
    return PairedTest("mcnemar_exact", min(p, 1.0), ci.value, ci.low, ci.high, int(a.size), a_only, b_only,
                      diff_constant=ci.method == "constant")


def paired_bootstrap(a: Sequence[float], b: Sequence[float], **kw: Any) -> Interval:
    """95% paired bootstrap interval of ``mean(a - b)`` (samples resampled together). Where every
    sample's difference is the same the interval has zero width; its method is then ``constant``."""
    def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x, axis=axis) - np.mean(y, axis=axis)

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size and np.all(x - y == (x - y)[0]):
        v = float(np.mean(x - y))
        return Interval(v, v, v, int(x.size), "constant")
    return bootstrap_interval(x, y, statistic=diff, **kw)


def paired_permutation(a: Sequence[float], b: Sequence[float], n_resamples: int = N_RESAMPLES, seed: int = 0) -> PairedTest:
    """Paired comparison of any per-sample value: the sign-flip randomisation test of the
    mean difference (``scipy.stats.permutation_test``) and its paired bootstrap interval."""
    x = np.asarray(a, dtype=float)
    y = np.asarray(b, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"paired values of different lengths: {x.size} vs {y.size}")
    ci = paired_bootstrap(x, y, seed=seed)
    const = ci.method == "constant"
    if np.allclose(x, y):
        return PairedTest("paired_permutation", 1.0, ci.value, ci.low, ci.high, int(x.size), diff_constant=const)
    p, floor = sign_flip_p(x, y, n_resamples=n_resamples, seed=seed)
    return PairedTest("paired_permutation", p, ci.value, ci.low, ci.high, int(x.size), p_floor=floor,
                      diff_constant=const)


def sign_flip_p(x: np.ndarray, y: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Two-sided p of the paired sign-flip test of ``mean(x - y)`` and its Monte Carlo floor
    (0 when scipy enumerates every sign pattern, i.e. 2**n <= n_resamples)."""
    from scipy.stats import permutation_test

    def stat(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(u, axis=axis) - np.mean(v, axis=axis)

    if np.allclose(x, y):
        return 1.0, 0.0
    res = permutation_test((x, y), stat, permutation_type="samples", vectorized=True, n_resamples=n_resamples,
                           alternative="two-sided", random_state=np.random.default_rng(seed))
    exact = x.size < 63 and 2 ** int(x.size) <= n_resamples
    # scipy's randomised p is (hits + 1) / (n_resamples + 1) per side, doubled for two-sided
    floor = 0.0 if exact else 2.0 / (n_resamples + 1)
    return float(min(res.pvalue, 1.0)), floor


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """Holm-adjusted p-values: the k-th smallest times (m - k + 1), made monotone, capped at 1;
    NaN stays NaN. The same numbers as ``statsmodels.stats.multitest.multipletests(method="holm")``
    (tested), computed here because that function runs ``gc.collect()`` on every call, which
    costs a tenth of a second in a process holding many objects (a summary, a simulation)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size:
        order = ok[np.argsort(p[ok], kind="stable")]
        adj = np.maximum.accumulate(p[order] * np.arange(ok.size, 0, -1))
        out[order] = np.minimum(adj, 1.0)
    return [float(v) for v in out]


# --------------------------------------------------------------------------- draws as the unit of inference

def _draws(x: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """A scorer's per-question values as (draws, questions)."""
    arr = np.asarray(x, dtype=float)
    return arr.reshape(1, -1) if arr.ndim == 1 else arr


def draw_status(x: Sequence[Sequence[float]] | np.ndarray) -> str:
    """``one draw``, ``identical over draws`` (every draw gave the same per-question results: the
    draw cannot change the verdict, the questions are the unit) or ``varies over draws``."""
    arr = _draws(x)
    if arr.shape[0] < 2:
        return DRAW_SINGLE
    return DRAW_FIXED if np.allclose(arr, arr[0], rtol=0, atol=1e-12) else DRAW_VARIES


def _t_quantile(q: float, df: float) -> float:
    from scipy.stats import norm, t

    return float(norm.ppf(q)) if not math.isfinite(df) else float(t.ppf(q, df))


def _satterthwaite(components: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """``(variance, df)`` of a sum of independent variance estimates ``(v, df_v)``
    (Welch-Satterthwaite); components that are zero drop out."""
    comps = [(v, k) for v, k in components if v > 0 and k > 0]
    var = float(sum(v for v, _ in comps))
    if var <= 0:
        return 0.0, math.inf
    return var, float(var ** 2 / sum(v ** 2 / k for v, k in comps))


def draw_interval(draw_values: Sequence[float], question_se: float = 0.0, n_questions: int = 0,
                  confidence: float = CONFIDENCE, bounds: tuple[float, float] | None = None) -> Interval:
    """Interval of a method's expected value over calibration draws: mean of the draw values ± t ×
    sqrt(s²/draws + question_se²), the two variances combined with Welch-Satterthwaite degrees of
    freedom (with three draws and a draw spread well above the sampling error this is the
    t-interval over draw means, df = 2). ``bounds`` clips it (a proportion stays in [0, 1])."""
    vals = np.asarray([v for v in draw_values if v is not None and math.isfinite(v)], dtype=float)
    if vals.size < 2:
        return Interval(float("nan"), float("nan"), float("nan"), int(vals.size), "none")
    mean = float(vals.mean())
    var, df = _satterthwaite([(float(vals.var(ddof=1)) / vals.size, vals.size - 1),
                              (float(question_se) ** 2, max(n_questions - 1, 1))])
    half = _t_quantile(0.5 + confidence / 2, df) * math.sqrt(var)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, int(vals.size), "draw_t")


def prediction_interval(draw_values: Sequence[float], confidence: float = CONFIDENCE,
                        bounds: tuple[float, float] | None = None) -> Interval | None:
    """What one new calibration draw of the method would score on these questions: mean ± t(d-1) ×
    s × sqrt(1 + 1/d) over the d draw values (normal theory); None with fewer than two draws."""
    vals = np.asarray([v for v in draw_values if v is not None and math.isfinite(v)], dtype=float)
    if vals.size < 2:
        return None
    mean, sd = float(vals.mean()), float(vals.std(ddof=1))
    half = _t_quantile(0.5 + confidence / 2, vals.size - 1) * sd * math.sqrt(1 + 1 / vals.size)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return Interval(mean, low, high, int(vals.size), "prediction")


@dataclass(frozen=True)
class Contrast:
    """Scorer ``a`` minus scorer ``b`` on the same questions. ``unit``: ``questions`` when neither
    scorer's results vary over draws (McNemar exact for right/wrong, else the sign-flip test),
    ``draws`` when one does (``draw_t``: a t-test of the difference of the mean over draws,
    the draws' spread added to the questions' sampling variance, Welch-Satterthwaite df);
    ``test == "none"``: a scorer has too few draws to measure its spread (``inconclusive``)."""
    test: str                  # "mcnemar_exact" | "paired_permutation" | "draw_t" | "none"
    unit: str                  # "questions" | "draws"
    p_value: float
    diff: float                # mean(a) - mean(b), each averaged over its draws
    se: float                  # standard error of diff (the t-interval's)
    df: float
    n: int                     # questions
    draws: tuple[int, int]
    status: tuple[str, str]    # draw_status of a and b
    p_floor: float = 0.0       # Monte Carlo floor of p (sign-flip); 0 when exact or analytic
    a_only: int | None = None  # McNemar: right for a only
    b_only: int | None = None
    tost_p: float | None = None  # TOST of |diff| < margin (None: no margin)
    inconclusive: str = ""     # why no test ran, e.g. "1 draw"
    sd_draws: tuple[float, float] = (0.0, 0.0)  # SD of each scorer's draw means (0 when fixed)

    @property
    def at_floor(self) -> bool:
        return self.p_floor > 0 and self.p_value <= self.p_floor * (1 + 1e-9)

    def interval(self, confidence: float = CONFIDENCE, m: int = 1) -> tuple[float, float]:
        """Two-sided interval of ``diff``; ``m`` > 1: Bonferroni-simultaneous over ``m`` contrasts."""
        if self.test == "none" or math.isnan(self.se):
            return float("nan"), float("nan")
        half = _t_quantile(1 - (1 - confidence) / (2 * max(m, 1)), self.df) * self.se
        return self.diff - half, self.diff + half

    @property
    def diff_low(self) -> float:
        return self.interval()[0]

    @property
    def diff_high(self) -> float:
        return self.interval()[1]

    @property
    def diff_constant(self) -> bool:
        """Zero standard error: every question differs by the same and nothing varies over draws."""
        return self.test != "none" and self.se == 0.0

    def flipped(self) -> "Contrast":
        """``b`` minus ``a``."""
        return Contrast(self.test, self.unit, self.p_value, -self.diff, self.se, self.df, self.n,
                        self.draws[::-1], self.status[::-1], self.p_floor, self.b_only, self.a_only, self.tost_p,
                        self.inconclusive, self.sd_draws[::-1])


def draw_contrast(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray, *,
                  binary: bool | None = None, margin: float | None = None, n_resamples: int = N_RESAMPLES,
                  seed: int = 0) -> Contrast:
    """``a`` minus ``b``: each a (draws x questions) array of per-question values, questions aligned.

    Neither varies over draws (one draw, or the same results in every draw): the questions are the
    unit, McNemar exact for 0/1 values (``binary``), else the sign-flip test; at least one varies:
    the draws are the unit, ``draw_t`` (see :class:`Contrast`). The standard error is the same
    formula in both cases (it reduces to the paired t over questions when nothing varies), so the
    interval of the difference is always a t-interval. ``margin``: TOST of equivalence,
    ``ttost_paired`` over questions, or the same two one-sided t-tests with the draw-level error."""
    from scipy.stats import t as t_dist

    x, y = _draws(a), _draws(b)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"paired values of different lengths: {x.shape[1]} vs {y.shape[1]}")
    n = int(x.shape[1])
    status = (draw_status(x), draw_status(y))
    binary = bool(np.all((x == 0) | (x == 1)) and np.all((y == 0) | (y == 1))) if binary is None else binary
    d = x.mean(axis=0) - y.mean(axis=0)  # per question, each scorer averaged over its draws
    diff = float(d.mean())
    comps = [(float(d.var(ddof=1)) / n if n > 1 else 0.0, n - 1)]
    sds = []
    for arr, st in ((x, status[0]), (y, status[1])):
        means = arr.mean(axis=1)
        sd = float(means.std(ddof=1)) if st == DRAW_VARIES else 0.0
        sds.append(sd)
        if st == DRAW_VARIES:
            comps.append((sd ** 2 / means.size, means.size - 1))
    var, df = _satterthwaite(comps)
    se = math.sqrt(var)
    draws = (int(x.shape[0]), int(y.shape[0]))

    def tost(p_lower_fn: Callable[[], float]) -> float | None:
        if margin is None:
            return None
        if se == 0:
            return 0.0 if abs(diff) < margin else 1.0
        return p_lower_fn()

    if DRAW_VARIES in status:
        p = 1.0 if se == 0 and diff == 0 else (0.0 if se == 0 else float(2 * t_dist.sf(abs(diff) / se, df)))
        tp = tost(lambda: float(max(t_dist.sf((diff + margin) / se, df), t_dist.cdf((diff - margin) / se, df))))
        return Contrast("draw_t", "draws", min(p, 1.0), diff, se, df, n, draws, status, tost_p=tp,
                        sd_draws=(sds[0], sds[1]))
    xa, yb = x[0], y[0]

    def paired_tost() -> float:
        from statsmodels.stats.weightstats import ttost_paired

        return float(ttost_paired(xa, yb, -margin, margin)[0])

    tp = tost(paired_tost)
    if binary:
        from scipy.stats import binom

        a_only = int(np.sum((xa == 1) & (yb == 0)))
        b_only = int(np.sum((xa == 0) & (yb == 1)))
        # McNemar exact: Binomial(discordant, 1/2) is symmetric, so the two-sided p is twice the
        # smaller tail (binomtest's value, tested; the cdf is far cheaper in the simulations)
        k = a_only + b_only
        p = 1.0 if k == 0 else float(min(1.0, 2 * binom.cdf(min(a_only, b_only), k, 0.5)))
        return Contrast("mcnemar_exact", "questions", min(p, 1.0), diff, se, df, n, draws, status,
                        a_only=a_only, b_only=b_only, tost_p=tp)
    p, floor = sign_flip_p(xa, yb, n_resamples=n_resamples, seed=seed)
    return Contrast("paired_permutation", "questions", p, diff, se, df, n, draws, status, p_floor=floor, tost_p=tp)


def no_contrast(a: np.ndarray, b: np.ndarray, why: str) -> Contrast:
    """A pair no test can decide (e.g. a scorer with one draw where the others' removals vary)."""
    x, y = _draws(a), _draws(b)
    diff = float(x.mean() - y.mean())
    return Contrast("none", "draws", float("nan"), diff, float("nan"), float("nan"), int(x.shape[1]),
                    (int(x.shape[0]), int(y.shape[0])), (draw_status(x), draw_status(y)), inconclusive=why)


def draws_needed(diff: float, sd_a: float, sd_b: float, alpha: float = ALPHA, power: float = POWER,
                 cap: int = 10_000) -> int | None:
    """Calibration draws per scorer (of those whose results vary) for a two-sided t-test at
    ``alpha`` to detect ``diff`` with ``power``, at the observed draw SDs
    (``statsmodels.stats.power``: one-sample when one scorer varies, two-sample when both do).
    The questions' sampling error is left out (small next to a draw spread that decides).
    None: no difference to detect, no draw spread, or more than ``cap``."""
    import warnings

    from statsmodels.stats.power import TTestIndPower, TTestPower

    if not diff or not math.isfinite(diff) or (sd_a <= 0 and sd_b <= 0):
        return None
    try:
        with warnings.catch_warnings():  # no root for a tiny effect: nan, reported as None below
            warnings.simplefilter("ignore")
            if sd_a > 0 and sd_b > 0:
                effect = abs(diff) / math.sqrt((sd_a ** 2 + sd_b ** 2) / 2)
                nobs = TTestIndPower().solve_power(effect_size=effect, alpha=alpha, power=power, ratio=1.0)
            else:
                nobs = TTestPower().solve_power(effect_size=abs(diff) / max(sd_a, sd_b), alpha=alpha, power=power)
    except (ValueError, RuntimeError, ArithmeticError):
        return None
    nobs = float(np.squeeze(nobs))
    if not math.isfinite(nobs) or nobs > cap:
        return None
    return max(2, int(math.ceil(nobs)))


@dataclass(frozen=True)
class Verdict:
    """One scorer at one sparsity, against every other scorer there (:func:`compare_all_pairs`)."""
    kind: str                          # VERDICT_*
    text: str                          # as printed: "worse", "inconclusive: 3 draws", "equivalent (±0.05)", ...
    vs_best: Contrast | None = None    # this scorer minus the best (None for the best itself)
    p_holm: float | None = None        # Holm-adjusted p of the pair with the best
    tost_p_holm: float | None = None   # Holm-adjusted TOST p against the best
    worse_than: tuple[str, ...] = ()   # scorers it is shown worse than
    draws_needed: int | None = None    # draws per varying scorer to decide the pair with the best
    family_size: int = 0               # pairs in the Holm family
    best: str = ""

    def diff_interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """Δ to the best, Bonferroni-simultaneous over the family (the adjusted verdict's interval)."""
        if self.vs_best is None:
            return float("nan"), float("nan")
        return self.vs_best.interval(confidence, m=self.family_size)


def compare_all_pairs(series: dict[str, Sequence[Sequence[float]] | np.ndarray], *, higher_is_better: bool = True,
                      binary: bool | None = None, alpha: float = ALPHA, margin: float | None = None,
                      best: Sequence[str] | None = None, n_resamples: int = N_RESAMPLES,
                      seed: int = 0) -> dict[str, Verdict]:
    """Every scorer at one sparsity against every other, on the same questions.

    ``series``: label -> (draws x questions) per-question values. Every pair is tested
    (:func:`draw_contrast`) and Holm runs over all the pairs: one family. A scorer is ``worse`` when
    it is shown below at least one other scorer; the scorers worse than none form a 95%
    confidence set of the best (the true best is excluded only by a family-wise error), so the
    observed best is not tested against itself on the data that chose it. The others: ``equivalent``
    to the best when TOST at ``margin`` rejects (Holm over the scorers' TOST p-values);
    ``inconclusive: N draws`` when the pair with the best is decided at the draw level, is not
    significant and more draws would be needed at the observed spread (or a scorer has one draw
    where others' removals vary); else ``not shown different``. ``best``: the labels to call the
    best (default: the highest mean here; the summary passes its table's, which for perplexity
    ranks the token-weighted ratio rather than the per-sample loss tested here)."""
    arrays = {lab: _draws(v) for lab, v in series.items()}
    labels = list(arrays)
    if not labels:
        return {}
    sign = 1.0 if higher_is_better else -1.0
    means = {lab: float(arrays[lab].mean()) for lab in labels}
    top = max(sign * v for v in means.values())
    best = [lab for lab in (best or []) if lab in arrays] or [
        lab for lab in labels if math.isclose(sign * means[lab], top, rel_tol=1e-12, abs_tol=1e-12)]
    multi = any(a.shape[0] > 1 for a in arrays.values())
    if binary is None:
        binary = all(bool(np.all((a == 0) | (a == 1))) for a in arrays.values())
    pairs = list(combinations(labels, 2))
    contrasts: dict[tuple[str, str], Contrast] = {}
    for k, (la, lb) in enumerate(pairs):
        x, y = arrays[la], arrays[lb]
        if multi and min(x.shape[0], y.shape[0]) < 2:
            # the other scorers' draws exist: a single draw's spread is unknown, no test can use it
            c = no_contrast(x, y, "1 draw")
        else:
            c = draw_contrast(x, y, binary=binary, margin=margin, n_resamples=n_resamples, seed=seed + k)
        contrasts[(la, lb)], contrasts[(lb, la)] = c, c.flipped()
    m = len(pairs)
    adjusted = dict(zip(pairs, holm([contrasts[p].p_value for p in pairs], alpha=alpha)))
    worse_than: dict[str, list[str]] = {lab: [] for lab in labels}
    for (la, lb), p in adjusted.items():
        if math.isnan(p) or p >= alpha:
            continue
        c = contrasts[(la, lb)]
        loser, winner = (la, lb) if sign * c.diff < 0 else (lb, la)
        worse_than[loser].append(winner)
    ref = best[0]
    others = [lab for lab in labels if lab not in best]
    tost = holm([np.nan if contrasts[(lab, ref)].tost_p is None else contrasts[(lab, ref)].tost_p
                 for lab in others], alpha=alpha)
    out: dict[str, Verdict] = {}
    for lab in best:
        out[lab] = Verdict(VERDICT_BEST, VERDICT_BEST, family_size=m, best=ref)
    for lab, tp in zip(others, tost):
        c = contrasts[(lab, ref)]
        p_adj = adjusted.get((lab, ref), adjusted.get((ref, lab)))
        kw = dict(vs_best=c, p_holm=p_adj, tost_p_holm=None if math.isnan(tp) else tp, family_size=m, best=ref,
                  worse_than=tuple(sorted(worse_than[lab], key=lambda w: -sign * means[w])))
        n_draws = min(nd for nd, st in zip(c.draws, c.status) if st != DRAW_FIXED) if c.unit == "draws" else 0
        if worse_than[lab]:
            out[lab] = Verdict(VERDICT_WORSE, VERDICT_WORSE, **kw)
        elif c.test == "none":
            out[lab] = Verdict(VERDICT_INCONCLUSIVE, f"{VERDICT_INCONCLUSIVE}: {c.inconclusive}", **kw)
        elif not math.isnan(tp) and tp < alpha:
            out[lab] = Verdict(VERDICT_EQUIVALENT, f"{VERDICT_EQUIVALENT} (±{margin:g})", **kw)
        else:
            need = (draws_needed(c.diff, *c.sd_draws, alpha=alpha / max(m, 1)) if c.unit == "draws" else None)
            if need is not None and need > n_draws:
                out[lab] = Verdict(VERDICT_INCONCLUSIVE, f"{VERDICT_INCONCLUSIVE}: {n_draws} draws", draws_needed=need,
                                   **kw)
            else:
                out[lab] = Verdict(VERDICT_SAME, VERDICT_SAME, **kw)
    return out


@dataclass(frozen=True)
class BestSet:
    """The two-stage bootstrap of one sparsity's scorers: how often each is the best, and the
    spread (best minus worst, re-selected in every resample) with its percentile interval."""
    p_best: dict[str, float]
    spread: float
    spread_low: float
    spread_high: float
    n_resamples: int


def best_bootstrap(series: dict[str, Sequence[Sequence[float]] | np.ndarray], *, higher_is_better: bool = True,
                   n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0,
                   chunk: int = 500) -> BestSet | None:
    """Two-stage bootstrap over all scorers at once: each resample draws the questions with
    replacement (the same for every scorer: they answered the same questions), then each scorer's
    draws with replacement (a scorer whose results do not vary is unchanged), and re-selects the
    best. P(best) is the share of resamples in which a scorer is the best (ties shared). With few
    draws the bootstrap understates the draw spread (3 draws resampled show 2/3 of their
    variance): P(best) describes, the verdicts decide."""
    arrays = {lab: _draws(v) for lab, v in series.items()}
    labels = list(arrays)
    if not labels or arrays[labels[0]].shape[1] == 0:
        return None
    n = arrays[labels[0]].shape[1]
    sign = 1.0 if higher_is_better else -1.0
    rng = np.random.default_rng(seed)
    wins = np.zeros(len(labels))
    spreads = []
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float) / n  # (b, n) question weights
        means = []
        for lab in labels:
            dm = arrays[lab] @ w.T                                               # (draws, b)
            pick = rng.integers(0, dm.shape[0], size=dm.shape)                   # draws within the scorer
            means.append(np.take_along_axis(dm, pick, axis=0).mean(axis=0))
        M = sign * np.vstack(means)                                              # (scorers, b)
        top = M.max(axis=0)
        is_best = np.isclose(M, top, rtol=0, atol=1e-12)
        wins += (is_best / is_best.sum(axis=0)).sum(axis=1)
        spreads.append(top - M.min(axis=0))
        done += b
    spread = np.concatenate(spreads)
    obs = np.array([sign * arrays[lab].mean() for lab in labels])
    alpha = 1 - confidence
    return BestSet({lab: float(v / n_resamples) for lab, v in zip(labels, wins)}, float(obs.max() - obs.min()),
                   float(np.quantile(spread, alpha / 2)), float(np.quantile(spread, 1 - alpha / 2)), n_resamples)


# --------------------------------------------------------------------------- agreement, variance, stability

def agreement_with_reference(agree: Sequence[bool | float | None]) -> Interval:
    """The share of samples whose answer did not change against the unpruned model."""
    return proportion_interval([v for v in agree if v is not None])


@dataclass(frozen=True)
class DrawVariance:
    """A metric over calibration draws: mean ± SD, the prediction interval of one new draw, and
    the sampling error of one draw on the same scale (a standard error, not a 95% half-width)."""
    mean: float
    std: float | None
    n_draws: int
    sampling_half_width: float | None  # mean 95% half-width of the single-draw intervals
    prediction: Interval | None = None  # one new draw (None with one draw)

    @property
    def sampling_se(self) -> float | None:
        """The single draws' standard error over questions (their 95% half-width / z)."""
        from scipy.stats import norm

        if self.sampling_half_width is None:
            return None
        return self.sampling_half_width / float(norm.ppf(0.5 + CONFIDENCE / 2))

    def fmt(self, digits: int = 3) -> str:
        text = f"{self.mean:.{digits}f}"
        if self.n_draws > 1:
            text += f" ± {(self.std or 0.0):.{digits}f}"
        return text


def draw_variance(values: Sequence[float], sampling: Sequence[Interval] = (),
                  bounds: tuple[float, float] | None = None) -> DrawVariance | None:
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return None
    widths = [iv.half_width for iv in sampling if iv.method != "none" and not math.isnan(iv.half_width)]
    return DrawVariance(float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else None, len(vals),
                        float(np.mean(widths)) if widths else None, prediction_interval(vals, bounds=bounds))


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
    """Spread across scorers at one sparsity (the domain-aware paper's regimes), defined by what
    the tests showed: ``convergent`` when every scorer is shown equivalent to the best (TOST at
    ``margin``), ``ranking-sensitive`` when at least one is shown worse than another, else
    ``undetermined`` (neither shown: no regime is claimed)."""
    sparsity: float
    best: str
    worst: str
    spread: float                 # best minus worst (in the metric's better direction)
    n_scorers: int
    n_not_shown_worse: int        # scorers worse than none: the confidence set of the best
    n_equivalent: int = 0         # the best plus the scorers shown equivalent to it
    spread_low: float = float("nan")   # two-stage bootstrap interval of the spread (re-selected)
    spread_high: float = float("nan")
    margin: float | None = None

    @property
    def label(self) -> str:
        if self.n_not_shown_worse < self.n_scorers:
            return "ranking-sensitive"
        if self.margin is not None and self.n_equivalent == self.n_scorers:
            return "convergent"
        return "undetermined"


def regime(sparsity: float, values: dict[str, float], not_worse: Iterable[str], lower_is_better: bool,
           equivalent: Iterable[str] = (), spread_interval: tuple[float, float] | None = None,
           margin: float | None = None) -> Regime | None:
    """``not_worse``: the scorers shown worse than none; ``equivalent``: those shown equivalent to
    the best (the best counts in both)."""
    if not values:
        return None
    order = sorted(values, key=lambda k: values[k], reverse=not lower_is_better)
    best, worst = order[0], order[-1]
    spread = abs(values[best] - values[worst])
    same = set(not_worse) | {best}
    eq = set(equivalent) | {best}
    low, high = spread_interval if spread_interval is not None else (float("nan"), float("nan"))
    return Regime(float(sparsity), best, worst, float(spread), len(values), len(same & set(values)),
                  len(eq & set(values)), float(low), float(high), margin)


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
