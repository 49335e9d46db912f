"""The layer zigzag of flag complexes, its bars, and snapping bars to layers.

Zigzag positions: ``2 l`` is layer ``l``'s complex ``K_l``; ``2 l + 1`` joins layers
``l`` and ``l + 1``: ``K_l ∩ K_{l+1}`` for the intersection zigzag
``K_0 ⊇ K_0∩K_1 ⊆ K_1 ⊇ ...`` (default) or ``K_l ∪ K_{l+1}`` for the union zigzag
``K_0 ⊆ K_0∪K_1 ⊇ K_1 ⊆ ...``. There are ``2 L - 1`` positions, times ``0..2L-2``.

Each simplex enters the zigzag with integer times: it is inserted at the first
position of every maximal run of positions where it is present and removed at the
position after the run (no removal if it stays to the end). The complex at position
``t`` is every simplex inserted at a time ``<= t`` and not removed at a time ``<= t``.
In the intersection zigzag insertions happen only at even times and removals only at
odd times (the reverse for the union zigzag), so no time mixes the two.

Bars are half-open ``[b, d)`` in positions (``d = 2L - 1`` for bars that never die):
a bar is alive at position ``t`` iff ``b <= t < d``, and the number of dimension-p
bars alive at ``t`` is the p-th Betti number of the complex at ``t`` (tested against
gudhi). Positions snap to layers by ``t -> t // 2 + t % 2``; a snapped bar
``[B, D)`` is alive on layers ``B..D-1``. Bars with ``B == D`` live only on one
intersection (or union) complex and are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VARIANTS = ("intersection", "union")
METHODS = ("fast", "classic")


@dataclass
class ZigzagInput:
    """Simplices (faces before cofaces) and their insertion/removal times."""

    simplices: list[list[int]]
    times: list[list[int]]
    num_layers: int
    variant: str

    @property
    def num_positions(self) -> int:
        return 2 * self.num_layers - 1

    @property
    def size(self) -> int:
        """Number of distinct simplices in the zigzag."""
        return len(self.simplices)

    @property
    def num_events(self) -> int:
        """Insertions plus removals: what the zigzag algorithms process."""
        return int(sum(len(t) for t in self.times))


def _encode(simplices: np.ndarray, n: int) -> np.ndarray:
    key = np.zeros(len(simplices), dtype=np.int64)
    for col in range(simplices.shape[1]):
        key = key * n + simplices[:, col]
    return key


def position_presence(layer_presence: np.ndarray, variant: str = "intersection") -> np.ndarray:
    """``(m, L)`` presence of simplices in layers -> ``(m, 2L-1)`` presence in positions."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    m, num_layers = layer_presence.shape
    out = np.zeros((m, 2 * num_layers - 1), dtype=bool)
    out[:, 0::2] = layer_presence
    if num_layers > 1:
        a, b = layer_presence[:, :-1], layer_presence[:, 1:]
        out[:, 1::2] = (a & b) if variant == "intersection" else (a | b)
    return out


def build_zigzag(complexes: list[list[np.ndarray]], num_vertices: int, variant: str = "intersection") -> ZigzagInput:
    """Zigzag input from per-layer complexes (as returned by ``flag_complex``)."""
    num_layers = len(complexes)
    if num_layers == 0:
        raise ValueError("no layers")
    max_dim = len(complexes[0]) - 1
    if max_dim >= 1 and num_vertices ** (max_dim + 1) >= 2**62:
        raise ValueError("too many vertices to encode simplices as int64 keys")
    simplices: list[list[int]] = []
    times: list[list[int]] = []
    for p in range(max_dim + 1):
        per_layer = [c[p] for c in complexes]
        counts = np.array([len(a) for a in per_layer])
        if counts.sum() == 0:
            continue
        stacked = np.concatenate(per_layer, axis=0)
        keys = _encode(stacked, num_vertices)
        layer_of = np.repeat(np.arange(num_layers), counts)
        uniq, first, inv = np.unique(keys, return_index=True, return_inverse=True)
        presence = np.zeros((len(uniq), num_layers), dtype=bool)
        presence[inv.reshape(-1), layer_of] = True
        pos = position_presence(presence, variant)
        padded = np.zeros((pos.shape[0], pos.shape[1] + 1), dtype=np.int8)
        padded[:, 1:] = pos
        change = np.diff(padded, axis=1, append=np.zeros((pos.shape[0], 1), dtype=np.int8))
        # change[:, t] != 0 <=> presence flips between t-1 and t (t = num_positions: end)
        rows, cols = np.nonzero(change[:, : pos.shape[1]])
        # present ones have at least one insertion; split times by row
        split = np.searchsorted(rows, np.arange(1, len(uniq)))
        verts = stacked[first]
        simplices.extend(verts.tolist())
        times.extend(t.tolist() for t in np.split(cols, split))
    return ZigzagInput(simplices=simplices, times=times, num_layers=num_layers, variant=variant)


def zigzag_bars(zz: ZigzagInput, max_dim: int, method: str = "fast") -> list[np.ndarray]:
    """Raw zigzag bars per dimension ``0..max_dim``: ``(n, 2)`` int arrays ``[b, d)``.

    ``method="fast"``: dionysus ``fast_zigzag`` (cone construction + ordinary
    persistence); ``"classic"``: dionysus ``zigzag_homology_persistence``. Both are
    exact and return the same bars. Bars of zero length are never returned; a bar that
    never dies gets ``d = 2L - 1``. The bars of dimension ``p`` are only correct if
    the complexes contain all simplices up to dimension ``p + 1``.
    """
    import dionysus as d

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    end = zz.num_positions
    out: list[list[tuple[int, int]]] = [[] for _ in range(max_dim + 1)]
    if not zz.simplices:
        return [np.empty((0, 2), dtype=np.int64) for _ in range(max_dim + 1)]
    filtration = d.Filtration(zz.simplices)
    if method == "fast":
        cone = d.fast_zigzag(filtration, zz.times)
        reduced = d.homology_persistence(cone, method="clearing")
        diagrams = d.init_zigzag_diagrams(reduced, cone)
        for p in range(min(max_dim + 1, len(diagrams))):
            for dgm in diagrams[p].values():
                out[p].extend((pt.birth, pt.death) for pt in dgm)
    else:
        _, diagrams, _ = d.zigzag_homology_persistence(filtration, zz.times)
        for p in range(min(max_dim + 1, len(diagrams))):
            out[p].extend((pt.birth, pt.death) for pt in diagrams[p])
    result = []
    for bars in out:
        arr = np.array([(int(b), end if not np.isfinite(dd) else int(dd)) for b, dd in bars], dtype=np.int64)
        arr = arr.reshape(-1, 2)
        arr = arr[arr[:, 1] > arr[:, 0]]
        result.append(arr[np.lexsort((arr[:, 1], arr[:, 0]))])
    return result


def betti_at_positions(bars: np.ndarray, num_positions: int) -> np.ndarray:
    """Number of bars alive at each position (``b <= t < d``)."""
    t = np.arange(num_positions)
    if len(bars) == 0:
        return np.zeros(num_positions, dtype=np.int64)
    return ((bars[:, :1] <= t) & (t < bars[:, 1:])).sum(axis=0)


def snap_position(t: np.ndarray | int) -> np.ndarray:
    """Zigzag position -> layer: ``t // 2 + t % 2``."""
    t = np.asarray(t)
    return t // 2 + t % 2


def snap_bars(bars: np.ndarray) -> np.ndarray:
    """Raw position bars -> layer bars ``[B, D)``, dropping those with ``B == D``."""
    snapped = snap_position(np.asarray(bars, dtype=np.int64).reshape(-1, 2))
    snapped = snapped[snapped[:, 1] > snapped[:, 0]]
    return snapped[np.lexsort((snapped[:, 1], snapped[:, 0]))]
