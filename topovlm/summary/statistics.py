"""Per-sample statistics: intervals, verdicts of every scorer against the others, agreement with
the unpruned model, calibration-draw variance, layer-removal stability, regimes and cost
(the tests themselves: :mod:`topovlm.stats`), from the jobs' ``samples.jsonl``.

The unit of inference is the calibration draw where a scorer's results vary between draws
(see docs/statistics.md). The headline metric's table is the confirmatory family (every pair
of scorers at one sparsity, Holm over them); every other metric's table is exploratory."""
from __future__ import annotations

import json
import logging
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from topovlm.samples import REFERENCE_FIELDS
from topovlm.summary.load import SEED_KEYS, SummaryJob, is_reference
from topovlm.stats import (VERDICT_BEST, VERDICT_EQUIVALENT, VERDICT_INCONCLUSIVE, VERDICT_NA, VERDICT_SAME,
                           VERDICT_WORSE)
from topovlm.summary.tables import MetricTable, Stat, fmt_value, is_yardstick, write_csv

if TYPE_CHECKING:
    import numpy as np

    from topovlm.stats import BestSet, Contrast, DrawVariance, Interval, PairedTest, Regime, RemovalStability
    from topovlm.summary.build import Summary

log = logging.getLogger("topovlm.summary")

COMPARISON_CSV = "comparison.csv"
CALIBRATION_CSV = "calibration_variance.csv"
REGIMES_CSV = "regimes.csv"
EFFICIENCY_CSV = "efficiency.csv"
#: the verdict column of the oracle (a measurement on the development split, not a prediction)
YARDSTICK_TEXT = "yardstick (oracle): not tested"


def job_samples(job: SummaryJob) -> list[dict[str, Any]] | None:
    """The job's ``samples.jsonl`` (next to its results.json, or in the run it was resumed from)."""
    from topovlm.samples import SAMPLES_FILE, read_jsonl

    if job.records_read:
        return job.records
    records = None
    for d in (Path(job.path).parent if job.path else None, job.resumed_from, job.out_dir):
        if d and (Path(d) / SAMPLES_FILE).is_file():
            try:
                records = read_jsonl(Path(d) / SAMPLES_FILE)
            except (OSError, json.JSONDecodeError) as err:
                log.warning("unreadable samples in %s: %s", d, err)
            break
    job.records, job.records_read = records, True
    return records


def _reference_view(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A pruned job's records seen as the unpruned model's (its ``reference_*`` fields)."""
    out = []
    for r in records:
        if r.get("reference_correct") is None and r.get("reference_loss") is None:
            continue
        out.append({**r, "prediction": r.get("reference_prediction"),
                    **{f: r.get(f"reference_{f}") for f in REFERENCE_FIELDS}, "agree": True})
    return out


# the per-sample 0/1 record field behind each accuracy metric (and its /<domain or category> parts):
# exact match of the generated answer, and the likeliest candidate of the category's answer set
CORRECTNESS_FIELD = {"accuracy": "correct", "accuracy_mc": "correct_mc"}


def metric_samples(records: list[dict[str, Any]] | None, metric: str) -> tuple[str | None, dict[str, Any]]:
    """``(kind, key -> per-sample value)`` for ``metric``: ``proportion`` (0/1 correct, for
    ``accuracy`` / ``accuracy_mc`` and their ``/<domain or category>`` parts), ``ratio`` ((nll_sum, num_tokens) for
    ``perplexity`` / ``nll``), ``mean`` (a per-sample value the evaluator logged under
    ``metrics``), or ``(None, {})`` when the records do not resolve the metric."""
    if not records:
        return None, {}
    base, _, group = metric.partition("/")
    if base in CORRECTNESS_FIELD:
        field = CORRECTNESS_FIELD[base]
        vals = {r["key"]: float(bool(r[field])) for r in records if r.get(field) is not None
                and (not group or group in (r.get("domain"), r.get("category")))}
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


def _common_samples(records_per_draw: list[list[dict[str, Any]] | None], metric: str
                    ) -> tuple[list[tuple[str | None, dict[str, Any]]], str, list[str]] | None:
    """Each draw's (kind, key -> value), the cell's kind and the questions every draw has; None
    when a draw does not resolve the metric or no question is shared."""
    per = [metric_samples(r, metric) for r in records_per_draw]
    if not per or any(k is None for k, _ in per):
        return None
    kind = "mean" if len({k for k, _ in per}) > 1 else per[0][0]
    keys = set(per[0][1])
    for _, v in per[1:]:
        keys &= set(v)
    return (per, kind, sorted(keys)) if keys else None


def cell_samples(records_per_draw: list[list[dict[str, Any]] | None], metric: str) -> CellSamples | None:
    common = _common_samples(records_per_draw, metric)
    if common is None:
        return None
    per, kind, keys = common
    if kind == "ratio":
        import numpy as np

        values = {k: tuple(np.mean([v[k] for _, v in per], axis=0)) for k in keys}
    else:
        values = {k: statistics.fmean(v[k] for _, v in per) for k in keys}
    return CellSamples(kind, values, len(per))


@dataclass
class CellDraws:
    """A cell's per-question values in each calibration draw, on the questions every draw has:
    ``values`` (draws x questions; the per-sample loss for perplexity / nll), and each draw's
    value of the metric itself (``draw_values``: the perplexity for perplexity)."""
    kind: str
    keys: list[str]
    values: "np.ndarray"
    draw_values: list[float]


def cell_draws(records_per_draw: list[list[dict[str, Any]] | None], metric: str) -> CellDraws | None:
    import numpy as np

    common = _common_samples(records_per_draw, metric)
    if common is None:
        return None
    per, kind, keys = common
    rows, draw_values = [], []
    for _, v in per:
        if kind == "ratio":
            nll = np.array([v[k][0] for k in keys], dtype=float)
            tok = np.array([v[k][1] for k in keys], dtype=float)
            rows.append(np.divide(nll, tok, out=np.full_like(nll, np.nan), where=tok != 0))
            ratio = nll.sum() / tok.sum() if tok.sum() else float("nan")
            draw_values.append(float(np.exp(ratio)) if metric == "perplexity" else float(ratio))
        else:
            rows.append(np.array([float(v[k]) for k in keys]))
            draw_values.append(float(rows[-1].mean()))
    return CellDraws(kind, keys, np.vstack(rows), draw_values)


def _bounds(kind: str | None) -> tuple[float, float] | None:
    return (0.0, 1.0) if kind == "proportion" else None


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
    """One cell of a metric table against the other scorers at its sparsity."""
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
    test: "Contrast | None" = None          # this scorer minus the best
    p_holm: float | None = None             # of the pair with the best, Holm over the family
    verdict: str = VERDICT_NA               # VERDICT_* (what the plots and marks key on)
    agreement: "Interval | None" = None
    higher_is_better: bool = True  # the metric's direction (its table's)
    verdict_text: str = VERDICT_NA          # as printed: "inconclusive: 3 draws", "equivalent (±0.05)", ...
    draw_status: str | None = None          # stats.DRAW_*
    prediction: "Interval | None" = None    # one new draw (scorers whose results vary)
    p_best: float | None = None             # two-stage bootstrap share of resamples it is the best in
    worse_than: tuple[str, ...] = ()
    draws_needed: int | None = None
    tost_p_holm: float | None = None
    margin: float | None = None
    family_size: int = 0
    confirmatory: bool = False

    @property
    def diff_interval(self) -> tuple[float, float]:
        """Δ to the best, Bonferroni-simultaneous over the family: the adjusted verdict's interval."""
        if self.test is None:
            return float("nan"), float("nan")
        return self.test.interval(m=self.family_size)

    def row(self) -> dict[str, Any]:
        iv, t, ag, pi = self.interval, self.test, self.agreement, self.prediction
        adj = self.diff_interval
        return {"model": self.model, "task": self.task, "metric": self.metric, "scorer": self.label,
                "sparsity": self.sparsity, "family": "confirmatory" if self.confirmatory else "exploratory",
                "family_size": self.family_size, "n_draws": self.n_draws, "draw_status": self.draw_status,
                "mean": self.mean, "std_over_draws": self.std,
                "ci_low": iv.low if iv else None, "ci_high": iv.high if iv else None, "ci_method": iv.method if iv else None,
                "new_draw_pi_low": pi.low if pi else None, "new_draw_pi_high": pi.high if pi else None,
                "p_best": self.p_best, "best": self.best, "test": t.test if t else None, "unit": t.unit if t else None,
                "diff_vs_best": t.diff if t else None,
                "diff_ci_low": t.diff_low if t else None, "diff_ci_high": t.diff_high if t else None,
                "diff_simultaneous_ci_low": adj[0] if t else None, "diff_simultaneous_ci_high": adj[1] if t else None,
                "discordant_scorer_only": t.a_only if t else None, "discordant_best_only": t.b_only if t else None,
                "p_value": t.p_value if t and t.test != "none" else None, "p_at_mc_floor": t.at_floor if t else None,
                "p_holm": self.p_holm, "tost_margin": self.margin, "tost_p_holm": self.tost_p_holm,
                "worse_than": " ".join(self.worse_than), "draws_needed": self.draws_needed, "verdict": self.verdict_text,
                "agreement_with_unpruned": ag.value if ag else None,
                "agreement_ci_low": ag.low if ag else None, "agreement_ci_high": ag.high if ag else None}


def _cell_jobs(jobs: list[SummaryJob], model: str, task: str) -> dict[str, dict[float, list[SummaryJob]]]:
    """label -> sparsity -> the cell's jobs, one per draw (seed tuple)."""
    out: dict[str, dict[float, dict[tuple, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    for j in jobs:
        if j.model == model and j.task == task and not is_reference(j):
            out[j.label][float(j.sparsity)].setdefault(j.draw, j)
    return {lab: {s: [by[k] for k in sorted(by, key=repr)] for s, by in row.items()} for lab, row in out.items()}


def _reference_records(jobs: list[SummaryJob], model: str, task: str) -> list[dict[str, Any]] | None:
    members = [j for j in jobs if j.model == model and j.task == task]
    for j in sorted(members, key=lambda j: repr(j.draw)):
        if is_reference(j) and job_samples(j):
            return job_samples(j)
    for j in sorted(members, key=lambda j: repr(j.draw)):
        recs = job_samples(j)
        if recs:
            view = _reference_view(recs)
            if view:
                return view
    return None


def _stderr_interval(cell: list[SummaryJob], metric: str) -> "Interval | None":
    """lmms-eval's reported stderr (recorded in the protocol), for a cell of one job."""
    from topovlm import stats

    if len(cell) != 1:
        return None
    se = ((cell[0].protocol or {}).get("stderr") or {}).get(metric)
    value = cell[0].metrics.get(metric)
    if isinstance(se, (int, float)) and isinstance(value, (int, float)) and not math.isnan(se):
        return stats.stderr_interval(value, se)
    return None


def _value_interval(cd: CellDraws | None, cs: CellSamples | None, cj: list[SummaryJob],
                    metric: str) -> tuple["Interval | None", "Interval | None", str | None]:
    """``(interval, prediction interval of one new draw, draw status)`` of a cell: over questions
    (Wilson / bootstrap) when its results do not vary over draws; else the t-interval of the
    expected value over draws (the questions' sampling error added) and the prediction interval."""
    from scipy.stats import norm

    from topovlm import stats

    iv = cell_interval(cs, metric) or _stderr_interval(cj, metric)
    if cd is None:
        return iv, None, None
    status = stats.draw_status(cd.values)
    if status != stats.DRAW_VARIES:
        return iv, None, status
    q_se = iv.half_width / float(norm.ppf(0.5 + stats.CONFIDENCE / 2)) if iv and iv.method != "none" else 0.0
    bounds = _bounds(cd.kind)
    return (stats.draw_interval(cd.draw_values, q_se, len(cd.keys), bounds=bounds),
            stats.prediction_interval(cd.draw_values, bounds=bounds), status)


def compare(table: MetricTable, jobs: list[SummaryJob], alpha: float = 0.05, margin: float | None = None,
            confirmatory: bool = False) -> list[Comparison]:
    """Every cell of ``table`` with its 95% interval, its verdict against the other scorers at
    the same sparsity (all pairs, Holm over them: one family per sparsity), P(best) and its
    agreement with the unpruned model. Also fills ``table.intervals`` / ``table.verdicts`` /
    ``table.best_sets`` for the Markdown. ``margin``: the TOST margin of equivalence claims
    (proportions only; default :data:`topovlm.stats.EQUIVALENCE_MARGIN`)."""
    from topovlm import stats

    margin = stats.EQUIVALENCE_MARGIN if margin is None else float(margin)
    cells = _cell_jobs(jobs, table.model, table.task)
    draws: dict[tuple[str, float], CellDraws | None] = {}
    out: list[Comparison] = []
    for lab, row in table.cells.items():
        for s, st in row.items():
            cj = cells.get(lab, {}).get(s, [])
            recs = [job_samples(j) for j in cj]
            cs = cell_samples(recs, table.metric) if cj else None
            cd = cell_draws(recs, table.metric) if cj else None
            draws[(lab, s)] = cd
            iv, pi, status = _value_interval(cd, cs, cj, table.metric)
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
                                  agreement=agree, higher_is_better=table.higher_is_better, draw_status=status,
                                  prediction=pi, confirmatory=confirmatory))
    table.confirmatory, table.margin = confirmatory, None
    for s in table.sparsities:
        best = table.best(s)
        at = [c for c in out if c.sparsity == s]
        for c in at:
            c.best = best[0] if best else ""
            c.verdict = c.verdict_text = VERDICT_BEST if c.label in best else VERDICT_NA
            if is_yardstick(c.label):
                c.verdict_text = YARDSTICK_TEXT
        have = {c.label: draws[(c.label, s)] for c in at
                if draws.get((c.label, s)) is not None and not is_yardstick(c.label)}
        if len(have) < 2:
            continue
        keys = set.intersection(*(set(cd.keys) for cd in have.values()))
        if not keys:
            continue
        keys = sorted(keys)
        series = {lab: cd.values[:, [cd.keys.index(k) for k in keys]] if cd.keys != keys else cd.values
                  for lab, cd in have.items()}
        binary = all(cd.kind == "proportion" for cd in have.values())
        m = margin if binary else None  # a margin in accuracy points means nothing for a loss
        table.margin = m if m is not None else table.margin
        verdicts = stats.compare_all_pairs(series, higher_is_better=table.higher_is_better, binary=binary,
                                           alpha=alpha, margin=m, best=[b for b in best if b in series])
        bs = stats.best_bootstrap(series, higher_is_better=table.higher_is_better, seed=int(round(s * 1000)))
        table.best_sets[s] = bs
        for c in at:
            v = verdicts.get(c.label)
            if v is None:
                continue
            c.verdict, c.verdict_text, c.test, c.p_holm, c.best = v.kind, v.text, v.vs_best, v.p_holm, v.best
            c.worse_than, c.draws_needed, c.tost_p_holm, c.family_size = v.worse_than, v.draws_needed, v.tost_p_holm, v.family_size
            c.margin = m
            c.p_best = bs.p_best.get(c.label) if bs else None
    for c in out:
        table.verdicts.setdefault(c.label, {})[c.sparsity] = c.verdict
    ref = _reference_records(jobs, table.model, table.task)
    if table.reference is not None and ref is not None:
        table.reference_interval = cell_interval(cell_samples([ref], table.metric), table.metric)
    return out


def _fmt_p(p: float | None, at_floor: bool = False) -> str:
    """A p-value; ``at_floor``: it is a Monte Carlo test's floor (or that times Holm's multiplier),
    so the true value is at most this."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "—"
    if at_floor:
        return f"≤ {max(p, 0.001):.3f}" if p >= 0.001 else "< 0.001"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


_TESTS = {"mcnemar_exact": "McNemar exact (questions)", "paired_permutation": "sign-flip (questions)",
          "draw_t": "t over draws", "none": "—"}


def _draws_cell(c: Comparison) -> str:
    from topovlm import stats

    if c.draw_status == stats.DRAW_VARIES:
        return f"{c.n_draws} (vary)"
    if c.draw_status == stats.DRAW_FIXED:
        return f"{c.n_draws} (identical)"
    return str(c.n_draws)


def _verdict_cell(c: Comparison) -> str:
    text = c.verdict_text
    if c.verdict == VERDICT_WORSE and c.worse_than and c.best not in c.worse_than:
        text += " than " + ", ".join(c.worse_than)
    if c.verdict == VERDICT_INCONCLUSIVE and c.draws_needed:
        text += f" (~{c.draws_needed} needed)"
    return f"**{text}**" if c.verdict == VERDICT_BEST else text


def comparison_markdown(rows: list[Comparison]) -> str:
    """The verdict table of one (model, task, metric): every scorer against the others at each sparsity."""
    if not rows:
        return ""
    r0 = rows[0]
    multi = any(c.n_draws > 1 for c in rows)
    varies = any(c.test is not None and c.test.unit == "draws" for c in rows)
    margin = next((c.margin for c in rows if c.margin is not None), None)
    fam = max((c.family_size for c in rows), default=0)
    kind = ("confirmatory family: every pair of scorers at one sparsity, Holm over the pairs" if r0.confirmatory
            else "exploratory: Holm within each sparsity of this table only, nothing across tables")
    lines = [f"#### {r0.model} · {r0.task} · {r0.metric}: comparison of scorers ({kind})\n",
             "value = mean" + (" ± SD over calibration draws" if multi else "")
             + " [95% interval: over questions (Wilson / bootstrap) where the scorer's results are the same in every "
             "draw" + ("; where they vary, the t-interval of the expected value over draws, the questions' sampling "
                       "error added" if varies else "") + "]"
             + ("; new draw = 95% prediction interval of one more calibration draw on these questions" if varies else "")
             + "; P(best) = share of two-stage bootstrap resamples (questions jointly, draws within each scorer) in "
             "which the scorer has the best mean, descriptive"
             + f"; Δ = scorer minus the observed best, 95% simultaneous interval (Bonferroni over the family's "
             f"{'pairs' if fam != 1 else 'pair'}: the adjusted verdict's interval; Holm can reject where it just "
             "reaches 0); test: McNemar exact or the sign-flip test on the questions when neither scorer's results "
             "vary over draws (recorded as `identical`), else the t-test over draw means (draws are the unit); "
             "p, p (Holm): the pair with the best; verdict: **worse** = shown worse than at least one scorer "
             "(Holm over all pairs); "
             + (f"**equivalent (±{margin:g})** = TOST against the best within ±{margin:g} (Holm; TOST's own interval "
                f"is the 90% one, so the 95% Δ interval may reach just past ±{margin:g}); " if margin is not None
                else "no equivalence claims (no margin for this metric); ")
             + "**inconclusive: N draws** = the draw-level test could not decide, ~M draws per scorer would at the "
             "observed spread (80% power, Bonferroni level); **not shown different** = none of these: not evidence "
             "of equality; agreement: share of samples whose answer is the unpruned model's. A p marked ≤ is a "
             "Monte Carlo floor.\n",
             "| sparsity | scorer | draws | value [95% CI] | new draw [95% PI] | P(best) | Δ vs best [95% simultaneous] "
             "| discordant (scorer / best) | test | p | p (Holm) | verdict | agreement with unpruned [95% CI] |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {VERDICT_BEST: 0, VERDICT_EQUIVALENT: 1, VERDICT_SAME: 2, VERDICT_INCONCLUSIVE: 3, VERDICT_WORSE: 4,
             VERDICT_NA: 5}
    for c in sorted(rows, key=lambda c: (c.sparsity, order[c.verdict], -c.mean if c.higher_is_better else c.mean)):
        value = fmt_value(c.mean) + (f" ± {fmt_value(c.std or 0.0)}" if c.n_draws > 1 else "")
        if c.interval is not None and c.interval.method != "none":
            value += f" [{fmt_value(c.interval.low)}, {fmt_value(c.interval.high)}]"
            if c.interval.method == "constant":
                value += " (constant: no spread to resample)"
        pi = f"[{fmt_value(c.prediction.low)}, {fmt_value(c.prediction.high)}]" if c.prediction else "—"
        pb = f"{c.p_best:.2f}" if c.p_best is not None else "—"
        t = c.test
        if t is not None and t.test != "none":
            lo, hi = c.diff_interval
            diff = f"{t.diff:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" (zero error: every question differs alike)"
                                                              if t.diff_constant else "")
        else:
            diff = f"{t.diff:+.3f}" if t is not None else "—"
        disc = f"{t.a_only} / {t.b_only}" if t and t.a_only is not None else "—"
        test = _TESTS.get(t.test, t.test) if t else "—"
        p = t.p_value if t and t.test != "none" else None
        ag = c.agreement.fmt() if c.agreement else "—"
        lines.append(f"| {c.sparsity:g} | {c.label} | {_draws_cell(c)} | {value} | {pi} | {pb} | {diff} | {disc} | "
                     f"{test} | {_fmt_p(p, t.at_floor if t else False)} | {_fmt_p(c.p_holm, t.at_floor if t else False)} "
                     f"| {_verdict_cell(c)} | {ag} |")
    sets = []
    for s in sorted({c.sparsity for c in rows}):
        tested = [c for c in rows if c.sparsity == s and c.verdict != VERDICT_NA]
        if len(tested) > 1:
            keep = [c.label for c in sorted(tested, key=lambda c: -(c.p_best or 0.0)) if c.verdict != VERDICT_WORSE]
            sets.append(f"{s:g}: {', '.join(keep)}")
    if sets:
        lines.append("\n**95% confidence set of the best** (the scorers shown worse than none; the true best is left "
                     "out only by a family-wise error): " + "; ".join(sets) + ".")
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


def calibration_variance(jobs: list[SummaryJob], model: str, task: str, metric: str) -> list[DrawRow]:
    """Per scorer and sparsity: mean ± SD of ``metric`` over the draws (seed tuples), the
    prediction interval of one new draw, one draw's sampling error, and the removed layers' stability."""
    from topovlm import stats

    out = []
    for lab, row in sorted(_cell_jobs(jobs, model, task).items()):
        for s, cj in sorted(row.items()):
            values = [j.metrics.get(metric) for j in cj]
            per = [cell_samples([job_samples(j)], metric) for j in cj]
            ivs = [cell_interval(cs, metric) for cs in per]
            kind = next((cs.kind for cs in per if cs is not None), None)
            var = stats.draw_variance([v for v in values if isinstance(v, (int, float))], [iv for iv in ivs if iv],
                                      bounds=_bounds(kind))
            if var is None:
                continue
            num_layers = max(int(j.num_layers or 0) for j in cj)
            stab = stats.removal_stability([j.removed_layers or [] for j in cj], num_layers)
            draws = [",".join(f"{k}={v}" for k, v in zip(SEED_KEYS, j.draw) if v is not None) for j in cj]
            out.append(DrawRow(model, task, metric, lab, s, var, stab, draws))
    return out


def calibration_markdown(rows: list[DrawRow]) -> str:
    if not rows or not any(r.variance.n_draws > 1 for r in rows):
        return ""
    r0 = rows[0]
    lines = [f"#### {r0.model} · {r0.task} · {r0.metric}: variance over calibration draws\n",
             "mean ± SD over the draws (one job per draw: `seed` / `calibration.seed`); new draw = 95% prediction "
             "interval of what one more draw would score on these questions (t over the draws, none with one draw); "
             "sampling SE = one draw's standard error over the questions, on the same scale as the SD (the draw "
             "spread decides the verdicts where the SD is the larger). Stability of the removed layers: mean pairwise "
             "Jaccard across draws (1 = the same set every time); layers removed in every draw, and in some draws "
             "(share of draws).\n",
             "| scorer | sparsity | draws | mean ± SD (draws) | new draw [95% PI] | sampling SE (one draw) | Jaccard "
             "| always removed | sometimes removed |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        v, st = r.variance, r.stability
        se = fmt_value(v.sampling_se) if v.sampling_se is not None else "—"
        pi = f"[{fmt_value(v.prediction.low)}, {fmt_value(v.prediction.high)}]" if v.prediction else "—"
        some = ", ".join(f"{i} ({f:.2f})" for i, f in enumerate(st.frequency) if 0 < f < 1) or "—"
        lines.append(f"| {r.label} | {r.sparsity:g} | {v.n_draws} | {v.fmt()} | {pi} | {se} | "
                     f"{fmt_value(st.mean_jaccard) if st.mean_jaccard is not None else '—'} | "
                     f"{', '.join(map(str, st.always())) or '—'} | {some} |")
    return "\n".join(lines)


def regimes(rows: list[Comparison], best_sets: "dict[float, BestSet | None] | None" = None) -> list["Regime"]:
    """Per sparsity: best minus worst scorer with its bootstrap interval, how many scorers are
    shown worse than none and how many are shown equivalent to the best."""
    from topovlm import stats

    out = []
    for s in sorted({c.sparsity for c in rows}):
        cells = [c for c in rows if c.sparsity == s and not is_yardstick(c.label)]
        if not any(c.test is not None for c in cells):
            continue  # no per-sample records: nothing says which differences are real
        not_worse = [c.label for c in cells if c.verdict != VERDICT_WORSE]
        equivalent = [c.label for c in cells if c.verdict == VERDICT_EQUIVALENT]
        bs = (best_sets or {}).get(s)
        margin = next((c.margin for c in cells if c.margin is not None), None)
        r = stats.regime(s, {c.label: c.mean for c in cells}, not_worse, not cells[0].higher_is_better, equivalent,
                         (bs.spread_low, bs.spread_high) if bs else None, margin)
        if r is not None:
            out.append(r)
    return out


def regimes_markdown(model: str, task: str, metric: str, regs: list["Regime"]) -> str:
    if not regs:
        return ""
    margin = next((r.margin for r in regs if r.margin is not None), None)
    lines = [f"#### {model} · {task} · {metric}: regimes\n",
             "Spread across scorers at each sparsity (the domain-aware paper's regimes), defined by what the tests "
             "showed: `ranking-sensitive` = at least one scorer is shown worse than another (Holm over all pairs); "
             + (f"`convergent` = every scorer is shown equivalent to the best within ±{margin:g} (TOST, Holm); "
                if margin is not None else "`convergent` needs an equivalence margin, which this metric has none of; ")
             + "`undetermined` = neither was shown (more questions or draws decide; no regime is claimed). "
             "best − worst: the observed spread with a 95% two-stage bootstrap interval (best and worst re-selected "
             "in every resample, so it leans high). Whether evenly spaced removal helps at high budgets "
             "(`spacing-sensitive`) shows as a `selection.policy=spacing` variant being the best where its top-k "
             "counterpart is worse.\n",
             "| sparsity | best | worst | best − worst [95% CI] | shown worse than none | shown equivalent to best "
             "| regime |", "|---|---|---|---|---|---|---|"]
    for r in regs:
        ci = f" [{fmt_value(r.spread_low)}, {fmt_value(r.spread_high)}]" if not math.isnan(r.spread_low) else ""
        lines.append(f"| {r.sparsity:g} | {r.best} | {r.worst} | {fmt_value(r.spread)}{ci} | {r.n_not_shown_worse} / "
                     f"{r.n_scorers} | {r.n_equivalent} / {r.n_scorers} | {r.label} |")
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


def cost_rows(jobs: list[SummaryJob], model: str, task: str, comparisons: list[Comparison]) -> list[CostRow]:
    """Per scorer and sparsity: measured prefill / decode speedups (mean ± std over the cell's
    jobs, each of which measures again), the ideal speedup for the layers removed, and flags."""
    from topovlm import stats

    by = {(c.label, c.sparsity): c for c in comparisons}
    out = []
    for lab, row in sorted(_cell_jobs(jobs, model, task).items()):
        for s, cj in sorted(row.items()):
            effs = [j.efficiency or {} for j in cj]
            L = max(int(j.num_layers or 0) for j in cj)
            kept = int(cj[0].num_layers_kept or L)
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
            q = fmt_value(r.quality.mean) + (f" ({r.quality.verdict_text})" if r.quality.verdict != VERDICT_NA else "")
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
    margin: float | None = None   # the TOST margin of equivalence claims

    def of(self, model: str, task: str, metric: str) -> list[Comparison]:
        return [c for c in self.comparisons if (c.model, c.task, c.metric) == (model, task, metric)]


def build_statistics(jobs: list[SummaryJob], tables: list[MetricTable],
                     headlines: dict[tuple[str, str], str | None], margin: float | None = None) -> Statistics:
    """``margin``: the TOST equivalence margin (default :data:`topovlm.stats.EQUIVALENCE_MARGIN`)."""
    from topovlm import stats

    st = Statistics(margin=stats.EQUIVALENCE_MARGIN if margin is None else float(margin))
    if not st.margin > 0:
        raise ValueError(f"equivalence margin must be positive, got {margin!r}")
    st.missing_samples = sum(1 for j in jobs if job_samples(j) is None)
    for t in tables:
        st.comparisons += compare(t, jobs, margin=st.margin,
                                  confirmatory=headlines.get((t.model, t.task)) == t.metric)
    for (model, task), metric in headlines.items():
        if not metric:
            continue
        st.draws[(model, task)] = calibration_variance(jobs, model, task, metric)
        table = next((t for t in tables if (t.model, t.task, t.metric) == (model, task, metric)), None)
        st.regimes[(model, task)] = regimes(st.of(model, task, metric), table.best_sets if table else None)
        st.cost[(model, task)] = cost_rows(jobs, model, task, st.of(model, task, metric))
    return st


def statistics_markdown(summary: "Summary", model: str, task: str) -> list[str]:
    """The statistics sections of one (model, task) in summary.md."""
    st = summary.stats
    metric = summary.headlines.get((model, task))
    if st is None or not metric:
        return []
    missing = [j for j in summary.jobs if (j.model, j.task) == (model, task) and job_samples(j) is None]
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
        summary.files["comparison"] = write_csv(out_dir / COMPARISON_CSV, list(rows[0]), rows)
    draw_rows = []
    for rs in st.draws.values():
        for r in rs:
            draw_rows.append({"model": r.model, "task": r.task, "metric": r.metric, "scorer": r.label,
                              "sparsity": r.sparsity, "n_draws": r.variance.n_draws, "mean": r.variance.mean,
                              "std_over_draws": r.variance.std, "sampling_se": r.variance.sampling_se,
                              "sampling_half_width": r.variance.sampling_half_width,
                              "new_draw_pi_low": r.variance.prediction.low if r.variance.prediction else None,
                              "new_draw_pi_high": r.variance.prediction.high if r.variance.prediction else None,
                              "mean_pairwise_jaccard": r.stability.mean_jaccard,
                              "removal_frequency": " ".join(f"{f:.3f}" for f in r.stability.frequency),
                              "draws": " ; ".join(r.draws)})
    if draw_rows:
        summary.files["calibration_variance"] = write_csv(out_dir / CALIBRATION_CSV, list(draw_rows[0]), draw_rows)
    reg_rows = [{"model": m, "task": t, "metric": summary.headlines.get((m, t)), "sparsity": r.sparsity, "best": r.best,
                 "worst": r.worst, "spread": r.spread, "spread_ci_low": r.spread_low, "spread_ci_high": r.spread_high,
                 "n_scorers": r.n_scorers, "n_not_shown_worse": r.n_not_shown_worse, "n_equivalent": r.n_equivalent,
                 "tost_margin": r.margin, "regime": r.label}
                for (m, t), regs in st.regimes.items() for r in regs]
    if reg_rows:
        summary.files["regimes"] = write_csv(out_dir / REGIMES_CSV, list(reg_rows[0]), reg_rows)
    cost = [{"model": r.model, "task": r.task, "scorer": r.label, "sparsity": r.sparsity, "layers_kept": r.kept,
             "num_layers": r.num_layers, "ideal_speedup": r.ideal,
             "prefill_speedup": r.prefill.mean if r.prefill else None,
             "prefill_speedup_std": r.prefill.std if r.prefill else None,
             "decode_speedup": r.decode.mean if r.decode else None,
             "decode_speedup_std": r.decode.std if r.decode else None, "n_jobs": (r.prefill or r.decode).n,
             "quality": r.quality.mean if r.quality else None, "verdict": r.quality.verdict_text if r.quality else None,
             "flag": r.flags} for rs in st.cost.values() for r in rs]
    if cost:
        summary.files["efficiency"] = write_csv(out_dir / EFFICIENCY_CSV, list(cost[0]), cost)


def job_interval_columns(job: SummaryJob, metrics: list[str]) -> dict[str, Any]:
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

