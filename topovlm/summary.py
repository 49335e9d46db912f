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

``python -m topovlm.summary <sweep_dir> [...]`` or ``topovlm summarize <sweep_dir> [...]``
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
from typing import Any, Iterable, Sequence

from topovlm.results import FAILED_FILE, RESULTS_FILE

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
        head = (f"#### {self.model} · {self.task} · {self.metric}\n\n"
                f"{direction} is better; **bold** = best scorer at that sparsity"
                + ("; mean ± std over seeds (n = seeds)" if seeds else "") + "\n\n")
        cols = [f"{s:.0%}" if round(s * 100, 6) == round(s * 100) else f"{s:.1%}" for s in self.sparsities]
        lines = ["| scorer | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        ref = self.reference.fmt() if self.reference else "—"
        lines.append(f"| *{REFERENCE}* | " + " | ".join([ref] * len(cols)) + " |")
        best = {s: set(self.best(s)) for s in self.sparsities}
        for lab in sorted(self.cells):
            row = self.cells[lab]
            vals = []
            for s in self.sparsities:
                st = row.get(s)
                cell = st.fmt() if st else "—"
                vals.append(f"**{cell}**" if st and lab in best[s] else cell)
            lines.append(f"| {lab} | " + " | ".join(vals) + " |")
        note = ""
        if self.reference is None:
            note = ("\n\n_No unpruned reference: this sweep has no sparsity=0 job and its jobs recorded "
                    "no `reference_metrics` (add `sparsity=0,...` to the sweep to get one)._")
        return head + "\n".join(lines) + note


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


# --------------------------------------------------------------------------- the summary

CSV_FIRST = ["model", "task", "scorer", "scorer_name", "sparsity", "seed", "calibration_seed", "num_layers",
             "num_layers_kept", "removed_layers", "selection_policy"]
CSV_LAST = ["time_total_s", "resumed_from", "job_key", "out_dir"]


def csv_rows(jobs: list[dict[str, Any]], metrics: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    flat_eff = [_flatten(j.get("efficiency") or {}) for j in jobs]
    eff = sorted({k for e in flat_eff for k, v in e.items() if v is None or isinstance(v, (int, float, str))})
    columns = CSV_FIRST + metrics + [f"efficiency/{k}" for k in eff] + CSV_LAST
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

    columns, rows = csv_rows(jobs, ordered_metrics(jobs, list(headlines.values())))
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
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110)
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
    every line starts at the unpruned reference, error bars are the std over seeds."""
    tables = [t for t in summary.tables if (t.model, t.task) == (model, task)]
    if not tables:
        return None
    fig, axes = _grid(len(tables))
    for ax, t in zip(axes, tables):
        for lab in sorted(t.cells):
            row = t.cells[lab]
            xs = sorted(row)
            ys = [row[s].mean for s in xs]
            es = [row[s].std or 0.0 for s in xs]
            if t.reference is not None and 0.0 not in row:
                xs, ys, es = [0.0] + xs, [t.reference.mean] + ys, [t.reference.std or 0.0] + es
            ax.errorbar(xs, ys, yerr=es if any(es) else None, marker="o", capsize=3, label=lab)
        if t.reference is not None:
            ax.axhline(t.reference.mean, color="grey", linestyle="--", linewidth=1, label=REFERENCE)
        ax.set_title(f"{t.metric} ({'lower' if t.lower_is_better else 'higher'} is better)", fontsize=10)
        ax.set_xlabel("sparsity (fraction of layers removed)")
        ax.set_ylabel(t.metric)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{model} · {task}")
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


def plot_score_profiles(jobs: list[dict[str, Any]], model: str, plot_dir: Path) -> Path | None:
    """Every scorer's per-layer score (mean over seeds, band = min..max)."""
    import numpy as np

    members = [j for j in jobs if j["model"] == model]
    profiles = _first_per_seed(members, "scores")
    if not profiles:
        return None
    labels = sorted(profiles)
    fig, axes = _grid(len(labels), size=(4.6, 3.0))
    for ax, lab in zip(axes, labels):
        arr = np.array([[np.nan if v is None else float(v) for v in p] for p in profiles[lab].values()], dtype=float)
        x = np.arange(arr.shape[1])
        with warnings.catch_warnings():  # a layer without a score (e.g. a protected one) stays a gap
            warnings.simplefilter("ignore", RuntimeWarning)
            ax.plot(x, np.nanmean(arr, axis=0), marker=".")
            if arr.shape[0] > 1:
                ax.fill_between(x, np.nanmin(arr, axis=0), np.nanmax(arr, axis=0), alpha=0.25)
        ax.set_title(lab + (f" ({arr.shape[0]} seeds)" if arr.shape[0] > 1 else ""), fontsize=10)
        ax.set_xlabel("decoder layer")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{model}: score per layer")
    return _save(fig, plot_dir / f"score_profiles__{_slug(model)}.png")


def plot_agreement(ag: Agreement, plot_dir: Path) -> Path | None:
    """Heat maps: Kendall tau of the redundancy rankings, Jaccard of the removed sets per sparsity."""
    import numpy as np

    if len(ag.labels) < 2:
        return None
    panels = [("Kendall tau (redundancy)", ag.tau_matrix(), -1.0, "RdBu_r")]
    panels += [(f"Jaccard of removed sets, sparsity {s:g}", ag.overlap_matrix(s), 0.0, "viridis")
               for s in sorted(ag.overlap)]
    n = len(ag.labels)
    fig, axes = _grid(len(panels), size=(1.0 * n + 2.8, 0.8 * n + 1.8))
    for ax, (title, mat, vmin, cmap) in zip(axes, panels):
        arr = np.array([[np.nan if v is None else v for v in row] for row in mat], dtype=float)
        ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=1.0)
        ax.set_xticks(range(n), ag.labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), ag.labels, fontsize=8)
        for i in range(n):
            for k in range(n):
                if not np.isnan(arr[i, k]):
                    ax.text(k, i, f"{arr[i, k]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"{ag.model}: ranking agreement")
    return _save(fig, plot_dir / f"agreement__{_slug(ag.model)}.png")


def main(argv: Sequence[str] | None = None) -> int:
    from topovlm.cli import main as cli_main

    return cli_main(["summarize", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
    raise SystemExit(main())
