"""Domain-aware scorer: per-domain cosines, the three rankings, the domain mapping, spacing at high budgets."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.helpers import compose, tiny_overrides
from topovlm.api import ScoringContext
from topovlm.selection import SelectionConfig, select_layers

from baselines.cosine import CosineScorer
from baselines.domain_aware import DomainAwareScorer

CTX = ScoringContext()


def _relabel(capture, labels):
    return dataclasses.replace(capture, domains=list(labels))


@pytest.mark.parametrize("pooling", ["last", "all_tokens", "text_mean"])
@pytest.mark.parametrize("ranking", ["math", "non_math"])
def test_single_domain_equals_the_cosine_scorer(tiny_capture, pooling: str, ranking: str) -> None:
    capture = _relabel(tiny_capture, [ranking] * tiny_capture.num_samples)
    ours = DomainAwareScorer(ranking=ranking, pooling=pooling).score(capture, CTX)
    cosine = CosineScorer(pooling=pooling).score(capture, CTX)
    np.testing.assert_allclose(ours.scores, cosine.scores, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.redundancy, cosine.redundancy, rtol=0, atol=1e-6)
    assert np.argsort(-ours.redundancy).tolist() == np.argsort(-cosine.redundancy).tolist()
    for sparsity in (0.125, 0.25, 0.5):
        assert select_layers(ours.redundancy, sparsity, SelectionConfig()) == \
            select_layers(cosine.redundancy, sparsity, SelectionConfig())


def test_each_domain_is_the_cosine_of_its_own_samples(tiny_capture) -> None:
    domains = tiny_capture.domains
    assert set(domains) == {"math", "non_math"}
    for name in ("math", "non_math"):
        idx = [i for i, d in enumerate(domains) if d == name]
        got = DomainAwareScorer(ranking=name, pooling="all_tokens").score(tiny_capture, CTX)
        want = CosineScorer(pooling="all_tokens").score(tiny_capture.subset(idx), CTX)
        np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
        assert got.extra["domain_aware"]["samples_per_domain"][name] == len(idx)


def test_mixed_weights_the_domains(tiny_capture) -> None:
    s = {r: DomainAwareScorer(ranking=r).score(tiny_capture, CTX).scores for r in ("math", "non_math")}
    mixed = DomainAwareScorer(ranking="mixed", mix_weight=0.3).score(tiny_capture, CTX)
    np.testing.assert_allclose(mixed.scores, 0.3 * s["math"] + 0.7 * s["non_math"], atol=1e-6)
    # weight = the math share of the calibration set: the plain cosine over all samples
    share = tiny_capture.domains.count("math") / tiny_capture.num_samples
    pooled = DomainAwareScorer(ranking="mixed", mix_weight=share).score(tiny_capture, CTX)
    np.testing.assert_allclose(pooled.scores, CosineScorer(pooling="all_tokens").score(tiny_capture, CTX).scores,
                               atol=1e-9)
    extra = mixed.extra["domain_aware"]
    assert extra["weights"] == {"math": 0.3, "non_math": 0.7} and extra["spearman_math_vs_non_math"] is not None


def test_domain_mapping_for_other_tasks(tiny_capture) -> None:
    labels = ["mathvista", "pope", "chartqa", "mme", "pope", "mathvista", "mme", "chartqa"]
    capture = _relabel(tiny_capture, labels)
    mapping = {"math": ["mathvista", "chartqa"], "non_math": ["pope", "mme"]}
    got = DomainAwareScorer(ranking="math", domains=mapping).score(capture, CTX)
    idx = [i for i, d in enumerate(labels) if d in mapping["math"]]
    want = CosineScorer(pooling="all_tokens").score(tiny_capture.subset(idx), CTX)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-6)
    with pytest.raises(ValueError, match="scorer.domains"):  # default mapping: no math samples here
        DomainAwareScorer(ranking="math").score(capture, CTX)
    # a zero weight needs no samples of that domain
    only = _relabel(tiny_capture, ["non_math"] * 8)
    DomainAwareScorer(ranking="mixed", mix_weight=0.0).score(only, CTX)
    with pytest.raises(ValueError, match="'math'"):
        DomainAwareScorer(ranking="mixed", mix_weight=0.5).score(only, CTX)


def test_config_and_validation(tmp_path) -> None:
    from topovlm.config import ConfigError
    from topovlm.config import build_scorer

    cfg = compose(tiny_overrides(tmp_path, "scorer=domain_aware", "scorer.ranking=math"))
    scorer = build_scorer(cfg.scorer)
    assert isinstance(scorer, DomainAwareScorer) and scorer.ranking == "math"
    assert scorer.domains == {"math": ["math"], "non_math": ["non_math"]}
    for bad in ({"ranking": "physics"}, {"mix_weight": 1.5}, {"pooling": "mean"},
                {"domains": {"maths": ["a"]}}, {"domains": {"math": "a", "non_math": ["b"]}}):
        # (a key left out keeps its default, as a Hydra override merges: an unknown one is an error)
        with pytest.raises(ConfigError):
            build_scorer({"name": "domain_aware", **bad})


def test_spacing_switch_above_a_sparsity(tiny_capture) -> None:
    """The paper's high-budget regime: evenly spaced / gap-respecting removals above a threshold."""
    redundancy = DomainAwareScorer(ranking="math").score(tiny_capture, CTX).redundancy  # 8 layers
    cfg = SelectionConfig(spacing_above=0.3, min_gap=2)
    low, policy = select_layers(redundancy, 0.25, cfg)
    assert policy == "topk" and low == sorted(np.argsort(-redundancy[1:])[:2] + 1)
    high, policy = select_layers(redundancy, 0.5, cfg)
    assert policy == "spacing" and len(high) == 4 and all(b - a >= 2 for a, b in zip(high, high[1:]))
    even, _ = select_layers(redundancy, 0.375, SelectionConfig(spacing_above=0.3, even=True))
    assert even == [2, 4, 6]


def test_domain_aware_job_records_per_domain_scores(tmp_path) -> None:
    from topovlm.runner import run_job

    cfg = compose(tiny_overrides(tmp_path, "scorer=domain_aware", "scorer.ranking=non_math", "sparsity=0.25",
                                 "task.dataset.n=8"))
    results = run_job(cfg, tmp_path / "out")
    extra = results["domain_aware"]
    assert extra["ranking"] == "non_math" and extra["samples_per_domain"]["non_math"] > 0
    assert len(results["removed_layers"]) == 3
