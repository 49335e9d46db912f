"""Intervals, paired tests and stability against known cases; per-sample records of real jobs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import compose, tiny_overrides
from topovlm import stats
from topovlm.samples import SAMPLES_FILE, read_jsonl


# --------------------------------------------------------------------------- known cases

def test_identical_predictions_give_p_one():
    a = [True, False, True, True, False] * 20
    t = stats.mcnemar_exact(a, a)
    assert t.p_value == 1.0 and t.a_only == 0 and t.b_only == 0 and t.diff == 0.0
    assert (t.diff_low, t.diff_high) == (0.0, 0.0)
    assert stats.paired_permutation([0.3, 1.2, 2.0], [0.3, 1.2, 2.0]).p_value == 1.0


def test_mcnemar_textbook_value_and_statsmodels():
    """10 samples only A gets right, 2 only B, 88 concordant: two-sided exact
    p = 2 * P(X <= 2 | n = 12, 1/2) = 2 * (1 + 12 + 66) / 2**12 = 158 / 4096."""
    from statsmodels.stats.contingency_tables import mcnemar

    a = [1] * 10 + [0] * 2 + [1] * 30 + [0] * 58
    b = [0] * 10 + [1] * 2 + [1] * 30 + [0] * 58
    t = stats.mcnemar_exact(a, b)
    assert (t.a_only, t.b_only, t.n) == (10, 2, 100)
    assert t.p_value == pytest.approx(158 / 4096, abs=1e-12)
    assert t.p_value == pytest.approx(mcnemar([[30, 10], [2, 58]], exact=True).pvalue, abs=1e-12)
    assert t.diff == pytest.approx(0.08) and t.diff_low < 0.08 < t.diff_high
    # direction does not change the two-sided p
    assert stats.mcnemar_exact(b, a).p_value == pytest.approx(t.p_value)
    # one discordant pair can never be significant: p = 1
    assert stats.mcnemar_exact([1, 0, 0], [0, 0, 0]).p_value == 1.0


def test_wilson_textbook_interval():
    iv = stats.wilson(40, 100)
    assert (iv.value, iv.n, iv.method) == (0.4, 100, "wilson")
    assert iv.low == pytest.approx(0.3094, abs=1e-4) and iv.high == pytest.approx(0.4980, abs=1e-4)
    zero = stats.wilson(0, 80)  # Wilson stays inside [0, 1] and is not degenerate at 0
    assert zero.low == 0.0 and 0.03 < zero.high < 0.06
    assert stats.proportion_interval([True, False, True, True]).method == "wilson"


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    small = stats.bootstrap_interval(rng.normal(1.0, 1.0, 50))
    large = stats.bootstrap_interval(rng.normal(1.0, 1.0, 2000))
    assert small.low < small.value < small.high and large.low < 1.0 < large.high
    assert large.half_width < small.half_width / 3
    assert stats.bootstrap_interval([0.5] * 10).half_width == 0.0  # nothing to resample
    # a fractional proportion (mean over draws) goes to the bootstrap
    assert stats.proportion_interval([0.0, 1 / 3, 1.0, 2 / 3] * 20).method == "bootstrap"


def test_perplexity_interval_is_the_token_weighted_ratio():
    nll = [10.0, 12.0, 9.0, 11.0]
    tok = [5, 6, 4, 5]
    iv = stats.perplexity_interval(nll, tok)
    assert iv.value == pytest.approx(math.exp(42 / 20))
    assert iv.low <= iv.value <= iv.high


def test_paired_permutation_separates_a_real_shift_from_noise():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 300)
    shifted = base + 0.5 + rng.normal(0, 0.1, 300)
    assert stats.paired_permutation(shifted, base).p_value < 0.001
    noise = base + rng.normal(0, 0.1, 300)
    assert stats.paired_permutation(noise, base).p_value > 0.05


def test_holm_matches_the_step_down_rule_and_statsmodels():
    from statsmodels.stats.multitest import multipletests

    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adj = stats.holm([0.2, float("nan"), 0.001])
    assert adj[0] == pytest.approx(0.2) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.002)
    rng = np.random.default_rng(0)
    for m in (1, 2, 7, 36):
        p = rng.random(m) ** 3
        p[: m // 3] = p[0]  # ties
        assert stats.holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=1e-15)


def test_removal_stability_jaccard_and_frequency():
    st = stats.removal_stability([[1, 2], [1, 2], [1, 3]], num_layers=5)
    assert st.mean_jaccard == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert st.frequency == pytest.approx([0, 1, 2 / 3, 1 / 3, 0])
    assert st.always() == [1] and st.sometimes() == [2, 3]
    assert stats.removal_stability([[4]], 5).mean_jaccard is None


def test_draw_variance_keeps_sampling_apart():
    ivs = [stats.wilson(40, 100), stats.wilson(44, 100), stats.wilson(48, 100)]
    dv = stats.draw_variance([0.40, 0.44, 0.48], ivs)
    assert dv.mean == pytest.approx(0.44) and dv.std == pytest.approx(0.04) and dv.n_draws == 3
    assert dv.sampling_half_width == pytest.approx(np.mean([iv.half_width for iv in ivs]))


def test_regime_is_defined_by_what_the_tests_showed():
    r = stats.regime(0.3, {"a": 0.5, "b": 0.45, "c": 0.1}, ["a", "b"], lower_is_better=False, margin=0.05)
    assert (r.best, r.worst, r.n_not_shown_worse, r.n_scorers) == ("a", "c", 2, 3)
    assert r.spread == pytest.approx(0.4) and r.label == "ranking-sensitive"  # c is shown worse
    # nobody shown worse is not convergence: only equivalence (TOST) with the best is
    assert stats.regime(0.1, {"a": 0.5, "b": 0.49}, ["a", "b"], False, margin=0.05).label == "undetermined"
    conv = stats.regime(0.1, {"a": 0.5, "b": 0.49}, ["a", "b"], False, equivalent=["b"], spread_interval=(0.0, 0.03),
                        margin=0.05)
    assert conv.label == "convergent" and conv.n_equivalent == 2 and (conv.spread_low, conv.spread_high) == (0.0, 0.03)
    low = stats.regime(0.1, {"a": 10.0, "b": 12.0}, ["a"], lower_is_better=True)
    assert low.best == "a" and low.spread == pytest.approx(2.0) and low.label == "ranking-sensitive"


def test_speedup_flags_and_pareto_front():
    assert stats.ideal_speedup(30, 21) == pytest.approx(30 / 21)
    assert stats.speedup_flag(0.9, 1.43) == "below 1"
    assert stats.speedup_flag(1.40, 1.43) == ""
    assert stats.speedup_flag(1.05, 1.43) == "far from ideal"
    front = stats.pareto_front([(1.1, 0.6), (1.2, 0.5), (1.15, 0.4), (1.4, 0.1)])
    assert front == [0, 1, 3]  # (1.15, 0.4) is dominated by (1.2, 0.5)


# --------------------------------------------------------------------------- real jobs

def _run(tmp: Path, name: str, *extra: str) -> dict:
    from topovlm.runner import run_job

    cfg = compose(tiny_overrides(tmp, "efficiency.enabled=false", *extra))
    return run_job(cfg, tmp / name, sweep_dir=tmp)


@pytest.mark.slow
def test_samples_line_up_across_the_jobs_of_a_sweep(tmp_path: Path):
    """Pruned jobs (whichever runs first evaluates the reference) and the unpruned job write
    samples.jsonl with the same keys in the same order; each pruned record carries the unpruned
    model's prediction for the same sample."""
    _run(tmp_path, "cos", "scorer=cosine", "sparsity=0.25")
    _run(tmp_path, "sgpt", "scorer=shortgpt", "sparsity=0.5")
    _run(tmp_path, "ref", "scorer=cosine", "sparsity=0")
    recs = {n: read_jsonl(tmp_path / n / SAMPLES_FILE) for n in ("cos", "sgpt", "ref")}
    keys = [r["key"] for r in recs["ref"]]
    assert len(keys) == 16 and len(set(keys)) == 16
    assert all([r["key"] for r in v] == keys for v in recs.values())
    ref = {r["key"]: r for r in recs["ref"]}
    for name in ("cos", "sgpt"):
        saved = json.loads((tmp_path / name / "results.json").read_text())
        assert sum(r["correct"] for r in recs[name]) / 16 == pytest.approx(saved["metrics"]["accuracy"])
        for r in recs[name]:
            assert r["reference_prediction"] == ref[r["key"]]["prediction"]
            assert r["reference_correct"] == ref[r["key"]]["correct"]
            assert set(r) >= {"id", "task", "domain", "category", "prediction", "target", "correct", "agree"}
    assert all(r["agree"] is True for r in recs["ref"])  # the unpruned model agrees with itself


def test_samples_artifact_in_the_offline_wandb_run(tmp_path: Path):
    import time

    _run(tmp_path, "job", "scorer=cosine", "sparsity=0.25", "logger=wandb", "logger.wandb.mode=offline",
         "logger.wandb.project=topovlm-test")
    runs = list((tmp_path / "job" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    raw = b""
    for _ in range(60):  # the offline transaction log can land shortly after finish() returns
        raw = next(runs[0].glob("*.wandb")).read_bytes()
        if b"samples.jsonl" in raw:
            break
        time.sleep(0.5)
    assert b"samples-cosine-s0.25" in raw and b"samples.jsonl" in raw


def test_perplexity_jobs_write_per_sample_losses(tmp_path: Path):
    _run(tmp_path, "ppl", "model=tiny_llama", "task=text_ppl", "task.limit=6", "calibration=text", "calibration.n=8",
         "scorer=cosine", "sparsity=0.25")
    saved = json.loads((tmp_path / "ppl" / "results.json").read_text())
    recs = read_jsonl(tmp_path / "ppl" / SAMPLES_FILE)
    assert len(recs) == 6 and all(r["loss"] > 0 and r["reference_loss"] > 0 for r in recs)
    ppl = math.exp(sum(r["nll_sum"] for r in recs) / sum(r["num_tokens"] for r in recs))
    assert ppl == pytest.approx(saved["metrics"]["perplexity"], rel=1e-5)


@pytest.mark.slow
def test_lmms_jobs_write_logged_samples(tmp_path: Path):
    import lmms_eval.evaluator  # noqa: F401 - part of the test environment (make setup): fail, never skip
    _run(tmp_path, "lm", "task=shapes_lmms", "task.dataset.n=6", "task.limit=4", "task.max_new_tokens=2",
         "sparsity=0.25", "calibration.n=6")
    saved = json.loads((tmp_path / "lm" / "results.json").read_text())
    recs = read_jsonl(tmp_path / "lm" / SAMPLES_FILE)
    assert [r["key"] for r in recs] == [f"shapes_lmms/{i}" for i in range(4)]
    assert sum(r["correct"] for r in recs) / 4 == pytest.approx(saved["metrics"]["accuracy"])
    assert all(r["reference_prediction"] is not None and r["domain"] in ("math", "non_math") for r in recs)
    assert "accuracy" in saved["protocol"]["stderr"]  # lmms-eval's own stderr is reported


def test_calibration_variance_experiment_composes():
    cfg = compose(["experiment=calibration_variance", "calibration.seed=2"])
    assert cfg.seed == 2 and cfg.model.source == "embedded" and cfg.task.name == "shapes"
    from omegaconf import OmegaConf

    exp = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "experiment" / "calibration_variance.yaml")
    params = exp.hydra.sweeper.params
    assert str(params["calibration.seed"]) == "0,1,2" and str(params.sparsity) == "0.1,0.2,0.3"
    assert set(str(params.scorer).split(",")) == {"topo", "topo_llm", "cosine", "shortgpt", "angular", "short_lvlm",
                                                  "domain_aware", "random", "tail"}


def test_implausible_speedups_are_recognised():
    assert stats.implausible_speedup(4.9e8, 1.11) and stats.implausible_speedup(float("inf"), 1.1)
    assert not stats.implausible_speedup(1.3, 1.11) and not stats.implausible_speedup(None, 1.1)
