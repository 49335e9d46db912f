"""Persistence similarity, consistency and EPI: unit values and known topologies."""
from __future__ import annotations

import numpy as np
import pytest

from topovlm.topo.consistency import betti_curve, combine_dimensions, consistency, persistence_similarity
from topovlm.topo.epi import effective_persistence_image, topological_activity


def brute_ps(bars, num_layers):
    ps = np.zeros((num_layers, num_layers), dtype=int)
    for i in range(num_layers):
        for j in range(num_layers):
            lo, hi = min(i, j), max(i, j)
            ps[i, j] = sum(1 for b, d in bars if b <= lo and d > hi)
    return ps


def brute_consistency(bars, num_layers, alpha):
    ps = brute_ps(bars, num_layers)
    out = []
    for l in range(num_layers):
        num = den = 0.0
        for m in range(num_layers):
            if m == l or ps[m, m] == 0:
                continue
            w = abs(l - m) ** alpha
            num += w * ps[l, m] / ps[m, m]
            den += w
        out.append(num / den if den else 0.0)
    return np.array(out)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_ps_and_consistency_match_definition(alpha):
    rng = np.random.default_rng(0)
    num_layers = 9
    b = rng.integers(0, num_layers, size=40)
    d = np.minimum(b + rng.integers(1, 6, size=40), num_layers)
    bars = np.stack([b, d], axis=1)
    ps = persistence_similarity(bars, num_layers)
    np.testing.assert_array_equal(ps, brute_ps(bars.tolist(), num_layers))
    np.testing.assert_array_equal(np.diag(ps), betti_curve(bars, num_layers))
    np.testing.assert_allclose(consistency(bars, num_layers, alpha), brute_consistency(bars.tolist(), num_layers, alpha))


def test_consistency_empty_layers():
    # one bar on layers 0..2 of 5; layers 3, 4 have no features
    bars = np.array([[0, 3]])
    skip = consistency(bars, 5, 1.0, "skip")
    zero = consistency(bars, 5, 1.0, "zero")
    np.testing.assert_allclose(skip[:3], 1.0)
    np.testing.assert_allclose(skip[3:], 0.0)
    # layer 0 with "zero": weights 1,2 count (layers 1, 2) and 3,4 don't -> 3/10
    assert zero[0] == pytest.approx(3 / 10)
    assert np.all(consistency(np.empty((0, 2)), 5) == 0)


def test_combine_dimensions():
    out = combine_dimensions({0: np.array([1.0, 0.0]), 1: np.array([0.0, 1.0])}, {0: 1.0, 1: 3.0})
    np.testing.assert_allclose(out, [0.25, 0.75])
    with pytest.raises(ValueError):
        combine_dimensions({0: np.zeros(2)}, {0: 0.0})


def test_epi_activity():
    num_layers = 10
    bars = np.array([[2, 10], [6, 7]])
    img = effective_persistence_image(bars, num_layers, sigma=0.0, power=1.0)
    assert img.shape == (num_layers, num_layers)
    assert img[2, 7] == pytest.approx(0.8) and img[6, 0] == pytest.approx(0.1)  # persistence 8 and 1
    act = topological_activity(img)
    assert act.argmax() == 2 and act[6] == pytest.approx(0.1)
    smooth = topological_activity(effective_persistence_image(bars, num_layers, sigma=1.0))
    assert smooth.argmax() == 2 and smooth[1] > 0 and smooth[3] > 0  # smoothed over neighbours
    flat = topological_activity(effective_persistence_image(bars, num_layers, sigma=0.0, power=0.0))
    assert flat[2] == flat[6] == pytest.approx(1.0)


# ------------------------------------------------------------------ known topologies

def circle(n: int, dim: int, rng: np.random.Generator, noise: float = 1e-3) -> np.ndarray:
    theta = 2 * np.pi * np.arange(n) / n
    pts = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    q, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return (pts @ q[:2]) * rng.uniform(0.5, 2.0) + noise * rng.normal(size=(n, dim))


def blob(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    return 0.05 * rng.normal(size=(n, dim))


def topo(clouds, **kw):
    from topovlm.topo.pipeline import TopologyConfig, compute_topology

    return compute_topology(np.asarray(clouds, dtype=np.float32), TopologyConfig(k=6, **kw))


def test_circle_bar_dies_where_cloud_collapses():
    rng = np.random.default_rng(0)
    n, dim, collapse, num_layers = 40, 8, 5, 8
    clouds = [circle(n, dim, rng) if l < collapse else blob(n, dim, rng) for l in range(num_layers)]
    res = topo(clouds)
    h1 = res.bars[1]
    early = h1[h1[:, 0] < collapse]
    # exactly one H1 bar alive while the layers keep the circle, dying at the collapse
    assert early.tolist() == [[0, collapse]]
    np.testing.assert_array_equal(res.betti[1][:collapse], 1)
    # the blob layers' own cycles are not the circle: none of them reaches back before the collapse
    assert np.all(h1[:, 0][h1[:, 0] >= collapse] >= collapse)
    # a connected k-NN graph everywhere: one H0 bar across all layers
    assert [0, num_layers] in res.bars[0].tolist()


def test_identical_clouds_are_maximally_consistent():
    rng = np.random.default_rng(1)
    x = circle(40, 8, rng)
    res = topo([x] * 6)
    for p in (0, 1):
        np.testing.assert_allclose(res.consistency[p], 1.0)
        assert res.bars[p].tolist() == [[0, 6]]
    np.testing.assert_allclose(res.combined, 1.0)


def test_replaced_layer_has_low_consistency():
    rng = np.random.default_rng(2)
    x = circle(40, 8, rng)
    num_layers, odd = 7, 3
    clouds = [x if l != odd else rng.normal(size=x.shape) for l in range(num_layers)]
    res = topo(clouds)
    s1 = res.consistency[1]
    assert s1[odd] < 0.05
    assert s1[odd] < 0.5 * np.delete(s1, odd).min()
    assert res.combined.argmin() == odd
    # its neighbours lose the features that no longer reach across the odd layer
    assert s1[odd - 1] < 1.0 and s1[odd + 1] < 1.0
    # reference: the same stack without the replacement is uniformly consistent
    np.testing.assert_allclose(topo([x] * num_layers).consistency[1], 1.0)


def test_union_variant_runs_and_agrees_on_identical_clouds():
    rng = np.random.default_rng(3)
    x = circle(30, 6, rng)
    res = topo([x] * 4, variant="union")
    np.testing.assert_allclose(res.combined, 1.0)
