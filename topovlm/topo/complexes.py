"""Symmetrised k-nearest-neighbour graphs and their clique (flag) complexes.

A layer's complex is stored as one sorted ``(n_p, p + 1)`` int array of vertex
indices per dimension ``p`` (rows sorted ascending, lexicographic row order), so that
complexes of different layers, which share the vertex set (sample indices), can be
merged and intersected with array operations.

Two interchangeable flag-complex builders give identical complexes:

* ``"gudhi"``: ``gudhi.SimplexTree`` insertion + ``expansion`` (the reference);
* ``"numpy"``: clique enumeration on a dense upper-triangular adjacency matrix,
  vectorised per dimension. Exporting a simplex tree to Python costs about a
  microsecond per simplex; this builder avoids that loop, which matters once the
  per-layer complexes reach tens of thousands of triangles.
"""
from __future__ import annotations

import numpy as np

SYMMETRISATIONS = ("union", "mutual")
FLAG_BACKENDS = ("numpy", "gudhi")


def knn_edges(points: np.ndarray, k: int, symmetrize: str = "union", metric: str = "euclidean") -> np.ndarray:
    """Edges ``(E, 2)`` (``i < j``, sorted) of the symmetrised k-NN graph of ``points``.

    ``symmetrize="union"``: ``i ~ j`` when either is among the other's k nearest
    neighbours; ``"mutual"``: when both are. A point is never its own neighbour;
    ``k`` is clipped to ``n - 1``.
    """
    from sklearn.neighbors import NearestNeighbors

    if symmetrize not in SYMMETRISATIONS:
        raise ValueError(f"symmetrize must be one of {SYMMETRISATIONS}, got {symmetrize!r}")
    x = np.asarray(points, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    k = int(min(k, n - 1))
    if k < 1:
        raise ValueError("k must be >= 1")
    nn = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(x)
    ind = nn.kneighbors(return_distance=False)  # (n, k), the query point excluded
    rows = np.repeat(np.arange(n), k)
    cols = ind.reshape(-1)
    directed = np.zeros((n, n), dtype=bool)
    directed[rows, cols] = True
    adj = directed | directed.T if symmetrize == "union" else directed & directed.T
    i, j = np.nonzero(np.triu(adj, 1))
    return np.stack([i, j], axis=1).astype(np.int64)


def flag_complex(num_vertices: int, edges: np.ndarray, max_dim: int, backend: str = "numpy") -> list[np.ndarray]:
    """Clique complex of a graph up to simplices of dimension ``max_dim``.

    Returns ``[vertices (n, 1), edges (E, 2), triangles (T, 3), ...]`` (length
    ``max_dim + 1``), each sorted as described in the module docstring.
    """
    if backend == "numpy":
        return _flag_numpy(num_vertices, edges, max_dim)
    if backend == "gudhi":
        return _flag_gudhi(num_vertices, edges, max_dim)
    raise ValueError(f"backend must be one of {FLAG_BACKENDS}, got {backend!r}")


def _flag_numpy(n: int, edges: np.ndarray, max_dim: int) -> list[np.ndarray]:
    edges = _sorted_edges(edges)
    out = [np.arange(n, dtype=np.int64)[:, None]]
    if max_dim >= 1:
        out.append(edges)
    if max_dim >= 2:
        upper = np.zeros((n, n), dtype=bool)
        upper[edges[:, 0], edges[:, 1]] = True
        cliques = edges
        for _ in range(2, max_dim + 1):
            if len(cliques) == 0:
                out.append(np.empty((0, cliques.shape[1] + 1), dtype=np.int64))
                cliques = out[-1]
                continue
            # vertices above the clique's last vertex adjacent to all its vertices;
            # chunked so that the (m, n) boolean mask stays small
            new = []
            chunk = max(1, 4_000_000 // max(n, 1))
            for start in range(0, len(cliques), chunk):
                c = cliques[start:start + chunk]
                common = upper[c[:, 0]]
                for col in range(1, c.shape[1]):
                    common &= upper[c[:, col]]
                r, v = np.nonzero(common)
                new.append(np.concatenate([c[r], v[:, None]], axis=1))
            cliques = np.concatenate(new, axis=0).astype(np.int64)
            out.append(cliques)
    return out


def _flag_gudhi(n: int, edges: np.ndarray, max_dim: int) -> list[np.ndarray]:
    import gudhi

    edges = _sorted_edges(edges)
    st = gudhi.SimplexTree()  # keep the tree in a variable: chained calls can segfault
    st.insert_batch(np.arange(n, dtype=np.int64)[None, :], np.zeros(n))
    if len(edges) and max_dim >= 1:
        st.insert_batch(edges.T.copy(), np.zeros(len(edges)))
    st.expansion(max_dim)
    by_dim: list[list[list[int]]] = [[] for _ in range(max_dim + 1)]
    for simplex, _ in st.get_simplices():
        by_dim[len(simplex) - 1].append(simplex)
    out = []
    for p, rows in enumerate(by_dim):
        arr = np.asarray(rows, dtype=np.int64).reshape(-1, p + 1)
        arr.sort(axis=1)
        out.append(arr[np.lexsort(arr.T[::-1])] if len(arr) else arr)
    return out


def _sorted_edges(edges: np.ndarray) -> np.ndarray:
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    e = np.sort(e, axis=1)
    e = e[e[:, 0] != e[:, 1]]
    e = np.unique(e, axis=0)  # unique also sorts rows lexicographically
    return e


def complex_size(complex_: list[np.ndarray]) -> int:
    return int(sum(len(a) for a in complex_))
