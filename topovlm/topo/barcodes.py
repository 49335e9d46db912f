"""Barcodes in the ancestor's published CSV format, and their re-analysis (``topovlm topo-score``).

The format (Gardinazzi et al., ICML 2025, public code): one row per bar, columns
``dimension,birth,death``, birth and death in zigzag positions of
``K_0 ⊇ K_0∩K_1 ⊆ K_1 ⊇ ...`` (``K_i`` at even offsets, ``K_i ∩ K_{i+1}`` between them),
``death`` empty or ``inf`` for a bar that never dies. ``start_index`` is the position
number of ``K_0`` (0 for 0-based files; 1 where the writer counted zigzag times from 1).
Bars snap to representations exactly as the scorer's own bars do
(:func:`topovlm.topo.zigzag.snap_bars`), and are scored by the same
:meth:`~topovlm.topo.scorer.TopoScorer.rank_bars`.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from topovlm.topo.zigzag import snap_bars, snap_position

COLUMNS = ("dimension", "birth", "death")


class BarcodeError(ValueError):
    """A barcode file that is not in the format: one line naming the file, the line and why."""


def read_barcode_csv(path: str | Path, start_index: int = 0) -> dict[int, np.ndarray]:
    """``{dim: (n, 2) float array [b, d)}`` in 0-based zigzag positions (``d = inf``: never dies).

    Every row is checked before any bar is used, and the first bad one raises
    :class:`BarcodeError` naming the file and line: a row with another number of fields than
    the header, a value that is not a number, NaN, a dimension that is not a non-negative
    integer, a position that is not an integer, a birth before ``K_0`` or infinite, and a
    death before its birth. Such a file is not a barcode; reading on would score garbage."""
    rows: dict[int, list[tuple[float, float]]] = {}
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise BarcodeError(f"{path}: cannot read ({err.strerror or err})") from None
    with f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise BarcodeError(f"{path}: missing column(s) {', '.join(missing)}; need {','.join(COLUMNS)}")
            col = {c: header.index(c) for c in COLUMNS}
            for fields in reader:
                if not fields or all(not v.strip() for v in fields):
                    continue  # a blank line
                dim, birth, death = _parse_row(fields, len(header), col, start_index,
                                               f"{path}, line {reader.line_num}")
                rows.setdefault(dim, []).append((birth, death))
        except UnicodeDecodeError as err:
            raise BarcodeError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
        except csv.Error as err:
            raise BarcodeError(f"{path}, line {reader.line_num}: {err}") from None
    return {p: np.asarray(v, dtype=np.float64).reshape(-1, 2) for p, v in sorted(rows.items())}


def _parse_row(fields: list[str], width: int, col: dict[str, int], start_index: int,
               where: str) -> tuple[int, float, float]:
    """``(dimension, birth, death)`` of one CSV row, 0-based; :class:`BarcodeError` naming ``where``."""
    if len(fields) != width:
        raise BarcodeError(f"{where}: {len(fields)} field(s), the header has {width} "
                           f"({','.join(COLUMNS)}): {','.join(fields)!r}")
    text = {c: fields[i].strip() for c, i in col.items()}

    def number(name: str) -> float:
        try:
            value = float(text[name])
        except ValueError:
            raise BarcodeError(f"{where}: {name} {text[name]!r} is not a number") from None
        if math.isnan(value):
            raise BarcodeError(f"{where}: {name} is NaN (a bar that never dies has death inf or empty)")
        return value

    dim = number("dimension")
    if not math.isfinite(dim) or dim != int(dim) or dim < 0:
        raise BarcodeError(f"{where}: dimension {text['dimension']!r} is not a non-negative integer")
    birth = number("birth")
    death = math.inf if text["death"].lower() in ("", "inf", "+inf", "infinity") else number("death")
    if not math.isfinite(birth) or birth != int(birth) or (math.isfinite(death) and death != int(death)):
        raise BarcodeError(f"{where}: zigzag positions are integers, got birth {text['birth']}, "
                           f"death {text['death'] or 'inf'}")
    if death < birth:
        raise BarcodeError(f"{where}: death {text['death']} is before birth {text['birth']}")
    if birth - start_index < 0:
        raise BarcodeError(f"{where}: birth {text['birth']} is before K_0 (start_index={start_index})")
    return int(dim), birth - start_index, death - start_index


def write_barcode_csv(path: str | Path, raw_bars: Mapping[int, np.ndarray], num_positions: int,
                      start_index: int = 0) -> Path:
    """Write position bars ``[b, d)`` (``d >= num_positions``: never dies, written ``inf``)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for p in sorted(raw_bars):
            for b, d in np.asarray(raw_bars[p]).reshape(-1, 2):
                w.writerow([p, int(b) + start_index, "inf" if d >= num_positions else int(d) + start_index])
    return path


def layer_bars(position_bars: Mapping[int, np.ndarray], num_reps: int | None = None
               ) -> tuple[dict[int, np.ndarray], int, bool]:
    """Snap position bars to representation bars ``[B, D)``.

    Returns the bars, the number of representations R and whether R was inferred. Without
    ``num_reps``, R is the smallest count that holds every snapped birth and finite death;
    a bar that never dies then ends at R, which is a lower bound when the last
    representations hold no birth or death.
    """
    inferred = num_reps is None
    if inferred:
        top = 0
        for bars in position_bars.values():
            if len(bars):
                top = max(top, int(snap_position(int(bars[:, 0].max()))) + 1)
                finite = bars[np.isfinite(bars[:, 1]), 1]
                if finite.size:
                    top = max(top, int(snap_position(int(finite.max()))))
        num_reps = max(top, 1)
    end = 2 * num_reps - 1
    out = {}
    for p, bars in position_bars.items():
        b = np.asarray(bars, dtype=np.float64).reshape(-1, 2)
        d = np.where(np.isfinite(b[:, 1]), b[:, 1], end)
        if len(b) and (b[:, 0].max() >= end or d.max() > end):
            raise ValueError(f"H{p} bars reach past the {num_reps} representations' {end} zigzag positions")
        out[p] = snap_bars(np.stack([b[:, 0], d], axis=1).astype(np.int64))
    return out, int(num_reps), inferred


def rescore(path: str | Path, scorer: Any, *, start_index: int = 0, exclude_last: bool = False,
            num_reps: int | None = None, remove: int | None = None, eps: float | None = None) -> dict[str, Any]:
    """Scores and removed representations of a barcode file, as a JSON-ready dict.

    ``exclude_last``: the last representation is the final norm's (scored, never removed).
    The decision is ``remove`` most redundant (top-k), else ``redundancy >= eps * max``
    (``eps`` defaults to the scorer's).
    """
    from topovlm.topo.ranking import decide

    position_bars = read_barcode_csv(path, start_index)
    # every dimension up to max_dim is scored, present in the file or not
    for p in range(scorer.max_dim + 1):
        position_bars.setdefault(p, np.empty((0, 2)))
    position_bars = {p: b for p, b in position_bars.items() if p <= scorer.max_dim}
    bars, reps, inferred = layer_bars(position_bars, num_reps)
    ranking = scorer.rank_bars(bars, reps, final_norm=exclude_last,
                               hint="barcodes from a larger k or more samples may have fewer empty layers")
    warnings = list(ranking.warnings)
    if inferred and any(np.isinf(b[:, 1]).any() for b in position_bars.values() if len(b)):
        warnings.append({"kind": "representations_inferred", "representations": reps,
                         "message": f"{reps} representations inferred from the bars; bars that never die "
                                    "end there (pass --representations if the model has more)"})
    decision = ranking.adaptive if remove is None and eps is None else \
        decide(ranking.redundancy, ranking.removable, remove=remove, eps=eps)
    return {
        "file": str(path),
        "scorer": scorer.name,
        "formula": scorer.formula,
        "representations": reps,
        "final_norm_index": reps - 1 if exclude_last else None,
        "dim_weights": {f"h{p}": scorer.dim_weights.get(f"h{p}", 0.0) for p in sorted(bars)},
        "consistency": [float(v) for v in ranking.combined],
        "consistency_by_dim": {f"h{p}": [float(v) for v in ranking.consistency[p]] for p in sorted(bars)},
        "redundancy": [float(v) for v in ranking.redundancy],
        "betti": {f"h{p}": [int(v) for v in ranking.betti[p]] for p in sorted(bars)},
        "decision": decision,
        "removed_layers": decision["layers"],
        "warnings": warnings,
    }
