"""Zigzag construction and bars: fast vs classic dionysus, Betti numbers vs gudhi."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import dionysus  # noqa: F401 - a missing topology backend fails at collection, not mid-test
import gudhi

from topovlm.topo.complexes import flag_complex, knn_edges
from topovlm.topo.zigzag import (
    betti_at_positions,
    build_zigzag,
    position_presence,
    snap_bars,
    snap_position,
    zigzag_bars,
)


def random_graph(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    pairs = np.array(list(itertools.combinations(range(n), 2)))
    return pairs[rng.random(len(pairs)) < p]


def position_complexes(complexes, variant):
    """The complex at every zigzag position as a set of vertex tuples."""
    sets = [{tuple(s) for arr in c for s in arr.tolist()} for c in complexes]
    out = []
    for l, s in enumerate(sets):
        out.append(s)
        if l + 1 < len(sets):
            out.append(s & sets[l + 1] if variant == "intersection" else s | sets[l + 1])
    return out


def gudhi_betti(simplices, max_dim):
    st = gudhi.SimplexTree()
    for s in simplices:
        st.insert(list(s))
    st.compute_persistence(persistence_dim_max=True)
    b = list(st.betti_numbers()) + [0] * (max_dim + 1)
    return b[: max_dim + 1]


@pytest.mark.parametrize("variant", ["intersection", "union"])
@pytest.mark.parametrize("seed", range(4))
def test_fast_equals_classic_and_gudhi_betti(variant, seed):
    rng = np.random.default_rng(seed)
    n, num_layers, max_dim = 9, 5, 1
    complexes = [flag_complex(n, random_graph(rng, n, 0.45), max_dim + 1) for _ in range(num_layers)]
    zz = build_zigzag(complexes, n, variant)
    fast = zigzag_bars(zz, max_dim, method="fast")
    classic = zigzag_bars(zz, max_dim, method="classic")
    for p in range(max_dim + 1):
        np.testing.assert_array_equal(fast[p], classic[p])
    # Betti numbers implied by the bars == gudhi's Betti numbers of each position's complex
    positions = position_complexes(complexes, variant)
    assert len(positions) == zz.num_positions
    for t, simplices in enumerate(positions):
        expected = gudhi_betti(simplices, max_dim)
        implied = [int(betti_at_positions(fast[p], zz.num_positions)[t]) for p in range(max_dim + 1)]
        assert implied == expected, (t, implied, expected)


def test_fast_equals_classic_on_knn_clouds_h2():
    rng = np.random.default_rng(7)
    n, num_layers, max_dim = 14, 4, 2
    base = rng.normal(size=(n, 3))
    complexes = []
    for _ in range(num_layers):
        base = base + 0.3 * rng.normal(size=base.shape)
        complexes.append(flag_complex(n, knn_edges(base, 4), max_dim + 1))
    zz = build_zigzag(complexes, n, "intersection")
    fast = zigzag_bars(zz, max_dim, "fast")
    classic = zigzag_bars(zz, max_dim, "classic")
    for p in range(max_dim + 1):
        np.testing.assert_array_equal(fast[p], classic[p])
    positions = position_complexes(complexes, "intersection")
    for t in range(0, zz.num_positions, 2):  # the layers' own complexes
        assert [int(betti_at_positions(fast[p], zz.num_positions)[t]) for p in range(3)] == \
            gudhi_betti(positions[t], max_dim)


@pytest.mark.parametrize("seed", range(3))
def test_numpy_flag_complex_equals_gudhi(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 5))
    edges = knn_edges(x, 6)
    for max_dim in (1, 2, 3):
        a = flag_complex(40, edges, max_dim, backend="numpy")
        b = flag_complex(40, edges, max_dim, backend="gudhi")
        assert len(a) == len(b) == max_dim + 1
        for arr_a, arr_b in zip(a, b):
            np.testing.assert_array_equal(arr_a, arr_b)


def test_knn_symmetrisation():
    x = np.array([[0.0], [1.0], [1.5], [10.0]])
    union = {tuple(e) for e in knn_edges(x, 1, "union").tolist()}
    mutual = {tuple(e) for e in knn_edges(x, 1, "mutual").tolist()}
    # nearest: 0->1, 1->2, 2->1, 3->2
    assert union == {(0, 1), (1, 2), (2, 3)}
    assert mutual == {(1, 2)}


def test_times_and_presence():
    presence = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], dtype=bool)
    inter = position_presence(presence, "intersection")
    union = position_presence(presence, "union")
    np.testing.assert_array_equal(inter[0], [1, 1, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(union[0], [1, 1, 1, 1, 0, 1, 1])
    # a vertex-only complex: vertex 0 always present, vertex 1 in layers 1..2
    complexes = [[np.array([[0]])], [np.array([[0], [1]])], [np.array([[0], [1]])], [np.array([[0]])]]
    zz = build_zigzag(complexes, 2, "intersection")
    assert zz.simplices == [[0], [1]]
    assert zz.times == [[0], [2, 5]]


def test_snapping():
    np.testing.assert_array_equal(snap_position(np.arange(7)), [0, 1, 1, 2, 2, 3, 3])
    raw = np.array([[0, 7], [1, 2], [2, 3], [3, 6], [2, 4]])
    # [1,2) lives only on the intersection K0∩K1 -> dropped; [2,3) on layer 1 only -> [1,2)
    np.testing.assert_array_equal(snap_bars(raw), [[0, 4], [1, 2], [1, 2], [2, 3]])
