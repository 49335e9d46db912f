"""The summary's tables: per (model, task, metric) scorer x sparsity cells, the removed layers.

:class:`Stat` is a cell (mean ± std over seeds), :class:`MetricTable` one metric's table with
its unpruned reference row and, once the statistics have run, each cell's interval and
verdict; :func:`removed_markdown` the removed layers per scorer and sparsity. Also the small
helpers the other sections share (number format, file names, atomic CSV / text writes).
"""
from __future__ import annotations

import csv
import math
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from topovlm.stats import VERDICT_EQUIVALENT, VERDICT_INCONCLUSIVE, VERDICT_WORSE
from topovlm.summary.load import SummaryJob, higher_is_better, is_reference

if TYPE_CHECKING:
    from topovlm.stats import BestSet, Interval

REFERENCE = "unpruned (reference)"
_SKIP_METRICS = ("num_samples",)
# a cell's verdict against the other scorers at its sparsity (topovlm.summary.statistics;
# the words are topovlm.stats')
#: the mark a cell of a metric table carries for its verdict (none: best or not shown different)
#: scorers that measure rather than predict (the dev-split oracle): shown beside the scorers, never
#: the best of a table nor a member of its family of tests; the validity section compares with them
YARDSTICKS = ("oracle",)


def is_yardstick(label: str) -> bool:
    return label.split("[", 1)[0] in YARDSTICKS


VERDICT_MARKS = {VERDICT_WORSE: "↓", VERDICT_EQUIVALENT: "≡", VERDICT_INCONCLUSIVE: "?"}


@dataclass
class Stat:
    mean: float
    std: float | None  # sample std over seeds; None for a single value
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat | None":
        vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        if not vals:
            return None
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals))

    def fmt(self) -> str:
        text = fmt_value(self.mean)
        if self.n > 1:
            text += f" ± {fmt_value(self.std or 0.0)} (n={self.n})"
        return text


def fmt_value(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"


def _metric_names(jobs: list[SummaryJob]) -> list[str]:
    names: list[str] = []
    for j in jobs:
        for k, v in j.metrics.items():
            if k not in names and k not in _SKIP_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                names.append(k)
    return names


def headline_metric(jobs: list[SummaryJob], preferred: str | None = None) -> str | None:
    """``preferred`` (``topovlm summarize --metric``) when the jobs report it, else the
    ``optimized_metric`` their configs name. Results written before the config recorded it:
    accuracy, else perplexity, else the first metric the evaluator reports."""
    names = _metric_names(jobs)
    named = Counter(str(j.config["optimized_metric"]) for j in jobs
                    if isinstance(j.config, dict) and j.config.get("optimized_metric"))
    for pref in (preferred, *(m for m, _ in named.most_common()), "accuracy", "perplexity"):
        if pref and pref in names:
            return pref
    return names[0] if names else None


def ordered_metrics(jobs: list[SummaryJob], headline: str | Sequence[str] | None) -> list[str]:
    names = _metric_names(jobs)
    first = [headline] if isinstance(headline, str) else list(headline or [])
    first = [h for i, h in enumerate(first) if h in names and h not in first[:i]]
    return first + sorted(n for n in names if n not in first)


@dataclass
class MetricTable:
    """One metric of one (model, task): scorer label x sparsity -> Stat, plus the reference."""
    model: str
    task: str
    metric: str
    sparsities: list[float]
    cells: dict[str, dict[float, Stat]]
    reference: Stat | None
    # filled by compare(): 95% interval over samples and verdict against the best, per cell
    intervals: dict[str, dict[float, "Interval | None"]] = field(default_factory=dict)
    verdicts: dict[str, dict[float, str]] = field(default_factory=dict)
    reference_interval: "Interval | None" = None
    #: the headline metric's table (its sparsities are the confirmatory families); None: not compared
    confirmatory: bool | None = None
    #: the TOST margin the ≡ marks were tested at
    margin: float | None = None
    #: per sparsity: P(best) and the spread's interval (two-stage bootstrap)
    best_sets: dict[float, "BestSet | None"] = field(default_factory=dict)
    #: the metric's direction (the evaluator's, see :func:`topovlm.summary.load.higher_is_better`)
    higher_is_better: bool = True

    @property
    def lower_is_better(self) -> bool:
        return not self.higher_is_better

    def best(self, sparsity: float) -> list[str]:
        vals = {lab: row[sparsity].mean for lab, row in self.cells.items()
                if sparsity in row and not is_yardstick(lab)}
        if not vals:
            return []
        target = min(vals.values()) if self.lower_is_better else max(vals.values())
        return [lab for lab, v in vals.items() if math.isclose(v, target, rel_tol=1e-12, abs_tol=1e-12)]

    def markdown(self, legend: bool = True, family: bool = True) -> str:
        """``legend``: the sentence explaining bold, intervals and marks (without it, only the
        metric's direction); ``family``: the line saying confirmatory or exploratory (summary.md
        gives each once, not once per table)."""
        direction = "lower" if self.lower_is_better else "higher"
        seeds = any(s.n > 1 for row in self.cells.values() for s in row.values())
        cis = any(iv is not None for row in self.intervals.values() for iv in row.values())
        family_note = ""
        if cis and self.confirmatory is not None:
            family_note = ("confirmatory (the headline metric: every pair of scorers at a sparsity is one Holm family)"
                           if self.confirmatory else "exploratory (Holm within each sparsity of this table only, "
                           "nothing across tables: a mark here is a lead, not a finding)")
        margin = f" within ±{self.margin:g}" if self.margin is not None else ""
        head = (f"#### {self.model} · {self.task} · {self.metric}\n\n"
                + (f"_{family_note}_\n\n" if family_note and family else ""))
        if legend:
            head += (f"{direction} is better; **bold** = best scorer at that sparsity"
                     + ("; mean ± std over seeds (n = seeds)" if seeds else "")
                     + ("; [95% interval]; against the other scorers at that sparsity (all pairs, Holm): ↓ = shown "
                        f"worse than another scorer, ≡ = shown equivalent to the best{margin} (TOST), ? = inconclusive "
                        "(too few calibration draws); unmarked = not shown different" if cis else "") + "\n\n")
        else:  # the direction is each table's own; the marks' legend is given once, above
            head += f"{direction} is better\n\n"
        cols = [f"{s:.0%}" if round(s * 100, 6) == round(s * 100) else f"{s:.1%}" for s in self.sparsities]
        lines = ["| scorer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        ref = self.reference.fmt() if self.reference else "—"
        if self.reference and _ci_text(self.reference_interval):
            ref += " " + _ci_text(self.reference_interval)
        lines.append(f"| *{REFERENCE}* | " + " | ".join([ref] * len(cols)) + " |")
        best = {s: set(self.best(s)) for s in self.sparsities}
        for lab in sorted(self.cells):
            row = self.cells[lab]
            vals = []
            for s in self.sparsities:
                st = row.get(s)
                cell = st.fmt() if st else "—"
                cell = f"**{cell}**" if st and lab in best[s] else cell
                if st and _ci_text(self.intervals.get(lab, {}).get(s)):
                    cell += " " + _ci_text(self.intervals[lab][s])
                mark = VERDICT_MARKS.get(self.verdicts.get(lab, {}).get(s, ""))
                if st and mark:
                    cell += " " + mark
                vals.append(cell)
            lines.append(f"| {lab} | " + " | ".join(vals) + " |")
        note = ""
        if self.reference is None:
            note = ("\n\n_No unpruned reference: this sweep has no sparsity=0 job and its jobs recorded "
                    "no `reference_metrics` (add `sparsity=0,...` to the sweep to get one)._")
        return head + "\n".join(lines) + note


def _ci_text(iv: "Interval | None") -> str:
    if iv is None or iv.method == "none" or math.isnan(iv.low):
        return ""
    return f"[{fmt_value(iv.low)}, {fmt_value(iv.high)}]"


def metric_table(jobs: list[SummaryJob], model: str, task: str, metric: str) -> MetricTable:
    members = [j for j in jobs if j.model == model and j.task == task]
    ref_by_seed: dict[tuple, list[float]] = defaultdict(list)
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in members:
        v = j.metrics.get(metric)
        if v is None:
            continue
        if is_reference(j):
            # every scorer's sparsity-0 job evaluates the same unpruned model: one value per seed
            ref_by_seed[j.draw].append(float(v))
        else:
            values[j.label][float(j.sparsity)].append(float(v))
    if not ref_by_seed:  # no sparsity-0 job: the unpruned scores each pruned job recorded
        for j in members:
            v = (j.reference_metrics or {}).get(metric)
            if v is not None:
                ref_by_seed[j.draw].append(float(v))
    reference = Stat.of([statistics.fmean(v) for v in ref_by_seed.values()])
    cells = {lab: {s: Stat.of(vs) for s, vs in row.items()} for lab, row in values.items()}
    cells = {lab: {s: st for s, st in row.items() if st} for lab, row in cells.items()}
    sparsities = sorted({s for row in cells.values() for s in row})
    return MetricTable(model, task, metric, sparsities, cells, reference,
                       higher_is_better=higher_is_better(members, metric))



def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"



def removed_markdown(jobs: list[SummaryJob]) -> str:
    """Scorer x sparsity -> removed layers (the set most seeds chose, with how many did)."""
    out = []
    for model in sorted({j.model for j in jobs}):
        sets: dict[str, dict[float, dict[tuple, tuple[int, ...]]]] = defaultdict(lambda: defaultdict(dict))
        for j in jobs:
            if j.model == model and float(j.sparsity) > 0:
                sets[j.label][float(j.sparsity)].setdefault(j.draw, tuple(j.removed_layers or []))
        sps = sorted({s for row in sets.values() for s in row})
        if not sps:
            continue
        lines = [f"#### {model}\n", "| scorer | " + " | ".join(f"{s:g}" for s in sps) + " |", "|---|" + "---|" * len(sps)]
        for lab in sorted(sets):
            cells = []
            for s in sps:
                by_seed = sets[lab].get(s)
                if not by_seed:
                    cells.append("—")
                    continue
                counts: dict[tuple[int, ...], int] = defaultdict(int)
                for layers in by_seed.values():
                    counts[layers] += 1
                top, c = max(counts.items(), key=lambda kv: kv[1])
                text = ", ".join(map(str, top)) or "(none)"
                cells.append(text if len(by_seed) == 1 else f"{text} ({c}/{len(by_seed)} seeds)")
            lines.append(f"| {lab} | " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) or "_No pruned jobs._"


def write_text(path: Path, text: str) -> Path:
    from topovlm.storage import atomic_write_text

    return atomic_write_text(path, text)


def write_csv(path: Path, columns: list[str], rows: list[SummaryJob]) -> Path:
    from topovlm.storage import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})

    return atomic_write(path, write)

