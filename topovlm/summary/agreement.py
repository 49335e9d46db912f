"""Ranking agreement between the scorers of one model: Kendall tau of their per-layer
redundancy, Jaccard overlap of their removed sets at each sparsity (averaged over the
draws both scorers ran)."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Sequence

from topovlm.stats import jaccard
from topovlm.summary.load import SummaryJob
from topovlm.summary.tables import Stat, fmt_value


def first_per_draw(jobs: list[SummaryJob], key: str) -> dict[str, dict[tuple, Any]]:
    """label -> draw -> the job's ``key`` field (``redundancy``, ``scores``), first job per draw;
    jobs without it (a missing or empty list) are left out."""
    out: dict[str, dict[tuple, Any]] = defaultdict(dict)
    for j in jobs:
        value = getattr(j, key)
        if value is not None and not (isinstance(value, list) and not value):
            out[j.label].setdefault(j.draw, value)
    return out


def _pairs_over_seeds(a: dict[tuple, Any], b: dict[tuple, Any]) -> list[tuple[Any, Any]]:
    common = sorted(set(a) & set(b), key=repr)
    if common:
        return [(a[s], b[s]) for s in common]
    return [(x, y) for x in a.values() for y in b.values()]


def kendall_tau(x: Sequence[float | None], y: Sequence[float | None]) -> float | None:
    from scipy.stats import kendalltau

    pairs = [(float(u), float(v)) for u, v in zip(x, y) if u is not None and v is not None]
    if len(pairs) < 2:
        return None
    tau = kendalltau([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


@dataclass
class Agreement:
    """Ranking agreement between the scorers of one model."""
    model: str
    labels: list[str]
    tau: dict[tuple[str, str], Stat] = field(default_factory=dict)
    overlap: dict[float, dict[tuple[str, str], Stat]] = field(default_factory=dict)

    def rows(self) -> list[SummaryJob]:
        out = []
        for (a, b), st in sorted(self.tau.items()):
            out.append({"model": self.model, "kind": "kendall_tau", "sparsity": None, "scorer_a": a,
                        "scorer_b": b, "value": st.mean, "std": st.std, "n": st.n})
        for s in sorted(self.overlap):
            for (a, b), st in sorted(self.overlap[s].items()):
                out.append({"model": self.model, "kind": "jaccard_removed", "sparsity": s, "scorer_a": a,
                            "scorer_b": b, "value": st.mean, "std": st.std, "n": st.n})
        return out

    def tau_matrix(self) -> list[list[float | None]]:
        m = []
        for a in self.labels:
            row = []
            for b in self.labels:
                st = self.tau.get((a, b)) or self.tau.get((b, a))
                row.append(1.0 if a == b else (st.mean if st else None))
            m.append(row)
        return m

    def overlap_matrix(self, sparsity: float) -> list[list[float | None]]:
        table = self.overlap.get(sparsity, {})
        m = []
        for a in self.labels:
            row = []
            for b in self.labels:
                st = table.get((a, b)) or table.get((b, a))
                row.append(st.mean if st else (1.0 if a == b and any(a in p for p in table) else None))
            m.append(row)
        return m

    def markdown(self) -> str:
        if len(self.labels) < 2:
            return ""
        out = [f"#### {self.model} · ranking agreement\n",
               "Kendall tau between the scorers' per-layer redundancy (1 = same ranking, "
               "0 = unrelated, -1 = reversed):\n",
               "| | " + " | ".join(self.labels) + " |", "|---|" + "---|" * len(self.labels)]
        for lab, row in zip(self.labels, self.tau_matrix()):
            out.append(f"| {lab} | " + " | ".join(fmt_value(v) if v is not None else "—" for v in row) + " |")
        if self.overlap:
            sps = sorted(self.overlap)
            out += ["", "Overlap (Jaccard) of the removed layer sets:\n",
                    "| scorers | " + " | ".join(f"{s:g}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
            for a, b in combinations(self.labels, 2):
                cells = []
                for s in sps:
                    st = self.overlap[s].get((a, b))
                    cells.append(st.fmt() if st else "—")
                if any(c != "—" for c in cells):
                    out.append(f"| {a} / {b} | " + " | ".join(cells) + " |")
        return "\n".join(out)


def agreement(jobs: list[SummaryJob], model: str) -> Agreement:
    """Kendall tau of the redundancy vectors and Jaccard of the removed sets, per scorer pair
    (averaged over the seeds both scorers ran; redundancy does not depend on the task)."""
    members = [j for j in jobs if j.model == model]
    red = first_per_draw(members, "redundancy")
    labels = sorted({j.label for j in members})
    ag = Agreement(model, labels)
    for a, b in combinations(labels, 2):
        if a in red and b in red:
            taus = [kendall_tau(x, y) for x, y in _pairs_over_seeds(red[a], red[b])]
            st = Stat.of([t for t in taus if t is not None])
            if st:
                ag.tau[(a, b)] = st
    removed: dict[float, dict[str, dict[tuple, list[int]]]] = defaultdict(lambda: defaultdict(dict))
    for j in members:
        if float(j.sparsity) > 0:
            removed[float(j.sparsity)][j.label].setdefault(j.draw, list(j.removed_layers or []))
    for s, by_label in removed.items():
        for a, b in combinations(labels, 2):
            if a in by_label and b in by_label:
                st = Stat.of([jaccard(x, y) for x, y in _pairs_over_seeds(by_label[a], by_label[b])])
                if st:
                    ag.overlap.setdefault(s, {})[(a, b)] = st
    return ag

