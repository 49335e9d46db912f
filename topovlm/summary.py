"""The comparison at the end of a sweep: CSV, Markdown tables, plots and ranking agreement.

Reads every ``results.json`` under one or more sweep directories (one per job, written
last and atomically by :func:`topovlm.runner.run_job`, so a job killed mid-way is simply
absent) and writes, into the output directory:

* ``summary.csv``: one row per job (model, task, scorer, sparsity, seeds, removed
  layers, every metric, efficiency, job key, output dir);
* ``summary.md``: per (model, task) the headline metric and every breakdown metric
  (``accuracy/<domain>``, ``accuracy/<category>``) by scorer x sparsity, best per
  column in bold, the unpruned model (sparsity 0) as the reference row, mean ± std
  over seeds where a cell has several; the removed layers; the ranking agreement;
* ``agreement.csv``: Kendall tau between the scorers' redundancy rankings and the
  Jaccard overlap of their removed sets at each sparsity;
* PNG plots under ``plots/``: metric vs sparsity (per task, one panel per metric),
  the layer x scorer map of removed layers, the score profiles, the agreement heat map.

``topovlm summarize <sweep_dir> [...]`` (or ``python -m topovlm.cli summarize ...``)
builds the same from finished runs.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import statistics
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from topovlm.results import FAILED_FILE, RESULTS_FILE

if TYPE_CHECKING:
    from topovlm.stats import DrawVariance, Interval, PairedTest, Regime, RemovalStability

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
AGREEMENT_CSV = "agreement.csv"
PLOTS_DIR = "plots"
REFERENCE = "unpruned (reference)"
# config keys that repeat a measurement rather than define a method: averaged over
SEED_KEYS = ("seed", "calibration.seed", "calibration.dataset.seed", "task.dataset.seed")
# config keys that never distinguish two methods (logging, storage, the axes themselves)
_NOT_VARIANT = ("logger", "force", "save_model", "cache_dir", "sparsity", "model", "task", "efficiency",
                "scorer.name", "scorer._target_")
_LOWER_IS_BETTER = ("perplexity", "ppl", "loss", "error", "latency", "time")
_SKIP_METRICS = ("num_samples",)
_NOT_JOB_DIRS = ("wandb", "pruned_model", PLOTS_DIR)


# --------------------------------------------------------------------------- loading

def find_results(dirs: Iterable[str | Path]) -> list[Path]:
    """Every ``results.json`` under ``dirs`` (recursively; hidden folders skipped)."""
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if d.is_file():
            found.append(d)
            continue
        if not d.is_dir():
            raise FileNotFoundError(f"no such sweep directory: {d}")
        for root, subdirs, files in os.walk(d):
            # not where jobs write results: W&B runs, saved models, plots, hidden (.submitit, .hydra)
            subdirs[:] = sorted(s for s in subdirs if not s.startswith(".") and s not in _NOT_JOB_DIRS)
            if RESULTS_FILE in files:
                found.append(Path(root) / RESULTS_FILE)
    return found


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(data, list):
        data = json.dumps(data)
    out[prefix[:-1]] = data
    return out


def _is_complete(res: Any) -> bool:
    return isinstance(res, dict) and all(k in res for k in ("model", "task", "scorer", "sparsity", "metrics"))


def load_jobs(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The complete jobs under ``dirs``, one per job key (a resumed copy of a job counts once)."""
    by_key: dict[str, dict[str, Any]] = {}
    for path in find_results(dirs):
        try:
            res = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            log.warning("skipping unreadable %s: %s", path, err)
            continue
        if not _is_complete(res):
            log.warning("skipping incomplete %s", path)
            continue
        res["_path"] = str(path)
        key = res.get("job_key") or str(path.resolve())
        kept = by_key.get(key)
        # prefer the job that computed the result over a copy written by a resumed job
        if kept is None or (kept.get("resumed_from") and not res.get("resumed_from")):
            by_key[key] = res
    jobs = list(by_key.values())
    _assign_labels(jobs)
    return jobs


def load_failures(dirs: Iterable[str | Path]) -> list[dict[str, Any]]:
    """The failure records (``failed.json``) of job dirs under ``dirs`` that hold no result."""
    out = []
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            continue
        for path in sorted(d.rglob(FAILED_FILE)):
            rel = path.relative_to(d).parts
            if any(p.startswith(".") or p in _NOT_JOB_DIRS for p in rel[:-1]) or (path.parent / RESULTS_FILE).is_file():
                continue
            try:
                rec = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                rec = {"error_type": type(err).__name__, "error": f"unreadable failure record: {err}"}
            out.append({**rec, "out_dir": str(path.parent)})
    return out


def failures_markdown(failures: list[dict[str, Any]]) -> str:
    if not failures:
        return "_None: every job finished._"
    lines = ["| job | scorer | sparsity | stage | error |", "|---|---|---|---|---|"]
    for f in failures:
        msg = f"{f.get('error_type')}: {f.get('error')}".replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {Path(f['out_dir']).name} | {f.get('scorer')} | {f.get('sparsity')} | {f.get('stage')} | {msg} |")
    return "\n".join(lines)


def _seed_of(job: dict[str, Any]) -> tuple:
    flat = job["_flat"]
    return tuple(flat.get(k, job.get(k) if k == "seed" else None) for k in SEED_KEYS)


def _assign_labels(jobs: list[dict[str, Any]]) -> None:
    """``label``: the scorer name plus whatever else distinguishes its jobs in this summary
    (e.g. ``cosine[pooling=text_mean]``), so variants of one scorer get their own rows."""
    for job in jobs:
        job["_flat"] = _flatten(job.get("config") or {})
        job["_seed"] = _seed_of(job)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        groups[(job["model"], job["task"], job["scorer"])].append(job)
    for members in groups.values():
        keys = sorted({k for j in members for k in j["_flat"]})
        varying = []
        for k in keys:
            if k in SEED_KEYS or any(k == p or k.startswith(p + ".") for p in _NOT_VARIANT):
                continue
            if len({json.dumps(j["_flat"].get(k), sort_keys=True) for j in members}) > 1:
                varying.append(k)
        for job in members:
            parts = [f"{k.removeprefix('scorer.')}={job['_flat'].get(k)}" for k in varying]
            job["label"] = job["scorer"] + (f"[{','.join(parts)}]" if parts else "")


# --------------------------------------------------------------------------- statistics

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
        text = _fmt(self.mean)
        if self.n > 1:
            text += f" ± {_fmt(self.std or 0.0)} (n={self.n})"
        return text


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.1f}" if abs(v) >= 100 else f"{v:.3f}"


def lower_is_better(metric: str) -> bool:
    base = metric.split("/")[0].lower()
    return any(w in base for w in _LOWER_IS_BETTER)


def _is_reference(job: dict[str, Any]) -> bool:
    return float(job["sparsity"]) == 0.0 and not job.get("removed_layers")


def _metric_names(jobs: list[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for j in jobs:
        for k, v in j["metrics"].items():
            if k not in names and k not in _SKIP_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool):
                names.append(k)
    return names


def headline_metric(jobs: list[dict[str, Any]], preferred: str | None = None) -> str | None:
    """``preferred`` when the jobs report it, else accuracy, else perplexity, else the first metric
    the evaluator reports (e.g. ``pope_accuracy``, ``mme_perception_score``, ``exact_match``)."""
    names = _metric_names(jobs)
    for pref in (preferred, "accuracy", "perplexity"):
        if pref and pref in names:
            return pref
    return names[0] if names else None


def ordered_metrics(jobs: list[dict[str, Any]], headline: str | Sequence[str] | None) -> list[str]:
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

    @property
    def lower_is_better(self) -> bool:
        return lower_is_better(self.metric)

    def best(self, sparsity: float) -> list[str]:
        vals = {lab: row[sparsity].mean for lab, row in self.cells.items() if sparsity in row}
        if not vals:
            return []
        target = min(vals.values()) if self.lower_is_better else max(vals.values())
        return [lab for lab, v in vals.items() if math.isclose(v, target, rel_tol=1e-12, abs_tol=1e-12)]

    def markdown(self) -> str:
        direction = "lower" if self.lower_is_better else "higher"
        seeds = any(s.n > 1 for row in self.cells.values() for s in row.values())
        cis = any(iv is not None for row in self.intervals.values() for iv in row.values())
        head = (f"#### {self.model} · {self.task} · {self.metric}\n\n"
                f"{direction} is better; **bold** = best scorer at that sparsity"
                + ("; mean ± std over seeds (n = seeds)" if seeds else "")
                + ("; [95% interval over samples]; ≈ = statistically indistinguishable from the best "
                   "(paired test, Holm-corrected)" if cis else "") + "\n\n")
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
                if st and self.verdicts.get(lab, {}).get(s) == VERDICT_SAME:
                    cell += " ≈"
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
    return f"[{_fmt(iv.low)}, {_fmt(iv.high)}]"


def metric_table(jobs: list[dict[str, Any]], model: str, task: str, metric: str) -> MetricTable:
    members = [j for j in jobs if j["model"] == model and j["task"] == task]
    ref_by_seed: dict[tuple, list[float]] = defaultdict(list)
    values: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in members:
        v = j["metrics"].get(metric)
        if v is None:
            continue
        if _is_reference(j):
            # every scorer's sparsity-0 job evaluates the same unpruned model: one value per seed
            ref_by_seed[j["_seed"]].append(float(v))
        else:
            values[j["label"]][float(j["sparsity"])].append(float(v))
    if not ref_by_seed:  # no sparsity-0 job: the unpruned scores each pruned job recorded
        for j in members:
            v = (j.get("reference_metrics") or {}).get(metric)
            if v is not None:
                ref_by_seed[j["_seed"]].append(float(v))
    reference = Stat.of([statistics.fmean(v) for v in ref_by_seed.values()])
    cells = {lab: {s: Stat.of(vs) for s, vs in row.items()} for lab, row in values.items()}
    cells = {lab: {s: st for s, st in row.items() if st} for lab, row in cells.items()}
    sparsities = sorted({s for row in cells.values() for s in row})
    return MetricTable(model, task, metric, sparsities, cells, reference)


# --------------------------------------------------------------------------- agreement

def _first_per_seed(jobs: list[dict[str, Any]], key: str) -> dict[str, dict[tuple, Any]]:
    out: dict[str, dict[tuple, Any]] = defaultdict(dict)
    for j in jobs:
        if j.get(key) is not None:
            out[j["label"]].setdefault(j["_seed"], j[key])
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


def jaccard(a: Iterable[int], b: Iterable[int]) -> float:
    a, b = set(a), set(b)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


@dataclass
class Agreement:
    """Ranking agreement between the scorers of one model."""
    model: str
    labels: list[str]
    tau: dict[tuple[str, str], Stat] = field(default_factory=dict)
    overlap: dict[float, dict[tuple[str, str], Stat]] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
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
            out.append(f"| {lab} | " + " | ".join(_fmt(v) if v is not None else "—" for v in row) + " |")
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


def agreement(jobs: list[dict[str, Any]], model: str) -> Agreement:
    """Kendall tau of the redundancy vectors and Jaccard of the removed sets, per scorer pair
    (averaged over the seeds both scorers ran; redundancy does not depend on the task)."""
    members = [j for j in jobs if j["model"] == model]
    red = _first_per_seed(members, "redundancy")
    labels = sorted({j["label"] for j in members})
    ag = Agreement(model, labels)
    for a, b in combinations(labels, 2):
        if a in red and b in red:
            taus = [kendall_tau(x, y) for x, y in _pairs_over_seeds(red[a], red[b])]
            st = Stat.of([t for t in taus if t is not None])
            if st:
                ag.tau[(a, b)] = st
    removed: dict[float, dict[str, dict[tuple, list[int]]]] = defaultdict(lambda: defaultdict(dict))
    for j in members:
        if float(j["sparsity"]) > 0:
            removed[float(j["sparsity"])][j["label"]].setdefault(j["_seed"], list(j.get("removed_layers") or []))
    for s, by_label in removed.items():
        for a, b in combinations(labels, 2):
            if a in by_label and b in by_label:
                st = Stat.of([jaccard(x, y) for x, y in _pairs_over_seeds(by_label[a], by_label[b])])
                if st:
                    ag.overlap.setdefault(s, {})[(a, b)] = st
    return ag


# --------------------------------------------------------------------------- per-sample statistics
# Intervals, paired verdicts against the best scorer, agreement with the unpruned model,
# calibration-draw variance, layer-removal stability, regimes and cost (topovlm/stats.py).

VERDICT_BEST = "best"
VERDICT_SAME = "≈ best"
VERDICT_WORSE = "worse"
VERDICT_NA = "n/a"
COMPARISON_CSV = "comparison.csv"
CALIBRATION_CSV = "calibration_variance.csv"
REGIMES_CSV = "regimes.csv"
EFFICIENCY_CSV = "efficiency.csv"


def job_samples(job: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The job's ``samples.jsonl`` (next to its results.json, or in the run it was resumed from)."""
    from topovlm.samples import SAMPLES_FILE, read_jsonl

    if "_samples" in job:
        return job["_samples"]
    records = None
    for d in (Path(job["_path"]).parent if job.get("_path") else None, job.get("resumed_from"), job.get("out_dir")):
        if d and (Path(d) / SAMPLES_FILE).is_file():
            try:
                records = read_jsonl(Path(d) / SAMPLES_FILE)
            except (OSError, json.JSONDecodeError) as err:
                log.warning("unreadable samples in %s: %s", d, err)
            break
    job["_samples"] = records
    return records


def _reference_view(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A pruned job's records seen as the unpruned model's (its ``reference_*`` fields)."""
    out = []
    for r in records:
        if r.get("reference_correct") is None and r.get("reference_loss") is None:
            continue
        out.append({**r, "prediction": r.get("reference_prediction"), "correct": r.get("reference_correct"),
                    "loss": r.get("reference_loss"), "agree": True})
    return out


def metric_samples(records: list[dict[str, Any]] | None, metric: str) -> tuple[str | None, dict[str, Any]]:
    """``(kind, key -> per-sample value)`` for ``metric``: ``proportion`` (0/1 correct, for
    ``accuracy`` and ``accuracy/<domain or category>``), ``ratio`` ((nll_sum, num_tokens) for
    ``perplexity`` / ``nll``), ``mean`` (a per-sample value the evaluator logged under
    ``metrics``), or ``(None, {})`` when the records do not resolve the metric."""
    if not records:
        return None, {}
    if metric == "accuracy" or metric.startswith("accuracy/"):
        group = metric.split("/", 1)[1] if "/" in metric else None
        vals = {r["key"]: float(bool(r["correct"])) for r in records if r.get("correct") is not None
                and (group is None or group in (r.get("domain"), r.get("category")))}
        return ("proportion", vals) if vals else (None, {})
    if metric in ("perplexity", "nll") and all("nll_sum" in r for r in records):
        return "ratio", {r["key"]: (float(r["nll_sum"]), float(r["num_tokens"])) for r in records}
    vals = {r["key"]: float(r["metrics"][metric]) for r in records
            if isinstance(r.get("metrics"), dict) and isinstance(r["metrics"].get(metric), (int, float))
            and not isinstance(r["metrics"].get(metric), bool)}
    if vals:
        binary = all(v in (0.0, 1.0) for v in vals.values())
        return ("proportion" if binary else "mean"), vals
    return None, {}


@dataclass
class CellSamples:
    """A cell's per-sample values, averaged over its calibration draws (keys common to all)."""
    kind: str
    values: dict[str, Any]
    n_draws: int


def cell_samples(records_per_draw: list[list[dict[str, Any]] | None], metric: str) -> CellSamples | None:
    per = [metric_samples(r, metric) for r in records_per_draw]
    if not per or any(k is None for k, _ in per):
        return None
    kind = "mean" if len({k for k, _ in per}) > 1 else per[0][0]
    keys = set(per[0][1])
    for _, v in per[1:]:
        keys &= set(v)
    keys = sorted(keys)
    if not keys:
        return None
    if kind == "ratio":
        import numpy as np

        values = {k: tuple(np.mean([v[k] for _, v in per], axis=0)) for k in keys}
    else:
        values = {k: statistics.fmean(v[k] for _, v in per) for k in keys}
    return CellSamples(kind, values, len(per))


def cell_interval(cs: CellSamples | None, metric: str) -> "Interval | None":
    """95% interval over samples: Wilson for a single draw's proportion, else the bootstrap."""
    from topovlm import stats

    if cs is None:
        return None
    vals = list(cs.values.values())
    if cs.kind == "ratio":
        import numpy as np

        a, b = [v[0] for v in vals], [v[1] for v in vals]
        if metric == "perplexity":
            return stats.perplexity_interval(a, b)
        return stats.bootstrap_interval(a, b, statistic=lambda x, y, axis=-1: np.sum(x, axis=axis) / np.sum(y, axis=axis))
    if cs.kind == "proportion":
        return stats.proportion_interval(vals)
    return stats.bootstrap_interval(vals)


def _per_sample_loss(cs: CellSamples) -> dict[str, float]:
    if cs.kind == "ratio":
        return {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in cs.values.items()}
    return dict(cs.values)


def paired_test(a: CellSamples, b: CellSamples) -> "PairedTest | None":
    """``a`` against ``b`` on their common samples: McNemar exact for one draw of 0/1 outcomes,
    else the paired sign-flip test (per-sample loss for perplexity)."""
    from topovlm import stats

    va, vb = _per_sample_loss(a), _per_sample_loss(b)
    keys = sorted(set(va) & set(vb))
    if not keys:
        return None
    xa, xb = [va[k] for k in keys], [vb[k] for k in keys]
    if a.kind == b.kind == "proportion" and all(v in (0.0, 1.0) for v in xa + xb):
        return stats.mcnemar_exact([v == 1.0 for v in xa], [v == 1.0 for v in xb])
    return stats.paired_permutation(xa, xb)


@dataclass
class Comparison:
    """One cell of a metric table against the best scorer at its sparsity."""
    model: str
    task: str
    metric: str
    label: str
    sparsity: float
    n_draws: int
    mean: float
    std: float | None
    interval: "Interval | None"
    best: str
    test: "PairedTest | None" = None
    p_holm: float | None = None
    verdict: str = VERDICT_NA
    agreement: "Interval | None" = None

    def row(self) -> dict[str, Any]:
        iv, t, ag = self.interval, self.test, self.agreement
        return {"model": self.model, "task": self.task, "metric": self.metric, "scorer": self.label,
                "sparsity": self.sparsity, "n_draws": self.n_draws, "mean": self.mean, "std_over_draws": self.std,
                "ci_low": iv.low if iv else None, "ci_high": iv.high if iv else None, "ci_method": iv.method if iv else None,
                "best": self.best, "test": t.test if t else None, "diff_vs_best": t.diff if t else None,
                "diff_ci_low": t.diff_low if t else None, "diff_ci_high": t.diff_high if t else None,
                "discordant_scorer_only": t.a_only if t else None, "discordant_best_only": t.b_only if t else None,
                "p_value": t.p_value if t else None, "p_holm": self.p_holm, "verdict": self.verdict,
                "agreement_with_unpruned": ag.value if ag else None,
                "agreement_ci_low": ag.low if ag else None, "agreement_ci_high": ag.high if ag else None}


def _cell_jobs(jobs: list[dict[str, Any]], model: str, task: str) -> dict[str, dict[float, list[dict[str, Any]]]]:
    """label -> sparsity -> the cell's jobs, one per draw (seed tuple)."""
    out: dict[str, dict[float, dict[tuple, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for j in jobs:
        if j["model"] == model and j["task"] == task and not _is_reference(j):
            out[j["label"]][float(j["sparsity"])].setdefault(j["_seed"], j)
    return {lab: {s: [by[k] for k in sorted(by, key=repr)] for s, by in row.items()} for lab, row in out.items()}


def _reference_records(jobs: list[dict[str, Any]], model: str, task: str) -> list[dict[str, Any]] | None:
    members = [j for j in jobs if j["model"] == model and j["task"] == task]
    for j in sorted(members, key=lambda j: repr(j["_seed"])):
        if _is_reference(j) and job_samples(j):
            return job_samples(j)
    for j in sorted(members, key=lambda j: repr(j["_seed"])):
        recs = job_samples(j)
        if recs:
            view = _reference_view(recs)
            if view:
                return view
    return None


def _stderr_interval(cell: list[dict[str, Any]], metric: str) -> "Interval | None":
    """lmms-eval's reported stderr (recorded in the protocol), for a cell of one job."""
    from topovlm import stats

    if len(cell) != 1:
        return None
    se = ((cell[0].get("protocol") or {}).get("stderr") or {}).get(metric)
    value = cell[0]["metrics"].get(metric)
    if isinstance(se, (int, float)) and isinstance(value, (int, float)) and not math.isnan(se):
        return stats.stderr_interval(value, se)
    return None


def compare(table: MetricTable, jobs: list[dict[str, Any]], alpha: float = 0.05) -> list[Comparison]:
    """Every cell of ``table`` with its 95% interval, its paired test against the best scorer
    at the same sparsity (Holm-corrected over the whole table) and its agreement with the
    unpruned model. Also fills ``table.intervals`` / ``table.verdicts`` for the Markdown."""
    from topovlm import stats

    cells = _cell_jobs(jobs, table.model, table.task)
    samples: dict[tuple[str, float], CellSamples | None] = {}
    out: list[Comparison] = []
    for lab, row in table.cells.items():
        for s, st in row.items():
            cj = cells.get(lab, {}).get(s, [])
            recs = [job_samples(j) for j in cj]
            cs = cell_samples(recs, table.metric) if cj else None
            samples[(lab, s)] = cs
            iv = cell_interval(cs, table.metric) or _stderr_interval(cj, table.metric)
            agree = None
            if cj and all(recs):
                flags: dict[str, list[float]] = defaultdict(list)
                for r in recs:
                    for rec in r:
                        if rec.get("agree") is not None:
                            flags[rec["key"]].append(float(bool(rec["agree"])))
                vals = [statistics.fmean(v) for v in flags.values() if len(v) == len(recs)]
                agree = stats.agreement_with_reference(vals) if vals else None
            table.intervals.setdefault(lab, {})[s] = iv
            out.append(Comparison(table.model, table.task, table.metric, lab, s, st.n, st.mean, st.std, iv, "",
                                  agreement=agree))
    for s in table.sparsities:
        best = table.best(s)
        for c in out:
            if c.sparsity != s:
                continue
            c.best = best[0] if best else ""
            if c.label in best:
                c.verdict = VERDICT_BEST
                continue
            a, b = samples.get((c.label, s)), samples.get((c.best, s))
            if a is not None and b is not None:
                c.test = paired_test(a, b)
    tested = [c for c in out if c.test is not None]
    for c, p in zip(tested, stats.holm([c.test.p_value for c in tested], alpha=alpha)):
        c.p_holm = p
        c.verdict = VERDICT_SAME if p >= alpha else VERDICT_WORSE
    for c in out:
        table.verdicts.setdefault(c.label, {})[c.sparsity] = c.verdict
    ref = _reference_records(jobs, table.model, table.task)
    if table.reference is not None and ref is not None:
        table.reference_interval = cell_interval(cell_samples([ref], table.metric), table.metric)
    return out


def _fmt_p(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def comparison_markdown(rows: list[Comparison]) -> str:
    """The verdict table of one (model, task, metric): every scorer against the best at each sparsity."""
    if not rows:
        return ""
    r0 = rows[0]
    multi = any(c.n_draws > 1 for c in rows)
    lines = [f"#### {r0.model} · {r0.task} · {r0.metric}: paired comparison with the best scorer\n",
             "value = mean" + (" ± std over calibration draws" if multi else "") + " [95% interval over samples]; "
             "Δ = scorer minus best [95% paired bootstrap]; test: McNemar exact (one draw, right/wrong), else the "
             "paired sign-flip test on per-sample values" + (" averaged over draws" if multi else "")
             + "; p (Holm): Holm-corrected over this table; **≈ best**: not significantly different from the best "
             "(Holm p ≥ 0.05); agreement: share of samples whose answer is the unpruned model's.\n",
             "| sparsity | scorer | value [95% CI] | Δ vs best [95% CI] | discordant (scorer / best) | test | p | p (Holm) "
             "| verdict | agreement with unpruned [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    order = {VERDICT_BEST: 0, VERDICT_SAME: 1, VERDICT_WORSE: 2, VERDICT_NA: 3}
    for c in sorted(rows, key=lambda c: (c.sparsity, order[c.verdict], -c.mean if not lower_is_better(c.metric) else c.mean)):
        value = _fmt(c.mean) + (f" ± {_fmt(c.std or 0.0)}" if c.n_draws > 1 else "")
        if c.interval is not None and c.interval.method != "none":
            value += f" [{_fmt(c.interval.low)}, {_fmt(c.interval.high)}]"
        t = c.test
        diff = f"{t.diff:+.3f} [{t.diff_low:+.3f}, {t.diff_high:+.3f}]" if t else "—"
        disc = f"{t.a_only} / {t.b_only}" if t and t.a_only is not None else "—"
        test = {"mcnemar_exact": "McNemar exact", "paired_permutation": "sign-flip"}.get(t.test, t.test) if t else "—"
        verdict = f"**{c.verdict}**" if c.verdict in (VERDICT_BEST, VERDICT_SAME) else c.verdict
        ag = c.agreement.fmt() if c.agreement else "—"
        lines.append(f"| {c.sparsity:g} | {c.label} | {value} | {diff} | {disc} | {test} | {_fmt_p(t.p_value if t else None)} "
                     f"| {_fmt_p(c.p_holm)} | {verdict} | {ag} |")
    return "\n".join(lines)


@dataclass
class DrawRow:
    """One scorer x sparsity across calibration draws."""
    model: str
    task: str
    metric: str
    label: str
    sparsity: float
    variance: "DrawVariance"
    stability: "RemovalStability"
    draws: list[str]


def calibration_variance(jobs: list[dict[str, Any]], model: str, task: str, metric: str) -> list[DrawRow]:
    """Per scorer and sparsity: mean ± std of ``metric`` over the draws (seed tuples), the mean
    sampling half-width of the single-draw intervals, and the removed layers' stability."""
    from topovlm import stats

    out = []
    for lab, row in sorted(_cell_jobs(jobs, model, task).items()):
        for s, cj in sorted(row.items()):
            values = [j["metrics"].get(metric) for j in cj]
            ivs = [cell_interval(cell_samples([job_samples(j)], metric), metric) for j in cj]
            var = stats.draw_variance([v for v in values if isinstance(v, (int, float))], [iv for iv in ivs if iv])
            if var is None:
                continue
            num_layers = max(int(j.get("num_layers") or 0) for j in cj)
            stab = stats.removal_stability([j.get("removed_layers") or [] for j in cj], num_layers)
            draws = [",".join(f"{k}={v}" for k, v in zip(SEED_KEYS, j["_seed"]) if v is not None) for j in cj]
            out.append(DrawRow(model, task, metric, lab, s, var, stab, draws))
    return out


def calibration_markdown(rows: list[DrawRow]) -> str:
    if not rows or not any(r.variance.n_draws > 1 for r in rows):
        return ""
    r0 = rows[0]
    lines = [f"#### {r0.model} · {r0.task} · {r0.metric}: variance over calibration draws\n",
             "mean ± std over the draws (one job per draw: `seed` / `calibration.seed`), kept apart from the "
             "sampling interval: ± sampling = the mean 95% half-width of one draw's interval over samples. "
             "Stability of the removed layers: mean pairwise Jaccard across draws (1 = the same set every time); "
             "layers removed in every draw, and in some draws (share of draws).\n",
             "| scorer | sparsity | draws | mean ± std (draws) | ± sampling (95%) | std / sampling | Jaccard | always removed | sometimes removed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v, st = r.variance, r.stability
        samp = f"± {_fmt(v.sampling_half_width)}" if v.sampling_half_width is not None else "—"
        ratio = (f"{(v.std or 0.0) / v.sampling_half_width:.2f}" if v.sampling_half_width and v.n_draws > 1 else "—")
        some = ", ".join(f"{i} ({f:.2f})" for i, f in enumerate(st.frequency) if 0 < f < 1) or "—"
        lines.append(f"| {r.label} | {r.sparsity:g} | {v.n_draws} | {v.fmt()} | {samp} | {ratio} | "
                     f"{_fmt(st.mean_jaccard) if st.mean_jaccard is not None else '—'} | "
                     f"{', '.join(map(str, st.always())) or '—'} | {some} |")
    return "\n".join(lines)


def regimes(rows: list[Comparison]) -> list["Regime"]:
    """Per sparsity: best minus worst scorer and how many are indistinguishable from the best."""
    from topovlm import stats

    out = []
    for s in sorted({c.sparsity for c in rows}):
        cells = [c for c in rows if c.sparsity == s]
        if not any(c.test is not None for c in cells):
            continue  # no per-sample records: nothing says which differences are real
        same = [c.label for c in cells if c.verdict in (VERDICT_BEST, VERDICT_SAME)]
        r = stats.regime(s, {c.label: c.mean for c in cells}, same, lower_is_better(cells[0].metric))
        if r is not None:
            out.append(r)
    return out


def regimes_markdown(model: str, task: str, metric: str, regs: list["Regime"]) -> str:
    if not regs:
        return ""
    lines = [f"#### {model} · {task} · {metric}: regimes\n",
             "Spread across scorers at each sparsity (the domain-aware paper's regimes, measured): best minus "
             "worst, and how many scorers are statistically indistinguishable from the best (Holm p ≥ 0.05). "
             "`convergent`: no scorer is distinguishable from the best; `ranking-sensitive`: the choice of layers "
             "matters. Whether evenly spaced removal helps at high budgets (`spacing-sensitive`) shows as a "
             "`selection.policy=spacing` variant being the best or ≈ best where its top-k counterpart is worse.\n",
             "| sparsity | best | worst | best − worst | indistinguishable from best | regime |", "|---|---|---|---|---|---|"]
    for r in regs:
        lines.append(f"| {r.sparsity:g} | {r.best} | {r.worst} | {_fmt(r.spread)} | {r.n_indistinguishable} / "
                     f"{r.n_scorers} | {r.label} |")
    return "\n".join(lines)


@dataclass
class CostRow:
    model: str
    task: str
    label: str
    sparsity: float
    kept: int
    num_layers: int
    ideal: float | None
    prefill: "Stat | None"
    decode: "Stat | None"
    quality: "Comparison | None"
    flags: str


def cost_rows(jobs: list[dict[str, Any]], model: str, task: str, comparisons: list[Comparison]) -> list[CostRow]:
    """Per scorer and sparsity: measured prefill / decode speedups (mean ± std over the cell's
    jobs, each of which measures again), the ideal speedup for the layers removed, and flags."""
    from topovlm import stats

    by = {(c.label, c.sparsity): c for c in comparisons}
    out = []
    for lab, row in sorted(_cell_jobs(jobs, model, task).items()):
        for s, cj in sorted(row.items()):
            effs = [j.get("efficiency") or {} for j in cj]
            L = max(int(j.get("num_layers") or 0) for j in cj)
            kept = int(cj[0].get("num_layers_kept") or L)
            ideal = stats.ideal_speedup(L, kept)
            flags = []
            measured: dict[str, Stat | None] = {}
            for name in ("prefill", "decode"):
                vals = [e.get(f"{name}_speedup") for e in effs if e.get(f"{name}_speedup") is not None]
                good = [v for v in vals if not stats.implausible_speedup(v, ideal)]
                measured[name] = Stat.of(good)
                if len(good) < len(vals):
                    flags.append(f"{name}: {len(vals) - len(good)} implausible measurement(s) left out")
                f = stats.speedup_flag(measured[name].mean if measured[name] else None, ideal)
                if f:
                    flags.append(f"{name} {f}")
            pre, dec = measured["prefill"], measured["decode"]
            if pre is None and dec is None:
                continue
            out.append(CostRow(model, task, lab, s, kept, L, ideal, pre, dec, by.get((lab, s)), "; ".join(flags)))
    return out


def cost_markdown(rows: list[CostRow]) -> str:
    if not rows:
        return ""
    r0 = rows[0]
    lines = [f"#### {r0.model} · {r0.task}: cost against quality\n",
             "Measured speedups against the unpruned model (median of the timing repeats within a job; "
             "± std over the cell's jobs, each of which measures again), the ideal decoder-bound speedup "
             "L / kept, and flags: `below 1` (slower than unpruned: timing noise or overhead), `far from ideal` "
             "(the measured gain is off the ideal gain by more than 35%: noise on a shared machine, or time spent "
             "outside the decoder layers); a measurement above twice the ideal or not finite is a timing artefact "
             "and is left out.\n",
             "| scorer | sparsity | layers kept | ideal | prefill speedup | decode speedup | quality | flag |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = "—"
        if r.quality is not None:
            q = _fmt(r.quality.mean) + (f" ({r.quality.verdict})" if r.quality.verdict != VERDICT_NA else "")
        lines.append(f"| {r.label} | {r.sparsity:g} | {r.kept}/{r.num_layers} | {r.ideal:.2f} | "
                     f"{r.prefill.fmt() if r.prefill else '—'} | {r.decode.fmt() if r.decode else '—'} | {q} | {r.flags or '—'} |")
    return "\n".join(lines)


@dataclass
class Statistics:
    """Everything per-sample statistics adds to a summary."""
    comparisons: list[Comparison] = field(default_factory=list)            # every metric
    draws: dict[tuple[str, str], list[DrawRow]] = field(default_factory=dict)
    regimes: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    cost: dict[tuple[str, str], list[CostRow]] = field(default_factory=dict)
    missing_samples: int = 0

    def of(self, model: str, task: str, metric: str) -> list[Comparison]:
        return [c for c in self.comparisons if (c.model, c.task, c.metric) == (model, task, metric)]


def build_statistics(jobs: list[dict[str, Any]], tables: list[MetricTable],
                     headlines: dict[tuple[str, str], str | None]) -> Statistics:
    st = Statistics()
    st.missing_samples = sum(1 for j in jobs if job_samples(j) is None)
    for t in tables:
        st.comparisons += compare(t, jobs)
    for (model, task), metric in headlines.items():
        if not metric:
            continue
        st.draws[(model, task)] = calibration_variance(jobs, model, task, metric)
        st.regimes[(model, task)] = regimes(st.of(model, task, metric))
        st.cost[(model, task)] = cost_rows(jobs, model, task, st.of(model, task, metric))
    return st


def statistics_markdown(summary: "Summary", model: str, task: str) -> list[str]:
    """The statistics sections of one (model, task) in summary.md."""
    st = summary.stats
    metric = summary.headlines.get((model, task))
    if st is None or not metric:
        return []
    missing = [j for j in summary.jobs if (j["model"], j["task"]) == (model, task) and job_samples(j) is None]
    note = (f"_{len(missing)} of the jobs wrote no samples.jsonl (finished before per-sample records existed, "
            "or an evaluator without them): their cells have no interval over samples and no paired verdict; "
            "`+force=true` recomputes them._") if missing else ""
    parts = [note, comparison_markdown(st.of(model, task, metric)),
             regimes_markdown(model, task, metric, st.regimes.get((model, task), [])),
             calibration_markdown(st.draws.get((model, task), [])),
             cost_markdown(st.cost.get((model, task), []))]
    return [p for p in parts if p]


def write_statistics_csvs(summary: "Summary", out_dir: Path) -> None:
    st = summary.stats
    if st is None:
        return
    rows = [c.row() for c in st.comparisons]
    if rows:
        summary.files["comparison"] = _write_csv(out_dir / COMPARISON_CSV, list(rows[0]), rows)
    draw_rows = []
    for rs in st.draws.values():
        for r in rs:
            draw_rows.append({"model": r.model, "task": r.task, "metric": r.metric, "scorer": r.label,
                              "sparsity": r.sparsity, "n_draws": r.variance.n_draws, "mean": r.variance.mean,
                              "std_over_draws": r.variance.std, "sampling_half_width": r.variance.sampling_half_width,
                              "mean_pairwise_jaccard": r.stability.mean_jaccard,
                              "removal_frequency": " ".join(f"{f:.3f}" for f in r.stability.frequency),
                              "draws": " ; ".join(r.draws)})
    if draw_rows:
        summary.files["calibration_variance"] = _write_csv(out_dir / CALIBRATION_CSV, list(draw_rows[0]), draw_rows)
    reg_rows = [{"model": m, "task": t, "metric": summary.headlines.get((m, t)), "sparsity": r.sparsity, "best": r.best,
                 "worst": r.worst, "spread": r.spread, "n_scorers": r.n_scorers,
                 "n_indistinguishable": r.n_indistinguishable, "regime": r.label}
                for (m, t), regs in st.regimes.items() for r in regs]
    if reg_rows:
        summary.files["regimes"] = _write_csv(out_dir / REGIMES_CSV, list(reg_rows[0]), reg_rows)
    cost = [{"model": r.model, "task": r.task, "scorer": r.label, "sparsity": r.sparsity, "layers_kept": r.kept,
             "num_layers": r.num_layers, "ideal_speedup": r.ideal,
             "prefill_speedup": r.prefill.mean if r.prefill else None,
             "prefill_speedup_std": r.prefill.std if r.prefill else None,
             "decode_speedup": r.decode.mean if r.decode else None,
             "decode_speedup_std": r.decode.std if r.decode else None, "n_jobs": (r.prefill or r.decode).n,
             "quality": r.quality.mean if r.quality else None, "verdict": r.quality.verdict if r.quality else None,
             "flag": r.flags} for rs in st.cost.values() for r in rs]
    if cost:
        summary.files["efficiency"] = _write_csv(out_dir / EFFICIENCY_CSV, list(cost[0]), cost)


def job_interval_columns(job: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    """summary.csv: each metric's 95% interval over this job's samples, and its agreement with
    the unpruned model."""
    from topovlm import stats

    out: dict[str, Any] = {}
    recs = job_samples(job)
    for m in metrics:
        iv = cell_interval(cell_samples([recs], m), m) if recs else None
        iv = iv or _stderr_interval([job], m)
        out[f"{m}/ci_low"] = iv.low if iv else None
        out[f"{m}/ci_high"] = iv.high if iv else None
    flags = [r["agree"] for r in recs or [] if r.get("agree") is not None]
    ag = stats.agreement_with_reference(flags) if flags else None
    out["agreement_with_unpruned"] = ag.value if ag else None
    out["agreement_ci_low"] = ag.low if ag else None
    out["agreement_ci_high"] = ag.high if ag else None
    return out


# --------------------------------------------------------------------------- the summary

CSV_FIRST = ["model", "task", "scorer", "scorer_name", "sparsity", "seed", "calibration_seed", "num_layers",
             "num_layers_kept", "removed_layers", "selection_policy"]
CSV_LAST = ["time_total_s", "resumed_from", "job_key", "out_dir"]


def csv_rows(jobs: list[dict[str, Any]], metrics: list[str], intervals: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per job; ``intervals``: each metric's 95% interval over the job's samples too
    (``<metric>/ci_low``, ``<metric>/ci_high``) and its agreement with the unpruned model."""
    flat_eff = [_flatten(j.get("efficiency") or {}) for j in jobs]
    eff = sorted({k for e in flat_eff for k, v in e.items() if v is None or isinstance(v, (int, float, str))})
    ci_cols = ([c for m in metrics for c in (m, f"{m}/ci_low", f"{m}/ci_high")]
               + ["agreement_with_unpruned", "agreement_ci_low", "agreement_ci_high"]) if intervals else metrics
    columns = CSV_FIRST + ci_cols + [f"efficiency/{k}" for k in eff] + CSV_LAST
    rows = []
    for j in sorted(jobs, key=_job_order):
        job_eff = _flatten(j.get("efficiency") or {})
        row = {
            "model": j["model"], "task": j["task"], "scorer": j["label"], "scorer_name": j["scorer"],
            "sparsity": float(j["sparsity"]), "seed": j.get("seed"),
            "calibration_seed": j["_flat"].get("calibration.seed"),
            "num_layers": j.get("num_layers"), "num_layers_kept": j.get("num_layers_kept"),
            "removed_layers": " ".join(str(i) for i in j.get("removed_layers") or []),
            "selection_policy": j.get("selection_policy"),
            "time_total_s": round(sum((j.get("timings") or {}).values()), 3) if j.get("timings") else None,
            "resumed_from": j.get("resumed_from"), "job_key": j.get("job_key"), "out_dir": j.get("out_dir"),
        }
        row.update({m: j["metrics"].get(m) for m in metrics})
        if intervals:
            row.update(job_interval_columns(j, metrics))
        row.update({f"efficiency/{k}": job_eff.get(k) for k in eff})
        rows.append(row)
    return columns, rows


def _job_order(j: dict[str, Any]) -> tuple:
    return (j["model"], j["task"], j["label"], float(j["sparsity"]), repr(j["_seed"]))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


@dataclass
class Summary:
    jobs: list[dict[str, Any]]
    out_dir: Path
    headlines: dict[tuple[str, str], str | None]  # (model, task) -> its headline metric
    tables: list[MetricTable]           # every metric of every (model, task)
    agreements: list[Agreement]
    files: dict[str, Path] = field(default_factory=dict)   # name -> path of what was written
    plots: list[Path] = field(default_factory=list)
    sources: list[Path] = field(default_factory=list)
    stats: Statistics | None = None     # intervals, paired verdicts, draws, regimes, cost
    failures: list[dict[str, Any]] = field(default_factory=list)  # failed.json records

    @property
    def headline(self) -> str | None:
        """The headline metric most (model, task) groups use."""
        names = [h for h in self.headlines.values() if h]
        return max(names, key=names.count) if names else None

    def headline_tables(self) -> list[MetricTable]:
        return [t for t in self.tables if t.metric == self.headlines.get((t.model, t.task))]

    def terminal_markdown(self) -> str:
        """What the end of a multirun prints: headline tables and ranking agreement."""
        parts = [f"### Sweep summary: {len(self.jobs)} jobs ({', '.join(str(s) for s in self.sources)})"]
        parts += [t.markdown() for t in self.headline_tables()]
        if self.stats is not None:
            parts += [comparison_markdown(self.stats.of(t.model, t.task, t.metric)) for t in self.headline_tables()]
        parts += [a.markdown() for a in self.agreements if a.markdown()]
        parts.append(f"Per-domain tables: {self.files.get('markdown')}; one row per job: {self.files.get('csv')}"
                     + (f"; plots: {self.out_dir / PLOTS_DIR}" if self.plots else ""))
        if self.failures:
            parts.append(f"### Failed jobs: {len(self.failures)}\n\n" + failures_markdown(self.failures))
        return "\n\n".join(parts)

    def full_markdown(self) -> str:
        parts = [f"# Sweep summary\n\n{len(self.jobs)} jobs from " + ", ".join(f"`{s}`" for s in self.sources)]
        for (model, task) in _groups(self.jobs):
            parts.append(f"## {model} · {task}")
            parts += statistics_markdown(self, model, task)
            parts += [t.markdown() for t in self.tables if (t.model, t.task) == (model, task)]
        parts.append("## Removed layers")
        parts.append(removed_markdown(self.jobs))
        ag = [a.markdown() for a in self.agreements if a.markdown()]
        if ag:
            parts.append("## Ranking agreement")
            parts += ag
        if self.plots:
            parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(self.out_dir)})" for p in self.plots))
        parts.append(f"## Failures\n\n{failures_markdown(self.failures)}")
        return "\n\n".join(parts) + "\n"


def _groups(jobs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted({(j["model"], j["task"]) for j in jobs})


def removed_markdown(jobs: list[dict[str, Any]]) -> str:
    """Scorer x sparsity -> removed layers (the set most seeds chose, with how many did)."""
    out = []
    for model in sorted({j["model"] for j in jobs}):
        sets: dict[str, dict[float, dict[tuple, tuple[int, ...]]]] = defaultdict(lambda: defaultdict(dict))
        for j in jobs:
            if j["model"] == model and float(j["sparsity"]) > 0:
                sets[j["label"]][float(j["sparsity"])].setdefault(j["_seed"], tuple(j.get("removed_layers") or []))
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


def build_summary(dirs: Sequence[str | Path], out_dir: str | Path | None = None, *, metric: str | None = None,
                  plots: bool = True) -> Summary:
    """Read the jobs under ``dirs`` and write the summary into ``out_dir`` (default: the only dir)."""
    dirs = [Path(d) for d in dirs]
    if out_dir is None:
        if len(dirs) != 1:
            raise ValueError("several sweep directories: say where the summary goes (out_dir)")
        out_dir = dirs[0] if dirs[0].is_dir() else dirs[0].parent
    out_dir = Path(out_dir)
    jobs = load_jobs(dirs)
    failures = load_failures(dirs)
    if not jobs and not failures:
        raise FileNotFoundError(f"no complete {RESULTS_FILE} under {', '.join(map(str, dirs))}")
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = []
    headlines: dict[tuple[str, str], str | None] = {}
    for model, task in _groups(jobs):
        members = [j for j in jobs if (j["model"], j["task"]) == (model, task)]
        headlines[(model, task)] = headline_metric(members, metric)
        for m in ordered_metrics(members, headlines[(model, task)]):
            tables.append(metric_table(jobs, model, task, m))
    agreements = [agreement(jobs, m) for m in sorted({j["model"] for j in jobs})]
    summary = Summary(jobs, out_dir, headlines, tables, agreements, sources=dirs, failures=failures)
    summary.stats = build_statistics(jobs, tables, headlines)
    write_statistics_csvs(summary, out_dir)

    columns, rows = csv_rows(jobs, ordered_metrics(jobs, list(headlines.values())), intervals=True)
    summary.files["csv"] = _write_csv(out_dir / SUMMARY_CSV, columns, rows)
    ag_rows = [r for a in agreements for r in a.rows()]
    summary.files["agreement"] = _write_csv(out_dir / AGREEMENT_CSV, ["model", "kind", "sparsity", "scorer_a", "scorer_b",
                                                                      "value", "std", "n"], ag_rows)
    if plots and jobs:
        summary.plots = write_plots(summary, out_dir / PLOTS_DIR)
    summary.files["markdown"] = out_dir / SUMMARY_MD
    _write_text(out_dir / SUMMARY_MD, summary.full_markdown())
    return summary


def _write_text(path: Path, text: str) -> Path:
    from topovlm.storage import atomic_write_text

    return atomic_write_text(path, text)


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> Path:
    from topovlm.storage import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for r in rows:
                w.writerow({k: ("" if v is None else v) for k, v in r.items()})

    return atomic_write(path, write)


# --------------------------------------------------------------------------- plots

def write_plots(summary: Summary, plot_dir: Path) -> list[Path]:
    """All PNGs; a plot that fails is logged and skipped, never the whole summary."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    jobs = summary.jobs
    tasks = [(plot_metric_vs_sparsity, (summary, model, task, plot_dir)) for model, task in _groups(jobs)]
    for model in sorted({j["model"] for j in jobs}):
        tasks.append((plot_removed_layers, (jobs, model, plot_dir)))
        tasks.append((plot_score_profiles, (jobs, model, plot_dir)))
    tasks += [(plot_agreement, (a, plot_dir)) for a in summary.agreements]
    for model, task in _groups(jobs):
        tasks += [(fn, (summary, model, task, plot_dir)) for fn in
                  (plot_comparison, plot_agreement_with_unpruned, plot_regimes, plot_pareto, plot_calibration_variance)]
    for fn, args in tasks:
        try:
            path = fn(*args)
        except Exception as err:  # noqa: BLE001 - one broken plot must not lose the summary
            log.warning("plot %s failed: %s", fn.__name__, err)
            continue
        if path is not None:
            written.append(path)
    return written


def _save(fig: Any, path: Path) -> Path:
    """The PNG, and a PDF (vector, for papers) next to it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)
    return path


def _grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.6, 3.4), **kw: Any) -> tuple[Any, list[Any]]:
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False,
                             layout="constrained", **kw)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def plot_metric_vs_sparsity(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """One panel per metric (headline first, then per domain / category), one line per scorer;
    every line starts at the unpruned reference. Error bars: the 95% interval over samples
    where the jobs wrote samples.jsonl (else the std over seeds); a hollow marker is a scorer
    significantly worse than the best at that sparsity (paired test, Holm), a filled one the
    best or indistinguishable from it."""
    tables = [t for t in summary.tables if (t.model, t.task) == (model, task)]
    if not tables:
        return None
    fig, axes = _grid(len(tables))
    any_ci = False
    for ax, t in zip(axes, tables):
        labels = sorted(t.cells)
        for k, lab in enumerate(labels):
            row = t.cells[lab]
            xs = sorted(row)
            ys = [row[s].mean for s in xs]
            ivs = [t.intervals.get(lab, {}).get(s) for s in xs]
            if all(iv is not None and iv.method != "none" for iv in ivs) and ivs:
                any_ci = True
                lo = [max(0.0, y - iv.low) for y, iv in zip(ys, ivs)]
                hi = [max(0.0, iv.high - y) for y, iv in zip(ys, ivs)]
            else:
                lo = hi = [row[s].std or 0.0 for s in xs]
            worse = [t.verdicts.get(lab, {}).get(s) == VERDICT_WORSE for s in xs]
            if t.reference is not None and 0.0 not in row:
                riv = t.reference_interval
                xs, ys = [0.0] + xs, [t.reference.mean] + ys
                lo = [t.reference.mean - riv.low if riv else 0.0] + lo
                hi = [riv.high - t.reference.mean if riv else 0.0] + hi
                worse = [False] + worse
            off = (k - (len(labels) - 1) / 2) * 0.004  # keeps overlapping error bars apart
            xo = [x + (off if x else 0.0) for x in xs]
            line = ax.errorbar(xo, ys, yerr=[lo, hi] if any(lo) or any(hi) else None, marker=None, capsize=2,
                               label=lab, linewidth=1.2)
            colour = line[0].get_color()
            ax.scatter([x for x, w in zip(xo, worse) if not w], [y for y, w in zip(ys, worse) if not w],
                       color=colour, zorder=3, s=22)
            ax.scatter([x for x, w in zip(xo, worse) if w], [y for y, w in zip(ys, worse) if w],
                       facecolors="white", edgecolors=colour, zorder=3, s=22)
        if t.reference is not None:
            ax.axhline(t.reference.mean, color="grey", linestyle="--", linewidth=1, label=REFERENCE)
        ax.set_title(f"{t.metric} ({'lower' if t.lower_is_better else 'higher'} is better)", fontsize=10)
        ax.set_xlabel("sparsity (fraction of layers removed)")
        ax.set_ylabel(t.metric)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    note = ("error bars: 95% interval over samples; hollow: significantly worse than the best (paired, Holm)"
            if any_ci else "error bars: std over seeds")
    fig.suptitle(f"{model} · {task} ({note})")
    return _save(fig, plot_dir / f"metric_vs_sparsity__{_slug(model)}__{_slug(task)}.png")


def _removed_fraction(jobs: list[dict[str, Any]], model: str) -> tuple[list[float], list[str], int, dict]:
    sets: dict[float, dict[str, dict[tuple, list[int]]]] = defaultdict(lambda: defaultdict(dict))
    num_layers = 0
    for j in jobs:
        if j["model"] == model and float(j["sparsity"]) > 0:
            sets[float(j["sparsity"])][j["label"]].setdefault(j["_seed"], list(j.get("removed_layers") or []))
            num_layers = max(num_layers, int(j.get("num_layers") or 0))
    labels = sorted({lab for by in sets.values() for lab in by})
    return sorted(sets), labels, num_layers, sets


def plot_removed_layers(jobs: list[dict[str, Any]], model: str, plot_dir: Path) -> Path | None:
    """Layer x scorer map at each sparsity: the share of seeds that remove each layer."""
    import numpy as np

    sps, labels, num_layers, sets = _removed_fraction(jobs, model)
    if not sps or not num_layers:
        return None
    fig, axes = _grid(len(sps), ncols=1, size=(max(6.0, 0.32 * num_layers + 2.5), 0.45 * len(labels) + 1.4))
    for ax, s in zip(axes, sps):
        grid = np.full((len(labels), num_layers), np.nan)
        for i, lab in enumerate(labels):
            by_seed = sets[s].get(lab)
            if not by_seed:
                continue
            grid[i] = 0.0
            for layers in by_seed.values():
                for layer in layers:
                    if 0 <= layer < num_layers:
                        grid[i, layer] += 1.0 / len(by_seed)
        im = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(num_layers), [str(i) for i in range(num_layers)], fontsize=7)
        ax.set_xlabel("decoder layer")
        ax.set_title(f"removed layers at sparsity {s:g}", fontsize=10)
    fig.colorbar(im, ax=axes, shrink=0.8, label="share of seeds removing the layer")
    fig.suptitle(model)
    return _save(fig, plot_dir / f"removed_layers__{_slug(model)}.png")


def _removal_direction(job: dict[str, Any]) -> str:
    """Which end of the native score a scorer removes first (its redundancy's order)."""
    from scipy.stats import spearmanr

    pairs = [(a, b) for a, b in zip(job.get("scores") or [], job.get("redundancy") or [])
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return ""
    rho = spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic
    return "" if rho is None or not math.isfinite(rho) else ("high score removed first" if rho > 0
                                                             else "low score removed first")


def plot_score_profiles(jobs: list[dict[str, Any]], model: str, plot_dir: Path) -> Path | None:
    """Every scorer's per-layer score (mean over seeds, band = min..max), which end is removed
    first, and the layers removed at each sparsity (first seed) marked on the curve."""
    import matplotlib.pyplot as plt
    import numpy as np

    members = [j for j in jobs if j["model"] == model]
    profiles = _first_per_seed(members, "scores")
    if not profiles:
        return None
    labels = sorted(profiles)
    sparsities = sorted({j["sparsity"] for j in members if j.get("removed_layers")})
    markers = dict(zip(sparsities, "vs^Dpo*hX"))
    colours = dict(zip(sparsities, plt.get_cmap("autumn")(np.linspace(0.0, 0.8, max(1, len(sparsities))))))
    fig, axes = _grid(len(labels), size=(4.6, 3.2))
    for ax, lab in zip(axes, labels):
        arr = np.array([[np.nan if v is None else float(v) for v in p] for p in profiles[lab].values()], dtype=float)
        x = np.arange(arr.shape[1])
        with warnings.catch_warnings():  # a layer without a score (e.g. a protected one) stays a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(arr, axis=0)
            ax.plot(x, mean, marker=".", color="tab:blue", zorder=2)
            if arr.shape[0] > 1:
                ax.fill_between(x, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), alpha=0.25, zorder=1)
        own = [j for j in members if j["label"] == lab]
        seen: set[float] = set()
        for j in sorted(own, key=lambda j: (j["sparsity"], repr(j["_seed"]))):
            if j["sparsity"] in seen or not j.get("removed_layers"):
                continue
            seen.add(j["sparsity"])
            removed = [i for i in j["removed_layers"] if i < len(mean)]
            # offset each sparsity's markers so nested removal sets stay visible
            offset = (sparsities.index(j["sparsity"]) + 1) * 0.04 * (np.nanmax(mean) - np.nanmin(mean) or 1.0)
            ax.scatter(removed, mean[removed] + offset, marker=markers.get(j["sparsity"], "o"), s=22,
                       color=colours.get(j["sparsity"]), edgecolor="black", linewidth=0.4, zorder=3,
                       label=f"removed at {j['sparsity']:g}")
        direction = _removal_direction(own[0]) if own else ""
        ax.set_title(lab + (f" ({arr.shape[0]} seeds)" if arr.shape[0] > 1 else "")
                     + (f"\n{direction}" if direction else ""), fontsize=9)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes for h in ax.collections if h.get_label().startswith("removed")}
    if handles:
        fig.legend([handles[k] for k in sorted(handles)], sorted(handles), loc="outside lower center",
                   ncols=len(handles), fontsize=8)
    fig.suptitle(f"{model}: score per layer (markers: layers removed at each sparsity)")
    return _save(fig, plot_dir / f"score_profiles__{_slug(model)}.png")


def plot_agreement(ag: Agreement, plot_dir: Path) -> Path | None:
    """Heat maps with colour bars: Kendall tau of the redundancy rankings, Jaccard of the
    removed sets per sparsity; each cell's value in black or white, whichever reads."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import Normalize

    if len(ag.labels) < 2:
        return None
    panels = [("Kendall tau of layer rankings", ag.tau_matrix(), -1.0, "RdBu_r")]
    panels += [(f"Jaccard of removed sets, sparsity {s:g}", ag.overlap_matrix(s), 0.0, "viridis")
               for s in sorted(ag.overlap)]
    n = len(ag.labels)
    side = 0.5 * n + 2.2
    fig, axes = _grid(len(panels), ncols=2, size=(side + 1.8, side))
    for ax, (title, mat, vmin, cmap_name) in zip(axes, panels):
        arr = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
        cmap, norm = plt.get_cmap(cmap_name), Normalize(vmin=vmin, vmax=1.0)
        im = ax.imshow(arr, cmap=cmap, norm=norm)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        ax.set_xticks(range(n), ag.labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), ag.labels, fontsize=8)
        for i in range(n):
            for k in range(n):
                if not np.isnan(arr[i, k]):
                    r, g, b, _ = cmap(norm(arr[i, k]))
                    colour = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                    ax.text(k, i, f"{arr[i, k]:.2f}", ha="center", va="center", fontsize=7, color=colour)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{ag.model}: ranking agreement")
    return _save(fig, plot_dir / f"agreement__{_slug(ag.model)}.png")


# --------------------------------------------------------------------------- statistics plots

_VERDICT_COLOURS = {VERDICT_BEST: "tab:green", VERDICT_SAME: "tab:blue", VERDICT_WORSE: "tab:red", VERDICT_NA: "grey"}


def _headline_comparisons(summary: Summary, model: str, task: str) -> list[Comparison]:
    metric = summary.headlines.get((model, task))
    return summary.stats.of(model, task, metric) if summary.stats is not None and metric else []


def plot_comparison(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Forest plot: each scorer's difference to the best at each sparsity, with its 95% paired
    interval, coloured by the Holm-corrected verdict."""
    rows = [c for c in _headline_comparisons(summary, model, task)]
    if not any(c.test is not None for c in rows):
        return None
    sps = sorted({c.sparsity for c in rows})
    labels = sorted({c.label for c in rows})
    fig, axes = _grid(len(sps), ncols=len(sps), size=(4.2, 0.42 * len(labels) + 1.6), sharey=True)
    for ax, s in zip(axes, sps):
        for i, lab in enumerate(labels):
            c = next((c for c in rows if c.sparsity == s and c.label == lab), None)
            if c is None:
                continue
            colour = _VERDICT_COLOURS[c.verdict]
            if c.test is not None:
                ax.errorbar([c.test.diff], [i], xerr=[[c.test.diff - c.test.diff_low], [c.test.diff_high - c.test.diff]],
                            fmt="o", color=colour, capsize=3)
            elif c.verdict == VERDICT_BEST:
                ax.plot([0.0], [i], marker="*", markersize=12, color=colour)
        ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"sparsity {s:g}\nbest: {next((c.best for c in rows if c.sparsity == s), '')}", fontsize=8)
        ax.set_xlabel(f"{rows[0].metric}: scorer − best")
        ax.grid(alpha=0.3)
    import matplotlib.lines as mlines

    handles = [mlines.Line2D([], [], color=col, marker="*" if v == VERDICT_BEST else "o", linestyle="", label=v)
               for v, col in _VERDICT_COLOURS.items() if v != VERDICT_NA]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8)
    fig.suptitle(f"{model} · {task}: paired comparison with the best scorer (95% paired bootstrap; "
                 f"verdict: McNemar / sign-flip, Holm)", fontsize=10)
    return _save(fig, plot_dir / f"comparison__{_slug(model)}__{_slug(task)}.png")


def plot_agreement_with_unpruned(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Share of samples whose answer did not change against the unpruned model, per scorer."""
    rows = [c for c in _headline_comparisons(summary, model, task) if c.agreement is not None]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    labels = sorted({c.label for c in rows})
    for k, lab in enumerate(labels):
        cs = sorted((c for c in rows if c.label == lab), key=lambda c: c.sparsity)
        off = (k - (len(labels) - 1) / 2) * 0.003
        xs = [0.0] + [c.sparsity + off for c in cs]
        ys = [1.0] + [c.agreement.value for c in cs]
        lo = [0.0] + [c.agreement.value - c.agreement.low for c in cs]
        hi = [0.0] + [c.agreement.high - c.agreement.value for c in cs]
        ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=lab)
    ax.set_xlabel("sparsity (fraction of layers removed)")
    ax.set_ylabel("agreement with the unpruned model")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{model} · {task}: answers unchanged by pruning (95% interval)", fontsize=10)
    return _save(fig, plot_dir / f"agreement_with_unpruned__{_slug(model)}__{_slug(task)}.png")


def plot_regimes(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Spread across scorers (best − worst) and how many are indistinguishable from the best."""
    regs = (summary.stats.regimes.get((model, task)) if summary.stats else None) or []
    if not regs:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), layout="constrained")
    xs = [r.sparsity for r in regs]
    width = 0.6 * (min(b - a for a, b in zip(xs, xs[1:])) if len(xs) > 1 else 0.1)
    ax2 = ax.twinx()
    ax2.bar(xs, [r.n_indistinguishable for r in regs], width=width, color="tab:blue", alpha=0.25,
            label="indistinguishable from best")
    ax2.set_ylim(0, max(r.n_scorers for r in regs) + 0.5)
    ax2.set_ylabel("scorers indistinguishable from the best (of %d)" % max(r.n_scorers for r in regs))
    ax.plot(xs, [r.spread for r in regs], marker="o", color="tab:red", label="best − worst")
    for r in regs:
        ax.annotate(r.label, (r.sparsity, r.spread), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_ylim(0, max(r.spread for r in regs) * 1.3 + 1e-9)
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    metric = summary.headlines.get((model, task))
    ax.set_xlabel("sparsity (fraction of layers removed)")
    ax.set_ylabel(f"spread of {metric} across scorers")
    ax.set_xticks(xs)
    ax.grid(alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
    ax.set_title(f"{model} · {task}: regimes", fontsize=10)
    return _save(fig, plot_dir / f"regimes__{_slug(model)}__{_slug(task)}.png")


def plot_pareto(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Headline metric (95% interval) against measured prefill and decode speedup; the ideal
    speedup of each sparsity as a dotted line, the Pareto front, flagged speedups hollow."""
    from topovlm import stats

    rows = (summary.stats.cost.get((model, task)) if summary.stats else None) or []
    rows = [r for r in rows if r.quality is not None]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    metric = summary.headlines.get((model, task))
    lower = lower_is_better(metric or "")
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.6), layout="constrained", sharey=True)
    labels = sorted({r.label for r in rows})
    colours = {lab: plt.get_cmap("tab10")(i % 10) for i, lab in enumerate(labels)}
    markers = {s: m for s, m in zip(sorted({r.sparsity for r in rows}), "osD^v<>p")}
    for ax, kind in zip(axes, ("prefill", "decode")):
        pts = []
        for r in rows:
            st = r.prefill if kind == "prefill" else r.decode
            if st is None:
                continue
            q = r.quality
            flag = stats.speedup_flag(st.mean, r.ideal)
            yerr = None
            if q.interval is not None and q.interval.method != "none":
                yerr = [[max(0.0, q.mean - q.interval.low)], [max(0.0, q.interval.high - q.mean)]]
            ax.errorbar([st.mean], [q.mean], xerr=[st.std] if st.std else None, yerr=yerr, fmt=markers[r.sparsity],
                        color=colours[r.label], mfc="none" if flag else colours[r.label], capsize=2, markersize=7)
            pts.append((st.mean, q.mean))
        for s, ideal in sorted({(r.sparsity, r.ideal) for r in rows if r.ideal}):
            ax.axvline(ideal, color="grey", linestyle=":", linewidth=1)
            ax.text(ideal, 1.0, f" ideal {s:g}", rotation=90, va="top", ha="right", fontsize=7, color="grey",
                    transform=ax.get_xaxis_transform())
        ax.axvline(1.0, color="black", linewidth=0.8)
        front = stats.pareto_front(pts, lower_is_better=lower)
        if len(front) > 1:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color="black", alpha=0.4, linewidth=1,
                    label="Pareto front")
        ref = next((t.reference for t in summary.tables if (t.model, t.task, t.metric) == (model, task, metric)), None)
        if ref is not None:
            ax.scatter([1.0], [ref.mean], marker="*", s=120, color="black", zorder=5, label=REFERENCE)
        ax.set_xlabel(f"measured {kind} speedup (× unpruned)")
        ax.grid(alpha=0.3)
        ax.set_title(f"{kind}", fontsize=10)
    axes[0].set_ylabel(metric)
    import matplotlib.lines as mlines

    handles = [mlines.Line2D([], [], color=colours[lab], marker="o", linestyle="", label=lab) for lab in labels]
    handles += [mlines.Line2D([], [], color="black", marker=m, linestyle="", label=f"sparsity {s:g}")
                for s, m in markers.items()]
    handles += [mlines.Line2D([], [], color="black", marker="o", mfc="none", linestyle="",
                              label="hollow: speedup below 1 or far from ideal")]
    handles += axes[0].get_legend_handles_labels()[0]
    fig.legend(handles=handles, loc="outside right center", fontsize=8)
    fig.suptitle(f"{model} · {task}: quality against measured speedup (dotted: ideal L / kept)", fontsize=10)
    return _save(fig, plot_dir / f"pareto__{_slug(model)}__{_slug(task)}.png")


def plot_calibration_variance(summary: Summary, model: str, task: str, plot_dir: Path) -> Path | None:
    """Per sparsity and scorer: std over calibration draws next to the sampling half-width."""
    rows = (summary.stats.draws.get((model, task)) if summary.stats else None) or []
    rows = [r for r in rows if r.variance.n_draws > 1]
    if not rows:
        return None
    import numpy as np

    sps = sorted({r.sparsity for r in rows})
    labels = sorted({r.label for r in rows})
    fig, axes = _grid(len(sps), ncols=len(sps), size=(4.6, 0.38 * len(labels) + 2.0), sharey=True, sharex=True)
    y = np.arange(len(labels))
    for ax, s in zip(axes, sps):
        by = {r.label: r for r in rows if r.sparsity == s}
        std = [by[lab].variance.std or 0.0 if lab in by else np.nan for lab in labels]
        samp = [by[lab].variance.sampling_half_width or np.nan if lab in by else np.nan for lab in labels]
        jac = [by[lab].stability.mean_jaccard if lab in by else None for lab in labels]
        ax.barh(y - 0.2, std, height=0.4, color="tab:orange", label="std over calibration draws")
        ax.barh(y + 0.2, samp, height=0.4, color="tab:blue", alpha=0.6, label="95% sampling half-width")
        for i, j in enumerate(jac):
            if j is not None:
                ax.text(1.01, i, f"J={j:.2f}", fontsize=7, va="center", ha="left", transform=ax.get_yaxis_transform())
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title(f"sparsity {s:g}", fontsize=9)
        ax.set_xlabel(rows[0].metric)
        ax.grid(alpha=0.3, axis="x")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    fig.suptitle(f"{model} · {task}: calibration variance vs sampling interval "
                 f"(J = mean pairwise Jaccard of removed layers)", fontsize=10)
    return _save(fig, plot_dir / f"calibration_variance__{_slug(model)}__{_slug(task)}.png")
