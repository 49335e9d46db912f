"""Verdicts that survive another calibration draw: draw-level inference, the family of all pairs,
TOST, the Monte Carlo floor, and simulations of the verdicts' error rates (docs/statistics.md)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.unit.test_summary import read_csv, stat_job
from topovlm import stats

N_Q = 300  # questions per simulated table


def _draw(rng: np.random.Generator, acc: float, n: int = N_Q) -> np.ndarray:
    return (rng.random(n) < acc).astype(float)


def _beta_mean_sd(rng: np.random.Generator, mean: float, sd: float, size: int) -> np.ndarray:
    """Draw accuracies with the given mean and SD (a Beta distribution: stays in [0, 1])."""
    k = mean * (1 - mean) / sd ** 2 - 1
    return rng.beta(mean * k, (1 - mean) * k, size=size)


def _null_table(rng: np.random.Generator, draw_sd: float = 0.2, n_draws: int = 3) -> dict[str, np.ndarray]:
    """Three scorers of equal expected accuracy 0.7: one whose removals (and so its accuracy) vary
    between calibration draws with SD ``draw_sd``, two whose removals are the same in every draw."""
    varies = np.vstack([_draw(rng, a) for a in _beta_mean_sd(rng, 0.7, draw_sd, n_draws)])
    fixed = {name: np.tile(_draw(rng, 0.7), (n_draws, 1)) for name in ("b", "c")}
    return {"varies": varies, **fixed}


# --------------------------------------------------------------------------- simulations

def test_null_with_draw_variance_is_rarely_called_worse():
    """Equal expected accuracy, draw SD 0.2, 3 draws, 300 questions: the draw-level verdict calls
    the varying scorer worse at most ~10% of the time (averaging the draws and testing the
    questions, as before, did so about half the time). Any scorer called worse: about 9% (400
    replicates): three draws from a skewed distribution (mean 0.7, SD 0.2 inside [0, 1]) make the
    t-test over draw means a little liberal on the high side, where the fixed scorers lose."""
    rng = np.random.default_rng(31)
    reps = 200
    worse_varies = any_worse = 0
    for _ in range(reps):
        v = stats.compare_all_pairs(_null_table(rng), margin=0.05)
        worse_varies += v["varies"].kind == stats.VERDICT_WORSE
        any_worse += any(x.kind == stats.VERDICT_WORSE for x in v.values())
    assert worse_varies / reps <= 0.10
    assert any_worse / reps <= 0.15


def test_the_old_question_level_test_fails_that_null():
    """The same null, tested the old way (per-question means over the draws, sign-flip test against
    the observed best): the draws' spread is read as a difference far more often than 5%."""
    rng = np.random.default_rng(32)
    reps, worse = 60, 0
    for _ in range(reps):
        t = _null_table(rng)
        means = {k: v.mean() for k, v in t.items()}
        best = max(means, key=means.get)
        if best != "varies":
            p = stats.paired_permutation(t["varies"].mean(axis=0), t[best].mean(axis=0), n_resamples=999).p_value
            worse += p < 0.05
    assert worse / reps > 0.25


def test_mcnemar_in_the_pairs_is_the_exact_binomial_test():
    rng = np.random.default_rng(8)
    for n in (5, 40, 300):
        a, b = _draw(rng, 0.6, n), _draw(rng, 0.7, n)
        c = stats.draw_contrast(a, b)
        ref = stats.mcnemar_exact(a == 1, b == 1)
        assert c.test == "mcnemar_exact" and c.p_value == pytest.approx(ref.p_value, rel=1e-12)
        assert (c.a_only, c.b_only) == (ref.a_only, ref.b_only)


def test_a_real_difference_without_draw_variance_is_detected():
    """0.5 against 0.8, removals the same in every draw: McNemar over the questions finds it."""
    rng = np.random.default_rng(33)
    reps, found = 40, 0
    for _ in range(reps):
        table = {"low": np.tile(_draw(rng, 0.5), (3, 1)), "high": np.tile(_draw(rng, 0.8), (3, 1))}
        v = stats.compare_all_pairs(table)
        found += v["low"].kind == stats.VERDICT_WORSE
        assert v["low"].vs_best.test == "mcnemar_exact" and v["low"].vs_best.unit == "questions"
    assert found == reps


def test_a_real_difference_with_small_draw_variance_is_detected_at_the_draw_level():
    rng = np.random.default_rng(34)
    reps, found = 40, 0
    for _ in range(reps):
        low = np.vstack([_draw(rng, a) for a in _beta_mean_sd(rng, 0.5, 0.03, 3)])
        v = stats.compare_all_pairs({"low": low, "high": np.tile(_draw(rng, 0.8), (3, 1))})
        found += v["low"].kind == stats.VERDICT_WORSE
        assert v["low"].vs_best.test == "draw_t"
    assert found / reps >= 0.9


def test_all_pairs_holm_keeps_the_family_wise_error_under_the_global_null():
    """Nine scorers of equal accuracy (one draw each): the observed best is no longer tested
    against itself, and Holm over the 36 pairs keeps 'any worse' near 5% (was 11%)."""
    rng = np.random.default_rng(35)
    reps, any_worse = 120, 0
    for _ in range(reps):
        v = stats.compare_all_pairs({f"s{i}": _draw(rng, 0.7, 200) for i in range(9)})
        any_worse += any(x.kind == stats.VERDICT_WORSE for x in v.values())
        assert next(iter(v.values())).family_size == 36
    assert any_worse / reps <= 0.10


# --------------------------------------------------------------------------- the issue's case

def _issue_case() -> dict[str, np.ndarray]:
    """topo at 10% removed different layers in three draws and scored 0.505, 0.900, 0.790 on 200
    questions; shortgpt removed the same layers each time and scored 0.845."""
    rng = np.random.default_rng(0)
    rows = []
    for k in (101, 180, 158):
        r = np.zeros(200)
        r[rng.choice(200, k, replace=False)] = 1
        rows.append(r)
    s = np.zeros(200)
    s[rng.choice(200, 169, replace=False)] = 1
    return {"topo": np.vstack(rows), "shortgpt": np.tile(s, (3, 1))}


def test_the_issues_case_is_not_shown_worse_and_says_how_many_draws_would_decide():
    from scipy.stats import t as t_dist

    case = _issue_case()
    v = stats.compare_all_pairs(case, margin=0.05)
    topo = v["topo"]
    assert v["shortgpt"].kind == stats.VERDICT_BEST
    c = topo.vs_best
    assert c.test == "draw_t" and c.unit == "draws" and c.status == (stats.DRAW_VARIES, stats.DRAW_FIXED)
    assert c.diff == pytest.approx(0.73167 - 0.845, abs=1e-4)
    assert 0.35 < c.p_value < 0.55  # a one-sample t over the three draw means gives 0.44
    assert topo.kind == stats.VERDICT_INCONCLUSIVE and topo.text == "inconclusive: 3 draws"
    assert topo.draws_needed is not None and topo.draws_needed > 10
    # with that many draws at the same spread and difference the t-test has ~80% power
    sd = float(np.std(case["topo"].mean(axis=1), ddof=1))
    n = topo.draws_needed
    nc = abs(c.diff) / (sd / math.sqrt(n))
    crit = t_dist.ppf(1 - 0.05 / 2, n - 1)
    power = t_dist.sf(crit - nc, n - 1)  # the far tail is negligible here
    assert 0.75 < power < 0.9
    # the interval of topo's expected accuracy over draws: the t-interval over draw means, widened a
    # little by the questions' sampling error, clipped to [0, 1]
    iv = stats.draw_interval(case["topo"].mean(axis=1), question_se=0.02, n_questions=200, bounds=(0.0, 1.0))
    assert iv.method == "draw_t" and iv.low == pytest.approx(0.23, abs=0.02) and iv.high == 1.0
    pi = stats.prediction_interval(case["topo"].mean(axis=1))
    half = t_dist.ppf(0.975, 2) * sd * math.sqrt(1 + 1 / 3)
    assert (pi.low, pi.high) == pytest.approx((0.73167 - half, 0.73167 + half), abs=1e-4)


def test_a_single_draw_where_others_vary_is_inconclusive():
    case = _issue_case()
    case["one"] = case["shortgpt"][:1] * 0 + 1  # one draw only, all right
    case["one"][0, :100] = 0
    v = stats.compare_all_pairs(case)
    assert v["one"].kind == stats.VERDICT_INCONCLUSIVE and v["one"].text == "inconclusive: 1 draw"
    assert v["one"].vs_best.test == "none" and math.isnan(v["one"].vs_best.p_value)


def test_best_bootstrap_p_best_and_spread():
    rng = np.random.default_rng(3)
    table = {"a": np.tile(_draw(rng, 0.9), (3, 1)), "b": np.tile(_draw(rng, 0.5), (3, 1)),
             "c": np.vstack([_draw(rng, a) for a in (0.4, 0.5, 0.6)])}
    bs = stats.best_bootstrap(table, n_resamples=999)
    assert sum(bs.p_best.values()) == pytest.approx(1.0) and bs.p_best["a"] > 0.99
    assert bs.spread_low < bs.spread < bs.spread_high
    close = stats.best_bootstrap({"x": table["b"], "y": table["b"][:, ::-1]}, n_resamples=999)
    assert 0.1 < close.p_best["x"] < 0.9  # the same accuracy: either can come out best
    low = stats.best_bootstrap(table, higher_is_better=False, n_resamples=199)
    assert low.p_best["a"] < 0.01  # lower is better: a is the worst


# --------------------------------------------------------------------------- equivalence and small things

def test_tost_matches_statsmodels_and_needs_a_margin():
    from statsmodels.stats.weightstats import ttost_paired

    rng = np.random.default_rng(4)
    a = _draw(rng, 0.8)
    b = a.copy()
    b[:6] = 1 - b[:6]
    c = stats.draw_contrast(a, b, margin=0.05)
    assert c.tost_p == pytest.approx(ttost_paired(a, b, -0.05, 0.05)[0])
    assert stats.draw_contrast(a, b).tost_p is None
    v = stats.compare_all_pairs({"a": a, "b": b}, margin=0.05)
    other = next(x for x in v.values() if x.kind != stats.VERDICT_BEST)
    assert other.kind == stats.VERDICT_EQUIVALENT and other.text == "equivalent (±0.05)"
    v = stats.compare_all_pairs({"a": a, "b": b})  # no margin: never "equivalent"
    assert next(x for x in v.values() if x.kind != stats.VERDICT_BEST).kind == stats.VERDICT_SAME


def test_a_failure_to_reject_is_not_shown_different_not_equivalence():
    rng = np.random.default_rng(5)
    a, b = _draw(rng, 0.5, 40), _draw(rng, 0.45, 40)
    v = stats.compare_all_pairs({"a": a, "b": b}, margin=0.05)
    other = next(x for x in v.values() if x.kind != stats.VERDICT_BEST)
    assert other.kind == stats.VERDICT_SAME and other.text == "not shown different"


def test_monte_carlo_floor_is_marked():
    from topovlm.summary.statistics import _fmt_p

    rng = np.random.default_rng(6)
    x = rng.normal(1.0, 0.1, 300)
    y = rng.normal(0.0, 0.1, 300)
    t = stats.paired_permutation(x, y, n_resamples=999)
    assert t.at_floor and t.p_floor == pytest.approx(2 / 1000)
    assert _fmt_p(t.p_value, t.at_floor) == "≤ 0.002" and _fmt_p(25 * t.p_value, True) == "≤ 0.050"
    exact = stats.paired_permutation(x[:8], y[:8], n_resamples=999)  # 2**8 sign patterns: enumerated
    assert exact.p_floor == 0.0 and not exact.at_floor
    c = stats.draw_contrast(x, y)
    assert c.test == "paired_permutation" and c.at_floor


def test_zero_width_paired_intervals_are_flagged():
    a = np.array([1.0, 0.0, 1.0, 1.0] * 10)
    iv = stats.paired_bootstrap(a, a - 0.5)
    assert (iv.low, iv.high, iv.method) == (0.5, 0.5, "constant")
    assert stats.mcnemar_exact(a, a).diff_constant
    assert not stats.mcnemar_exact(a, a[::-1]).diff_constant
    assert stats.draw_contrast(a, a - 0.5).diff_constant


def test_simultaneous_interval_is_wider_than_the_unadjusted_one():
    rng = np.random.default_rng(7)
    c = stats.draw_contrast(_draw(rng, 0.6), _draw(rng, 0.7))
    lo1, hi1 = c.interval()
    lo3, hi3 = c.interval(m=3)
    assert lo3 < lo1 < c.diff < hi1 < hi3
    assert (c.diff_low, c.diff_high) == (lo1, hi1)


# --------------------------------------------------------------------------- end to end

def test_summarize_a_sweep_with_varying_draws_end_to_end(tmp_path: Path, capsys):
    """``topovlm summarize DIR`` on a sweep whose topo removals vary between three calibration
    draws: the verdicts, intervals and counts come from the draw-level statistics."""
    from topovlm.cli import main

    root = tmp_path / "sweep"
    case = _issue_case()
    stat_job(root, "cosine", 0.0, [True] * 200, removed=[])
    for seed in range(3):
        stat_job(root, "topo", 0.1, [bool(v) for v in case["topo"][seed]], cal_seed=seed,
                 removed=[[1, 2, 3], [4, 5, 6], [5, 6, 7]][seed])
        stat_job(root, "shortgpt", 0.1, [bool(v) for v in case["shortgpt"][seed]], cal_seed=seed, removed=[2, 3, 4])
        stat_job(root, "tail", 0.1, [i % 5 == 0 for i in range(200)], cal_seed=seed, removed=[5, 6, 7])
    assert main(["summarize", str(root), "--no-plots"]) == 0
    comp = {r["scorer"]: r for r in read_csv(root / "comparison.csv") if r["metric"] == "accuracy"}
    topo, sgpt, tail = comp["topo"], comp["shortgpt"], comp["tail"]
    assert sgpt["verdict"] == "best" and sgpt["draw_status"] == "identical over draws"
    assert topo["verdict"] == "inconclusive: 3 draws" and topo["test"] == "draw_t" and int(topo["draws_needed"]) > 10
    assert topo["ci_method"] == "draw_t" and float(topo["ci_high"]) == 1.0 and float(topo["ci_low"]) < 0.3
    assert float(topo["new_draw_pi_low"]) < 0.5 and float(topo["p_value"]) > 0.3
    # tail's results are identical over draws, like shortgpt's: McNemar over the questions, recorded as such
    assert tail["verdict"] == "worse" and tail["test"] == "mcnemar_exact" and tail["unit"] == "questions"
    assert "shortgpt" in tail["worse_than"]
    md = (root / "summary.md").read_text()
    assert "inconclusive: 3 draws (~" in md and "t over draws" in md and "3 (vary)" in md and "3 (identical)" in md
    assert "0.1: shortgpt, topo." in md  # the confidence set of the best keeps topo
    reg = read_csv(root / "regimes.csv")[0]
    assert reg["regime"] == "ranking-sensitive" and reg["n_not_shown_worse"] == "2"
    cal = {r["scorer"]: r for r in read_csv(root / "calibration_variance.csv")}
    assert float(cal["topo"]["std_over_draws"]) == pytest.approx(0.2036, abs=1e-3)
    assert float(cal["shortgpt"]["new_draw_pi_low"]) == pytest.approx(float(cal["shortgpt"]["new_draw_pi_high"]))
    out = capsys.readouterr().out
    assert "comparison of scorers (confirmatory family" in out


def test_perplexity_draws_test_the_per_sample_loss_and_keep_the_ratio_per_draw():
    """A loss metric: each draw's value is the token-weighted perplexity, the pairs are tested on
    the per-sample loss, lower is better, and no equivalence margin applies."""
    from topovlm.summary.statistics import cell_draws

    rng = np.random.default_rng(9)
    toks = rng.integers(5, 20, 60)

    def recs(shift: float) -> list[dict]:
        loss = 2.0 + shift + rng.normal(0, 0.3, 60)
        return [{"key": f"q{i}", "nll_sum": float(l * t), "num_tokens": int(t)} for i, (l, t) in enumerate(zip(loss, toks))]

    good = [recs(0.0), recs(0.02), recs(-0.02)]
    bad = [recs(0.5)] * 3
    cd = cell_draws(good, "perplexity")
    assert cd.kind == "ratio" and cd.values.shape == (3, 60)
    first = good[0]
    assert cd.draw_values[0] == pytest.approx(math.exp(sum(r["nll_sum"] for r in first) / sum(toks)))
    assert cd.values[0, 0] == pytest.approx(first[0]["nll_sum"] / first[0]["num_tokens"])
    bad_cd = cell_draws(bad, "perplexity")
    v = stats.compare_all_pairs({"good": cd.values, "bad": bad_cd.values}, higher_is_better=False, binary=False)
    assert v["good"].kind == stats.VERDICT_BEST and v["bad"].kind == stats.VERDICT_WORSE
    assert v["bad"].vs_best.test == "draw_t" and v["bad"].vs_best.diff > 0.4 and v["bad"].vs_best.tost_p is None


def test_the_oracle_is_a_yardstick_and_the_gap_to_it_counts_the_draws(tmp_path: Path):
    """The oracle is neither the best nor a member of the family of tests; a varying scorer's gap
    to it has the draws as its unit, so its interval is wider than one conditional on the draws."""
    from topovlm.summary import build_summary
    from topovlm.summary.statistics import YARDSTICK_TEXT
    from topovlm.summary.validity import _gaps

    root = tmp_path / "sweep"
    case = _issue_case()
    stat_job(root, "cosine", 0.0, [True] * 200, removed=[])
    stat_job(root, "oracle", 0.1, [i % 20 != 0 for i in range(200)], removed=[3, 4, 5])
    for seed in range(3):
        stat_job(root, "topo", 0.1, [bool(v) for v in case["topo"][seed]], cal_seed=seed,
                 removed=[[1, 2, 3], [4, 5, 6], [5, 6, 7]][seed])
        stat_job(root, "shortgpt", 0.1, [bool(v) for v in case["shortgpt"][seed]], cal_seed=seed, removed=[2, 3, 4])
    summary = build_summary([root], plots=False)
    comp = {r["scorer"]: r for r in read_csv(root / "comparison.csv") if r["metric"] == "accuracy"}
    assert comp["shortgpt"]["verdict"] == "best"  # the oracle scores higher, but is not a scorer under test
    assert comp["oracle"]["verdict"] == YARDSTICK_TEXT and int(comp["topo"]["family_size"]) == 1
    verdict = (root / "summary.md").read_text().split("**0.1**", 1)[1].split("\n", 1)[0]
    assert "best **shortgpt**" in verdict and "oracle (yardstick) = 0.950" in verdict
    assert "told from it: topo;" in verdict and "(3 calibration draws per scorer)" in verdict
    gaps = {g["scorer"]: g for g in _gaps(summary.jobs, "accuracy")}
    topo, sgpt = gaps["topo"], gaps["shortgpt"]
    assert topo["unit"] == "draws" and topo["draws"] == 3 and sgpt["unit"] == "questions"
    d = np.mean(case["topo"], axis=0) - np.array([i % 20 != 0 for i in range(200)], dtype=float)
    conditional = 1.97 * d.std(ddof=1) / math.sqrt(d.size)
    assert topo["gap_high"] - topo["gap"] > 3 * conditional
    assert topo["gap_low"] < topo["gap"] < topo["gap_high"]
