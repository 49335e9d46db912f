"""The answer summary.md opens with: per (model, task) and sparsity, the best scorer on the
headline metric with its value and 95% interval, the scorers that cannot be told from it
(the confidence set of the best: those shown worse than none), the number of questions and
of calibration draws. Read from the statistics' verdicts (:mod:`topovlm.summary.statistics`),
never recomputed here."""
from __future__ import annotations

from typing import TYPE_CHECKING

from topovlm.stats import VERDICT_BEST, VERDICT_NA, VERDICT_WORSE
from topovlm.summary.tables import fmt_value, is_yardstick

if TYPE_CHECKING:
    from topovlm.summary.build import Summary
    from topovlm.summary.statistics import Comparison


def _value(c: "Comparison") -> str:
    text = fmt_value(c.mean)
    iv = c.interval
    if iv is not None and iv.method not in ("none", "constant"):
        text += f" [95% CI {fmt_value(iv.low)}, {fmt_value(iv.high)}]"
    return text


def _questions(summary: "Summary", model: str, task: str) -> str:
    ns = sorted({int(j.metrics["num_samples"]) for j in summary.jobs
                 if (j.model, j.task) == (model, task) and isinstance(j.metrics.get("num_samples"), (int, float))})
    return "n = " + "/".join(map(str, ns)) + " questions" if ns else "n unknown"


def verdict_lines(summary: "Summary", model: str, task: str) -> list[str]:
    """One line per sparsity (empty without a headline metric or statistics)."""
    metric = summary.headlines.get((model, task))
    if summary.stats is None or not metric:
        return []
    rows = summary.stats.of(model, task, metric)
    out = []
    for s in sorted({c.sparsity for c in rows}):
        yardsticks = [c for c in rows if c.sparsity == s and is_yardstick(c.label)]
        at = [c for c in rows if c.sparsity == s and not is_yardstick(c.label)]
        if not at:
            continue
        best = [c for c in at if c.verdict == VERDICT_BEST] or [c for c in at if c.label == at[0].best]
        if not best:
            continue
        draws = sorted({c.n_draws for c in at})
        drawn = f"{'/'.join(map(str, draws))} calibration draw{'s' if draws != [1] else ''} per scorer"
        tied = " (tied)" if len(best) > 1 else ""
        line = f"- **{s:g}**: best{tied} **{', '.join(c.label for c in best)}** {metric} = {_value(best[0])}"
        others = [c for c in at if c not in best]
        same = [c.label for c in others if c.verdict != VERDICT_WORSE]
        worse = [c.label for c in others if c.verdict == VERDICT_WORSE]
        if len(at) == 1:
            line += " (the only scorer)"
        elif others and all(c.verdict == VERDICT_NA for c in others):
            line += " (no per-question records: not compared)"
        elif others:
            line += "; cannot be told from it: " + (", ".join(same) if same else "none")
            if worse:
                line += "; shown worse: " + ", ".join(worse)
        for y in yardsticks:  # measured, not predicted: beside the verdict, not in it
            line += f"; {y.label} (yardstick) = {_value(y)}"
        out.append(f"{line} ({drawn})")
    return out


def verdict_markdown(summary: "Summary", model: str, task: str) -> str:
    lines = verdict_lines(summary, model, task)
    if not lines:
        return ""
    metric = summary.headlines[(model, task)]
    table = next((t for t in summary.tables if (t.model, t.task, t.metric) == (model, task, metric)), None)
    direction = "higher" if table is None or table.higher_is_better else "lower"
    ref = ""
    if table is not None and table.reference is not None:
        iv = table.reference_interval
        ref = f" Unpruned: {fmt_value(table.reference.mean)}" + (
            f" [95% CI {fmt_value(iv.low)}, {fmt_value(iv.high)}]" if iv is not None and iv.method not in
            ("none", "constant") else "") + "."
    return (f"**Verdict** ({metric}, {direction} is better; {_questions(summary, model, task)}; \"cannot be told "
            "from it\": not shown worse after Holm over every pair at that sparsity, the 95% confidence set of "
            f"the best).{ref}\n\n" + "\n".join(lines))
