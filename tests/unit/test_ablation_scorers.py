"""Topo ablations on topo's own point clouds: knn_overlap, cka and topo_h0."""
from __future__ import annotations

import json

import numpy as np
import pytest

from baselines.cka import CKAScorer, linear_cka
from baselines.knn_overlap import KnnOverlapScorer, jaccard
from baselines.topo_h0 import TopoH0Scorer
from tests.helpers import compose
from topovlm.api import ScoringContext
from topovlm.capture import Capture
from topovlm.errors import ConfigError
from topovlm.topo.pipeline import compute_topology
from topovlm.topo.scorer import TopoScorer

# ---------------------------------------------------------------- knn_overlap, by hand

# 1-D points. X: nearest neighbours 0->1, 1->0, 3->1, 7->3: union {01, 12, 23}, mutual {01}.
# Y: 0->1, 1->0, 10->11, 11->10: union = mutual = {01, 23}.
X = np.array([[0.0], [1.0], [3.0], [7.0]])
Y = np.array([[0.0], [1.0], [10.0], [11.0]])


def test_jaccard_of_edge_sets():
    a, b = np.array([[0, 1], [1, 2]]), np.array([[1, 2], [2, 3]])
    assert jaccard(a, b, 4) == pytest.approx(1 / 3)
    assert jaccard(a, a, 4) == 1.0 and jaccard(a, np.empty((0, 2), int), 4) == 0.0


@pytest.mark.parametrize("symmetrize, expected", [("union", 2 / 3), ("mutual", 1 / 2)])
def test_knn_overlap_hand_computed(symmetrize, expected):
    scorer = KnnOverlapScorer(k=1, symmetrize=symmetrize)
    sim, details = scorer.similarity(np.stack([X, X, Y]))
    np.testing.assert_allclose(sim, [1.0, expected])  # identical consecutive clouds overlap 1
    assert details["edges_per_representation"] == ([3, 3, 2] if symmetrize == "union" else [1, 1, 2])


def test_knn_overlap_refuses_a_complete_graph():
    with pytest.raises(ValueError, match="scorer.k=3 >= N - 1 = 3"):
        KnnOverlapScorer(k=3).similarity(np.stack([X, Y]))


# ---------------------------------------------------------------- cka


def _cka_features(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al.'s eq. for linear kernels, in feature space: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)."""
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def _cka_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """The centred HSIC form with an explicit centring matrix H."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731 - a one-line local helper
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def test_cka_equals_direct_formulas_and_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 12))
    y = x @ rng.normal(size=(12, 7)) + 0.5 * rng.normal(size=(40, 7))
    value = linear_cka(x, y)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(_cka_features(x, y), rel=1e-10) == pytest.approx(_cka_hsic(x, y), rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0)
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))  # orthogonal
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0)
    assert linear_cka(3.7 * x @ q + 5.0, y) == pytest.approx(value)  # rotation, scale, translation
    assert linear_cka(x, x @ np.diag(np.arange(1.0, 13.0))) < 0.99  # not invariant to anisotropic scaling
    assert linear_cka(x, rng.normal(size=(40, 12))) < 0.5  # independent clouds
    assert linear_cka(np.ones((40, 12)), y) == 0.0  # no variance: no shared structure


def test_cka_scorer_on_consecutive_clouds():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    sim, _ = CKAScorer().similarity(np.stack([a, 2.0 * a @ q, rng.normal(size=(30, 8))]))
    assert sim[0] == pytest.approx(1.0) and sim[1] < 0.5


# ---------------------------------------------------------------- layers <- representations


def _capture(norms: np.ndarray) -> Capture:
    """A capture whose post-attention-norm outputs are ``norms`` (L+1 with the final norm's)."""
    n_rep, n, d = norms.shape
    pooled = {p: np.zeros((n_rep, n, d), np.float32) for p in ("last", "text_mean", "vision_mean")}
    return Capture(num_layers=n_rep - 1, sample_ids=[f"s{i:02d}" for i in range(n)], domains=["x"] * n,
                   pooled=pooled, norms={p: norms.astype(np.float32) for p in pooled})


@pytest.mark.parametrize("scorer", [CKAScorer(), KnnOverlapScorer(k=3)], ids=["cka", "knn_overlap"])
def test_layer_l_is_scored_by_representations_l_minus_1_and_l(scorer):
    """Layer 2 copies its input (representation 1 = 2): it alone scores 1, layer 0 is unscored
    and removed last, and the final norm's representation (here a copy of layer 3's) is unused."""
    rng = np.random.default_rng(2)
    reps = rng.normal(size=(5, 24, 6))  # layers 0-3, then the final norm
    reps[2] = reps[1]
    reps[4] = reps[3]
    result = scorer.score(_capture(reps), ScoringContext(seed=0, num_layers=4))
    assert np.isnan(result.scores[0]) and result.redundancy[0] == -np.inf
    assert result.scores[2] == pytest.approx(1.0)
    assert np.all(result.scores[[1, 3]] < 0.9)
    assert len(result.extra[scorer.name]["similarity"]) == 3


# ---------------------------------------------------------------- topo_h0


def test_topo_h0_is_topo_scored_on_its_own_h0_consistency():
    topo, h0 = TopoScorer(), TopoH0Scorer()
    assert {k: v for k, v in vars(h0).items() if k != "dim_weights"} == \
        {k: v for k, v in vars(topo).items() if k != "dim_weights"}
    assert h0.dim_weights == {"h0": 1.0, "h1": 0.0, "h2": 0.0} and topo.dim_weights["h1"] == 1.0
    rng = np.random.default_rng(3)
    clouds = np.cumsum(rng.normal(size=(6, 20, 3)), axis=0)  # a drifting cloud: H0 and H1 change with depth
    cfg = TopoH0Scorer(k=3).config()
    topology = compute_topology(clouds, cfg)
    ranked_h0 = TopoH0Scorer(k=3).rank_bars(topology.bars, 6, final_norm=True)
    ranked_topo = TopoScorer(k=3).rank_bars(topology.bars, 6, final_norm=True)
    np.testing.assert_allclose(ranked_h0.combined, ranked_topo.consistency[0])  # what topo reports as h0
    np.testing.assert_allclose(ranked_topo.combined, ranked_topo.consistency[1])
    assert not np.allclose(ranked_h0.combined, ranked_topo.combined)


# ---------------------------------------------------------------- through the harness


def test_knn_overlap_checks_k_against_calibration_n_before_the_model_loads(tmp_path):
    from topovlm.config import validate

    cfg = compose(["debug=smoke", "scorer=knn_overlap", f"cache_dir={tmp_path}"])  # k = 15, calibration.n = 6
    with pytest.raises(ConfigError, match=r"scorer=knn_overlap: scorer.k=15 >= N - 1 = 5"):
        validate(cfg, inputs=False)


@pytest.mark.parametrize("scorer, extra", [("knn_overlap", ["scorer.k=2"]), ("cka", []),
                                           ("topo_h0", ["scorer.k=2"])])
def test_a_job_on_the_tiny_model(scorer, extra, tmp_path):
    from topovlm.runner import run_job

    cfg = compose(["debug=smoke", f"scorer={scorer}", f"cache_dir={tmp_path / 'cache'}", "sparsity=0.25", *extra])
    res = run_job(cfg, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["scorer"] == scorer and written["num_layers"] == 12
    scores = np.array(res["scores"], dtype=float)  # JSON null (layer 0) -> NaN
    removed = res["removed_layers"]
    assert len(removed) == 3 and 0 not in removed
    if scorer == "topo_h0":
        assert written["topology"]["dim_weights"] == {"h0": 1.0, "h1": 0.0}
        np.testing.assert_allclose(scores, written["topology"]["consistency"]["h0"][:12])
    else:
        section = written[scorer]
        assert section["num_points"] == 6 and len(section["similarity"]) == 11
        assert np.isnan(scores[0]) and np.all((scores[1:] >= 0) & (scores[1:] <= 1 + 1e-9))
        np.testing.assert_allclose(scores[1:], section["similarity"])
        kept = [s for i, s in enumerate(scores[1:], 1) if i not in removed]
        assert min(scores[i] for i in removed) >= max(kept)  # the most similar input/output go first
