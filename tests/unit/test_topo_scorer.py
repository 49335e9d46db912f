"""The topo scorer end to end on a synthetic capture: sections, arrays, plots, invariances."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dionysus  # noqa: F401 - a missing topology backend fails at collection, not mid-test
import gudhi  # noqa: F401 - a missing topology backend fails at collection, not mid-test

from tests.helpers import SYNTHETIC_D as D
from tests.helpers import SYNTHETIC_L as L
from tests.helpers import SYNTHETIC_N as N
from tests.helpers import synthetic_capture
from topovlm.capture import Capture
from topovlm.api import ScoringContext
from topovlm.topo.scorer import TopoScorer

ROOT = Path(__file__).resolve().parents[2]


def permuted(capture: Capture, seed: int = 1) -> Capture:
    perm = np.random.default_rng(seed).permutation(capture.num_samples)
    return capture.subset(perm)


def test_score_result_shape_and_topology_section():
    cap = synthetic_capture()
    res = TopoScorer(k=5, activations="residual", include_final_norm=False).score(cap, ScoringContext(seed=0, num_layers=L))
    assert res.scores.shape == res.redundancy.shape == (L,)
    np.testing.assert_array_equal(res.scores, res.redundancy)
    assert np.all((res.scores >= 0) & (res.scores <= 1))
    assert res.arrays["clouds"].shape == (L, N, D) and res.arrays["clouds"].dtype == np.float32
    topo = res.extra["topology"]
    for key in ("consistency", "betti", "activity", "bars", "adaptive"):
        assert key in topo
    for key in ("consistency", "betti", "bars"):
        assert set(topo[key]) == {"h0", "h1"}
    assert all(len(topo[key][h]) == L for key in ("consistency", "betti") for h in ("h0", "h1"))
    assert len(topo["activity"]) == L
    adaptive = topo["adaptive"]
    assert adaptive["count"] == len(adaptive["layers"]) >= 1
    assert all(res.scores[i] >= adaptive["threshold"] for i in adaptive["layers"])
    assert topo["representations"] == L and topo["final_norm_index"] is None
    json.dumps(res.extra)  # results.json must be able to carry it
    # the collapsed last layers carry none of the circle: lowest H1 consistency
    h1 = np.asarray(topo["consistency"]["h1"])
    assert h1[-1] < h1[: L - 2].min()


def test_deterministic_and_sample_order_invariant():
    cap = synthetic_capture()
    ctx = ScoringContext(seed=3, num_layers=L)
    scorer = TopoScorer(k=5, num_points=30)  # a seeded subset: also order invariant (norm outputs)
    a = scorer.score(cap, ctx)
    b = scorer.score(cap, ctx)
    c = scorer.score(permuted(cap), ctx)
    for other in (b, c):
        np.testing.assert_array_equal(a.scores, other.scores)
        assert a.extra["topology"]["bars"] == other.extra["topology"]["bars"]
        np.testing.assert_array_equal(a.arrays["clouds"], other.arrays["clouds"])
    assert a.arrays["clouds"].shape == (L + 1, 30, D)


def test_poolings_and_preprocessing():
    cap = synthetic_capture(no_vision=4)
    ctx = ScoringContext(seed=0, num_layers=L)
    vis = TopoScorer(k=5, pooling="vision_mean").score(cap, ctx)
    assert vis.arrays["clouds"].shape == (L + 1, N - 4, D)
    assert len(vis.extra["topology"]["dropped_samples"]) == 4
    mod = TopoScorer(k=5, pooling="modality", center=True, normalize="l2", pca_dim=4).score(cap, ctx)
    assert mod.arrays["clouds"].shape == (L + 1, N - 4, 4)
    h2 = TopoScorer(k=5, max_dim=2, zigzag="union", symmetrize="mutual").score(cap, ctx)
    assert set(h2.extra["topology"]["consistency"]) == {"h0", "h1", "h2"}
    mixed = TopoScorer(k=5, epi_mix=0.5).score(cap, ctx)
    assert not np.array_equal(mixed.redundancy, mixed.scores)
    with pytest.raises(ValueError):
        TopoScorer(pooling="mean")
    with pytest.raises(ValueError):
        TopoScorer(dim_weights={"h0": 0, "h1": 0})
    with pytest.raises(RuntimeError, match="max_zigzag_simplices"):
        TopoScorer(k=5, max_zigzag_simplices=10).score(cap, ctx)


def test_write_diagnostics(tmp_path):
    scorer = TopoScorer(k=5)
    res = scorer.score(synthetic_capture(), ScoringContext(seed=0, num_layers=L))
    paths = scorer.write_diagnostics(res, tmp_path)
    names = {p.name for p in paths}
    assert names == {"topo_barcodes.png", "topo_epi.png", "topo_betti.png", "topo_consistency.png",
                     "topo_activity.png"}
    for p in paths:
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_diagnostics_show_the_jobs_removals(tmp_path):
    """One ranking, two sparsities: each job's figures mark its own removed layers."""
    scorer = TopoScorer(k=5)
    res = scorer.score(synthetic_capture(), ScoringContext(seed=0, num_layers=L))
    a = scorer.write_diagnostics(res, tmp_path / "a", removed=[])
    b = scorer.write_diagnostics(res, tmp_path / "b", removed=[2, 3])
    again = scorer.write_diagnostics(res, tmp_path / "c", removed=[2, 3])
    for pa, pb, pc in zip(a, b, again):
        assert pa.read_bytes() != pb.read_bytes(), pa.name
        assert pb.read_bytes() == pc.read_bytes(), pb.name  # deterministic for the same removals


@pytest.mark.parametrize("preset", ["topo", "topo_llm"])
def test_yaml_names_the_registered_class_and_sets_nothing_else(preset):
    from omegaconf import OmegaConf

    from topovlm.config import build_scorer
    from topovlm.registry import get_scorer_class

    cls = get_scorer_class(preset)
    assert issubclass(cls, TopoScorer) and cls.name == preset
    conf = OmegaConf.load(ROOT / "conf" / "scorer" / f"{preset}.yaml")
    assert OmegaConf.to_container(conf) == {"name": preset}  # the class holds the defaults and their sources
    scorer = build_scorer(conf)
    assert type(scorer) is cls and scorer.params() == cls().params()
    json.dumps(scorer.params())


def test_presets_differ_where_the_papers_do():
    from topovlm.topo.scorer import TopoLLMScorer

    topo, llm = TopoScorer().params(), TopoLLMScorer().params()
    differ = {k for k in topo if topo[k] != llm[k]}
    assert differ == {"k", "formula", "epi_sigma", "epi_power"}  # topo_llm.yaml states none of them again
    assert (topo["k"], llm["k"]) == (15, 5)
    assert (topo["formula"], llm["formula"]) == ("topovlm_reconstruction", "gardinazzi")
    for p in (topo, llm):  # H1 only, the ancestor's activations, the adaptive rule
        assert p["dim_weights"] == {"h0": 0.0, "h1": 1.0, "h2": 0.0}
        assert p["activations"] == "post_attention_norm" and p["include_final_norm"] is True
    # TopoVLM reports fixed sparsities: top-k budgets; the ancestor prunes by its own rule
    assert (TopoScorer.default_policy, TopoLLMScorer.default_policy) == ("topk", "adaptive")
    assert TopoScorer.makes_decision and TopoLLMScorer.makes_decision
    assert TopoLLMScorer(k=7).k == 7


def test_dimension_weights_and_adaptive_rule():
    from topovlm.topo.ranking import decide

    cap = synthetic_capture()
    ctx = ScoringContext(seed=0, num_layers=L)
    h1 = TopoScorer(k=5).score(cap, ctx)  # default: H1 only
    both = TopoScorer(k=5, dim_weights={"h0": 1.0}).score(cap, ctx)
    topo = both.extra["topology"]
    expected = (np.asarray(topo["consistency"]["h0"]) + np.asarray(topo["consistency"]["h1"])) / 2
    np.testing.assert_allclose(both.scores, expected[:L])
    np.testing.assert_allclose(h1.scores, topo["consistency"]["h1"][:L])
    with pytest.raises(ValueError, match="h0"):
        TopoScorer(max_dim=0, dim_weights={"h0": 0.0})
    assert TopoScorer(k=5, max_dim=0, dim_weights={"h0": 1}).score(cap, ctx).scores.shape == (L,)
    # nothing consistent anywhere: the adaptive rule removes nothing
    assert decide(np.zeros(L), list(range(L)), eps=0.9)["layers"] == []
    assert decide(np.array([0.1, 1.0, 0.95, 0.5]), [0, 1, 2, 3], eps=0.9)["layers"] == [1, 2]
    # the maximum is over the removable ones: a larger final-norm score does not raise the cut
    assert decide(np.array([0.1, 0.6, 0.58, 1.0]), [0, 1, 2], eps=0.9)["layers"] == [1, 2]


def test_the_default_cap_scales_with_layers_points_and_k_and_warns_instead_of_failing(monkeypatch, caplog):
    import logging

    from topovlm.topo import pipeline
    from topovlm.topo.pipeline import TopologyConfig, auto_zigzag_cap, build_complexes, compute_topology, \
        expected_zigzag_size
    from topovlm.topo.zigzag import build_zigzag

    rng = np.random.default_rng(0)
    for layers, n, k, d in [(6, 128, 8, 32), (8, 128, 15, 64), (6, 256, 5, 16)]:
        clouds = rng.standard_normal((layers, n, d))  # independent clouds: the largest complexes
        cfg = TopologyConfig(k=k)
        complexes, _ = build_complexes(clouds, cfg)
        size = build_zigzag(complexes, n, cfg.variant).size
        assert 0.4 * expected_zigzag_size(layers, n, k) < size < expected_zigzag_size(layers, n, k)
    # the real case that failed after its capture pass: 33 layers x 512 points, k=15 (394k simplices)
    assert auto_zigzag_cap(33, 512, 15) > 2 * 394_193 > 2 * 250_000
    # above the warning size: a warning with the size, and the scores, not an error
    monkeypatch.setattr(pipeline, "WARN_ZIGZAG_SIMPLICES", 1_000)
    clouds = rng.standard_normal((6, 128, 32))
    with caplog.at_level(logging.WARNING, logger="topovlm.topo.pipeline"):
        res = compute_topology(clouds, TopologyConfig(k=8))
    assert res.sizes["zigzag_simplices"] > 1_000 and "expect minutes" in caplog.text
    with pytest.raises(RuntimeError, match="max_zigzag_simplices=1000 derived from L, N, k"):
        monkeypatch.setattr(pipeline, "AUTO_CAP_FACTOR", 1e-9)  # a cap below the size: still refused
        compute_topology(clouds, TopologyConfig(k=8))
    with pytest.raises(ValueError, match="an integer, auto or null"):
        TopologyConfig(max_zigzag_simplices="big")


@pytest.mark.slow
def test_a_33_by_512_capture_of_independent_clouds_fits_the_default_cap():
    from topovlm.topo.pipeline import TopologyConfig, auto_zigzag_cap, build_complexes
    from topovlm.topo.zigzag import build_zigzag

    clouds = np.random.default_rng(0).standard_normal((33, 512, 64)).astype(np.float32)
    complexes, _ = build_complexes(clouds, TopologyConfig(k=15))
    size = build_zigzag(complexes, 512, "intersection").size
    assert 250_000 < size <= auto_zigzag_cap(33, 512, 15)  # over the old fixed cap, under the derived one
