"""The sweep summary: CSV, Markdown, plots, ranking agreement, the CLI, the W&B summary run."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import ROOT
from topovlm.stats import jaccard
from topovlm.summary import build_summary, kendall_tau

NUM_LAYERS = 8
COSINE_RED = [0, 1, 2, 3, 4, 7, 6, 5]
TOPO_RED = [0, 1, 2, 3, 4, 5, 6, 7]


EVALUATOR_OF = {"accuracy": "vqa", "perplexity": "perplexity"}  # as a results.json written before metric_directions


def fake_job(root: Path, scorer: str, sparsity: float, acc: float, *, seed: int = 0, removed=None,
             redundancy=None, model: str = "m", task: str = "t", scorer_params: dict | None = None,
             metric: str = "accuracy", resumed_from: str | None = None, key: str | None = None,
             reference: float | None = None) -> Path:
    """A results.json as run_job writes it (only the keys the summary reads)."""
    removed = list(removed or [])
    redundancy = list(redundancy or range(NUM_LAYERS))
    params = scorer_params or {}
    key = key or f"{model}-{task}-{scorer}-{json.dumps(params, sort_keys=True)}-{sparsity}-{seed}"
    out = root / f"{abs(hash(key)) % 10**8}_{scorer}_s{sparsity}"
    out.mkdir(parents=True)
    metrics = {metric: acc, f"{metric}/math": acc / 2, f"{metric}/non_math": min(1.0, acc * 1.5), "num_samples": 16.0}
    res = {
        "model": model, "task": task, "scorer": scorer, "sparsity": sparsity, "seed": seed,
        "num_layers": NUM_LAYERS, "num_layers_kept": NUM_LAYERS - len(removed), "removed_layers": removed,
        "kept_layers": [i for i in range(NUM_LAYERS) if i not in removed], "selection_policy": "topk",
        "scores": redundancy, "redundancy": redundancy, "metrics": metrics,
        "efficiency": {"params_total": 1000 - 10 * len(removed)}, "timings": {"evaluate": 1.5},
        "config": {"model": {"name": model}, "task": {"name": task, "evaluator": EVALUATOR_OF.get(metric, "lmms")},
                   "scorer": {"name": scorer, **params},
                   "sparsity": sparsity, "seed": seed, "calibration": {"seed": 0, "n": 12},
                   "logger": {"wandb": {"enabled": False, "mode": "disabled"}}, "cache_dir": "/x"},
        "job_key": key, "out_dir": str(out),
    }
    if resumed_from:
        res["resumed_from"] = resumed_from
    if reference is not None:
        res["reference_metrics"] = {metric: reference}
    (out / "results.json").write_text(json.dumps(res))
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def table_rows(markdown: str, title: str) -> dict[str, list[str]]:
    """Rows (first cell -> other cells) of the Markdown table under the heading ``title``."""
    lines = markdown.split(title, 1)[1].splitlines()
    rows: dict[str, list[str]] = {}
    started = False
    for line in lines:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= {"-"}:
                rows[cells[0]] = cells[1:]
        elif started:
            break
    return rows


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "sweep"
    red = {"cosine": COSINE_RED, "topo": TOPO_RED}  # one ranking per scorer, whatever the sparsity
    for scorer in ("cosine", "topo"):
        fake_job(root, scorer, 0.0, 0.9, redundancy=red[scorer])  # the unpruned model, once per scorer
    fake_job(root, "cosine", 0.25, 0.8, removed=[5, 6], redundancy=COSINE_RED)
    fake_job(root, "cosine", 0.5, 0.5, removed=[4, 5, 6, 7], redundancy=COSINE_RED)
    fake_job(root, "topo", 0.25, 0.7, removed=[6, 7], redundancy=TOPO_RED)
    fake_job(root, "topo", 0.5, 0.6, removed=[1, 3, 6, 7], redundancy=TOPO_RED)
    return root


def test_csv_has_one_row_per_job_with_metrics_and_efficiency(sweep: Path):
    s = build_summary([sweep])
    rows = read_csv(sweep / "summary.csv")
    assert len(rows) == 6 == len(s.jobs)
    assert {"model", "task", "scorer", "sparsity", "removed_layers", "accuracy", "accuracy/math",
            "efficiency/params_total", "out_dir"} <= set(rows[0])
    cos50 = next(r for r in rows if r["scorer"] == "cosine" and float(r["sparsity"]) == 0.5)
    assert cos50["removed_layers"] == "4 5 6 7"
    assert float(cos50["accuracy"]) == 0.5 and float(cos50["accuracy/math"]) == 0.25
    assert cos50["efficiency/params_total"] == "960"
    assert "num_samples" not in rows[0]  # a count, not a metric to compare


def test_markdown_marks_best_per_sparsity_and_has_the_reference_row(sweep: Path):
    s = build_summary([sweep], plots=False)
    md = s.terminal_markdown()
    rows = table_rows(md, "#### m · t · accuracy")
    assert rows["*unpruned (reference)*"] == ["0.900", "0.900"]
    assert rows["cosine"] == ["**0.800**", "0.500"]
    assert rows["topo"] == ["0.700", "**0.600**"]
    assert "No unpruned reference" not in md
    full = (sweep / "summary.md").read_text()
    math_rows = table_rows(full, "#### m · t · accuracy/math")  # per-domain tables in summary.md
    assert math_rows["cosine"] == ["**0.400**", "0.250"]
    assert "## Removed layers" in full and "| cosine | 5, 6 | 4, 5, 6, 7 |" in full


def test_a_sweep_without_sparsity_zero_says_so(tmp_path: Path):
    fake_job(tmp_path, "cosine", 0.25, 0.8, removed=[1, 2])
    md = build_summary([tmp_path], plots=False).terminal_markdown()
    assert table_rows(md, "#### m · t · accuracy")["*unpruned (reference)*"] == ["—"]
    assert "No unpruned reference: this sweep has no sparsity=0 job" in md


def test_reference_row_from_recorded_unpruned_metrics(tmp_path: Path):
    fake_job(tmp_path, "cosine", 0.25, 0.8, removed=[1, 2], reference=0.95)
    fake_job(tmp_path, "topo", 0.25, 0.7, removed=[3, 4], reference=0.95)
    md = build_summary([tmp_path], plots=False).terminal_markdown()
    assert table_rows(md, "#### m · t · accuracy")["*unpruned (reference)*"] == ["0.950"]
    assert "No unpruned reference" not in md


def test_lower_is_better_for_perplexity(tmp_path: Path):
    fake_job(tmp_path, "cosine", 0.25, 30.0, removed=[1, 2], metric="perplexity")
    fake_job(tmp_path, "tail", 0.25, 20.0, removed=[6, 7], metric="perplexity")
    md = build_summary([tmp_path], plots=False).terminal_markdown()
    rows = table_rows(md, "#### m · t · perplexity")
    assert rows["tail"] == ["**20.000**"] and rows["cosine"] == ["30.000"]
    assert "lower is better" in md


def test_mean_and_std_over_seeds(tmp_path: Path):
    for seed, acc in ((0, 0.5), (1, 0.6), (2, 0.7)):
        fake_job(tmp_path, "random", 0.25, acc, seed=seed, removed=[seed, 7])
        fake_job(tmp_path, "random", 0.0, 0.9, seed=seed)
    s = build_summary([tmp_path])
    rows = table_rows(s.terminal_markdown(), "#### m · t · accuracy")
    assert rows["random"] == ["**0.600 ± 0.100 (n=3)**"]
    assert rows["*unpruned (reference)*"] == ["0.900 ± 0.000 (n=3)"]
    assert sorted(r["seed"] for r in read_csv(tmp_path / "summary.csv")) == ["0", "0", "1", "1", "2", "2"]
    assert "(1/3 seeds)" in (tmp_path / "summary.md").read_text()  # removed sets differ by seed


def test_scorer_variants_get_their_own_rows(tmp_path: Path):
    fake_job(tmp_path, "cosine", 0.25, 0.8, removed=[1], scorer_params={"pooling": "last"})
    fake_job(tmp_path, "cosine", 0.25, 0.6, removed=[2], scorer_params={"pooling": "text_mean"})
    rows = table_rows(build_summary([tmp_path], plots=False).terminal_markdown(), "#### m · t · accuracy")
    assert rows["cosine[pooling=last]"] == ["**0.800**"] and rows["cosine[pooling=text_mean]"] == ["0.600"]


def test_ranking_agreement_kendall_tau_and_jaccard(sweep: Path):
    from scipy.stats import kendalltau

    s = build_summary([sweep], plots=False)
    expected = kendalltau(COSINE_RED, TOPO_RED).statistic
    assert kendall_tau(COSINE_RED, TOPO_RED) == pytest.approx(expected)
    assert kendall_tau([1, None, 3, 2], [1, 5, 2, 3]) == pytest.approx(kendalltau([1, 3, 2], [1, 2, 3]).statistic)
    assert 0 < expected < 1
    assert jaccard([5, 6], [6, 7]) == pytest.approx(1 / 3) and jaccard([], []) == 1.0
    rows = read_csv(sweep / "agreement.csv")
    tau = [r for r in rows if r["kind"] == "kendall_tau"]
    assert len(tau) == 1 and (tau[0]["scorer_a"], tau[0]["scorer_b"]) == ("cosine", "topo")
    assert float(tau[0]["value"]) == pytest.approx(expected)
    jac = {float(r["sparsity"]): float(r["value"]) for r in rows if r["kind"] == "jaccard_removed"}
    assert jac == {0.25: pytest.approx(1 / 3), 0.5: pytest.approx(2 / 6)}
    md = s.terminal_markdown()
    assert table_rows(md, "Kendall tau")["cosine"] == ["1.000", f"{expected:.3f}"]
    assert table_rows(md, "Overlap (Jaccard)")["cosine / topo"] == ["0.333", "0.333"]


def test_plots_are_real_pngs(sweep: Path):
    s = build_summary([sweep])
    names = sorted(p.name for p in s.plots)
    # two scorers: no agreement heat maps (one number each, in summary.md); categories in their own figure
    assert names == ["metric_by_category__m__t.png", "metric_vs_sparsity__m__t.png", "removed_layers__m.png",
                     "score_profiles__m.png"]
    for p in s.plots:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
            assert len(set(im.convert("L").getdata())) > 10  # something was drawn
    # the headline figure: the headline metric alone; the two domains side by side in the second figure
    with Image.open(sweep / "plots" / "metric_vs_sparsity__m__t.png") as im:
        assert im.width < 1.5 * im.height
    with Image.open(sweep / "plots" / "metric_by_category__m__t.png") as im:
        assert im.width > 2 * im.height
    assert "![metric_vs_sparsity__m__t](plots/metric_vs_sparsity__m__t.png)" in (sweep / "summary.md").read_text()


def test_cli_summarizes_several_sweeps_and_counts_a_resumed_job_once(sweep: Path, tmp_path: Path):
    from topovlm.cli import main

    other = tmp_path / "other"
    fake_job(other, "random", 0.25, 0.4, removed=[0, 3])
    first = next(p for p in sweep.iterdir() if "cosine_s0.25" in p.name)
    orig = json.loads((first / "results.json").read_text())
    fake_job(other, "cosine", 0.25, 0.8, removed=[5, 6], key=orig["job_key"], resumed_from=str(first))
    out = tmp_path / "both"
    assert main(["summarize", str(sweep), str(other), "-o", str(out), "--no-plots", "-q"]) == 0
    rows = read_csv(out / "summary.csv")
    assert len(rows) == 7  # 6 + random; the resumed copy of cosine@0.25 is the same job
    assert {r["scorer"] for r in rows} == {"cosine", "topo", "random"}
    assert not (out / "plots").exists()
    assert main(["summarize", str(tmp_path / "missing")]) == 1


def test_module_entry_point_runs(sweep: Path, tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "topovlm.cli", "summarize", str(sweep), "-o", str(tmp_path / "o"), "--no-plots"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| *unpruned (reference)* | 0.900 | 0.900 |" in proc.stdout
    assert len(read_csv(tmp_path / "o" / "summary.csv")) == 6


def test_wandb_summary_run_offline(sweep: Path, tmp_path: Path):
    from topovlm.summary.wandb import log_summary_run

    s = build_summary([sweep])
    run_dir = log_summary_run(s, {"enabled": True, "mode": "offline", "project": "topovlm-test",
                                  "dir": str(tmp_path / "wb")}, group="sweep-test_group")
    assert run_dir is not None and run_dir.name.startswith("offline-run-")
    assert run_dir.parent == sweep / "wandb"  # next to summary.csv, not with the jobs' runs
    raw = b""
    for _ in range(60):  # the offline transaction log can land shortly after finish() returns
        raw = next(run_dir.glob("*.wandb")).read_bytes()
        if b"summary/jobs" in raw and b"curve/m/t/accuracy/topo" in raw:
            break
        time.sleep(0.5)
    assert b"sweep-test_group" in raw and b"summary/jobs" in raw
    assert b"curve/m/t/accuracy/cosine" in raw  # the history W&B's own line plots draw
    tables = {p.relative_to(run_dir / "files" / "media" / "table").as_posix(): json.loads(p.read_text())
              for p in (run_dir / "files" / "media" / "table").rglob("*.table.json")}
    jobs = next(v for k, v in tables.items() if k.startswith("summary/jobs"))
    assert len(jobs["data"]) == 6 and "accuracy" in jobs["columns"]
    line = next(v for k, v in tables.items() if k.startswith("plots/m/t/accuracy_table"))
    # line_series: one line per scorer, each starting at the unpruned reference (sparsity 0)
    assert {tuple(r) for r in line["data"]} >= {(0.0, "cosine", 0.9), (0.25, "cosine", 0.8), (0.5, "topo", 0.6)}
    assert len(list((run_dir / "files" / "media" / "images").rglob("*.png"))) == 4
    disabled = log_summary_run(s, {"enabled": True, "mode": "disabled"})
    assert disabled is None


def test_summary_run_history_has_one_row_per_sparsity(sweep: Path):
    from topovlm.summary.wandb import curve_rows

    rows = curve_rows(build_summary([sweep], plots=False))
    assert [r["sparsity"] for r in rows] == [0.0, 0.25, 0.5]  # increasing: a line, not dots
    assert rows[0]["curve/m/t/accuracy/cosine"] == rows[0]["curve/m/t/accuracy/topo"] == 0.9  # unpruned start
    assert rows[1]["curve/m/t/accuracy/cosine"] == 0.8 and rows[2]["curve/m/t/accuracy/topo"] == 0.6


# The multirun-end callback on real sweeps: tests/unit/test_launchers.py (joblib, submitit) and
# tests/unit/test_resume.py (the basic launcher, a re-run with seeds).


def test_each_task_gets_its_own_headline_metric(tmp_path: Path):
    """lmms-eval tasks report differently named metrics: each task's table uses its own."""
    fake_job(tmp_path, "cosine", 0.25, 0.8, removed=[1], task="pope", metric="pope_accuracy")
    fake_job(tmp_path, "cosine", 0.25, 1400.0, removed=[1], task="mme", metric="mme_perception_score")
    fake_job(tmp_path, "cosine", 0.25, 0.7, removed=[1], task="shapes")
    s = build_summary([tmp_path], plots=False)
    md = s.terminal_markdown()
    assert table_rows(md, "#### m · pope · pope_accuracy")["cosine"] == ["**0.800**"]
    assert table_rows(md, "#### m · mme · mme_perception_score")["cosine"] == ["**1400.0**"]
    assert table_rows(md, "#### m · shapes · accuracy")["cosine"] == ["**0.700**"]
    assert "#### m · pope · pope_accuracy/math" not in md  # breakdowns only in summary.md
    assert "#### m · pope · pope_accuracy/math" in (tmp_path / "summary.md").read_text()
    header = [c for c in read_csv(tmp_path / "summary.csv")[0].keys() if "/ci_" not in c]
    assert set(header[11:14]) == {"accuracy", "mme_perception_score", "pope_accuracy"}  # headlines first


def test_the_headline_is_the_metric_the_run_config_optimises(tmp_path: Path):
    """optimized_metric, recorded in each job's config, names the headline; --metric overrides it."""
    for scorer in ("cosine", "topo"):
        out = fake_job(tmp_path, scorer, 0.25, 0.8, removed=[1], task="pope", metric="pope_accuracy")
        res = json.loads((out / "results.json").read_text())
        res["metrics"]["pope_f1_score"] = 0.5 if scorer == "cosine" else 0.6
        res["config"]["optimized_metric"] = "pope_f1_score"
        (out / "results.json").write_text(json.dumps(res))
    assert build_summary([tmp_path], plots=False).headlines[("m", "pope")] == "pope_f1_score"
    assert build_summary([tmp_path], plots=False, metric="pope_accuracy").headlines[("m", "pope")] == "pope_accuracy"


def test_optimized_metric_defaults_to_the_task_presets_metric():
    from tests.helpers import compose

    assert compose([]).optimized_metric == "accuracy"
    assert compose(["task=text_ppl"]).optimized_metric == "perplexity"
    assert compose(["task=pope"]).optimized_metric == "pope_accuracy"
    assert compose(["optimized_metric=accuracy_mc"]).optimized_metric == "accuracy_mc"
    from topovlm.app import optimized_value

    metrics = {"accuracy": 0.4, "accuracy_mc": 0.7, "perplexity": 3.0}  # no guessing: the one named
    assert optimized_value(compose(["optimized_metric=accuracy_mc"]), metrics) == 0.7
    assert optimized_value(compose(["task=text_ppl"]), metrics) == 3.0
    assert optimized_value(compose(["task=pope"]), metrics) is None


# --------------------------------------------------------------------------- per-sample statistics

N_SAMPLES = 100


def stat_job(root: Path, scorer: str, sparsity: float, correct: list[bool], *, cal_seed: int = 0,
             removed=None, reference: list[bool] | None = None, speedup: float | None = None) -> Path:
    """A job with samples.jsonl: ``correct`` per sample (half math, half non_math); metrics
    computed from it, as the vqa evaluator does."""
    removed = list(removed if removed is not None else ([] if sparsity == 0 else [5, 6]))
    ref = reference if reference is not None else correct
    acc = sum(correct) / len(correct)
    out = fake_job(root, scorer, sparsity, acc, removed=removed, key=f"{scorer}-{sparsity}-{cal_seed}")
    res = json.loads((out / "results.json").read_text())
    doms = ["math" if i % 2 else "non_math" for i in range(len(correct))]
    res["metrics"] = {"accuracy": acc, "num_samples": float(len(correct))}
    for d in ("math", "non_math"):
        hits = [c for c, dd in zip(correct, doms) if dd == d]
        res["metrics"][f"accuracy/{d}"] = sum(hits) / len(hits)
    res["config"]["calibration"]["seed"] = cal_seed
    if speedup is not None:
        res["efficiency"].update({"prefill_speedup": speedup, "decode_speedup": speedup * 0.9,
                                  "ideal_speedup": NUM_LAYERS / (NUM_LAYERS - len(removed))})
    (out / "results.json").write_text(json.dumps(res))
    with open(out / "samples.jsonl", "w") as f:
        for i, (c, r, d) in enumerate(zip(correct, ref, doms)):
            pred = "yes" if c else "no"
            ref_pred = "yes" if r else "no"
            f.write(json.dumps({"key": f"t/q{i}", "id": f"q{i}", "task": "t", "domain": d, "category": "",
                                "prediction": pred, "target": "yes", "correct": c, "reference_prediction": ref_pred,
                                "reference_correct": r, "agree": pred == ref_pred}) + "\n")
    return out


def _flags(n_true: int, n: int = N_SAMPLES) -> list[bool]:
    return [True] * n_true + [False] * (n - n_true)


@pytest.fixture
def stat_sweep(tmp_path: Path) -> Path:
    root = tmp_path / "stats"
    ref = _flags(90)
    best = _flags(80)
    close = list(best)
    close[0], close[1], close[85] = False, False, True  # discordant 1 / 2: McNemar p = 1
    worse = _flags(40)                    # 40 samples only the best gets right, none the other way
    stat_job(root, "cosine", 0.0, ref, removed=[])
    stat_job(root, "topo", 0.25, best, reference=ref, speedup=1.3)
    stat_job(root, "shortgpt", 0.25, close, reference=ref, speedup=1.2)
    stat_job(root, "tail", 0.25, worse, reference=ref, speedup=0.95)
    return root


def test_summary_md_has_intervals_and_verdict_columns(stat_sweep: Path):
    from statsmodels.stats.weightstats import ttost_paired

    from topovlm import stats

    s = build_summary([stat_sweep])
    md = (stat_sweep / "summary.md").read_text()
    title = "#### m · t · accuracy: comparison of scorers (confirmatory family"
    assert title in md
    header = md.split(title, 1)[1].split("| sparsity |", 1)[1].split("\n", 1)[0]
    for col in ("value [95% CI]", "new draw [95% PI]", "P(best)", "Δ vs best [95% simultaneous]", "test", "p (Holm)",
                "verdict", "agreement with unpruned"):
        assert col in header
    lines = [line for line in md.split(title, 1)[1].split("\n\n####", 1)[0].splitlines() if line.startswith("| 0.25")]
    cells = {c[1]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in lines)}
    assert cells["topo"][11] == "**best**"
    # one draw per cell: the questions are the unit, conditional on that draw
    assert cells["shortgpt"][10] == "1.000" and cells["shortgpt"][7] == "1 / 2"
    assert cells["shortgpt"][11] == "equivalent (±0.05)"  # shown by TOST, not by a failure to reject
    assert cells["tail"][11] == "worse" and cells["tail"][7] == "0 / 40" and cells["tail"][8] == "McNemar exact (questions)"
    # Holm over every pair at the sparsity (3 pairs), not only against the observed best
    p_tail = stats.mcnemar_exact(_flags(40), _flags(80)).p_value
    comp = {r["scorer"]: r for r in read_csv(stat_sweep / "comparison.csv") if r["metric"] == "accuracy"}
    assert float(comp["tail"]["p_holm"]) == pytest.approx(min(1.0, 3 * p_tail))
    assert float(comp["shortgpt"]["p_holm"]) == pytest.approx(1.0)
    assert comp["tail"]["worse_than"] == "topo shortgpt" and comp["tail"]["family"] == "confirmatory"
    assert comp["tail"]["family_size"] == "3"
    # the equivalence claim: statsmodels' paired TOST at the printed margin, Holm over the two scorers
    close = [float(v) for v in _flags(80)]
    close[0], close[1], close[85] = 0.0, 0.0, 1.0
    p_tost = ttost_paired(np.array(close), np.array(_flags(80), dtype=float), -0.05, 0.05)[0]
    assert float(comp["shortgpt"]["tost_p_holm"]) == pytest.approx(min(1.0, 2 * p_tost))
    assert float(comp["shortgpt"]["tost_margin"]) == 0.05
    # the Δ interval next to the adjusted verdict is simultaneous (Bonferroni over the 3 pairs): wider
    lo, hi = float(comp["tail"]["diff_simultaneous_ci_low"]), float(comp["tail"]["diff_simultaneous_ci_high"])
    assert lo < float(comp["tail"]["diff_ci_low"]) < -0.4 < float(comp["tail"]["diff_ci_high"]) < hi
    assert f"{-0.4:+.3f} [{lo:+.3f}, {hi:+.3f}]" == cells["tail"][6]
    # P(best): a two-stage bootstrap share, and the confidence set of the best
    pb = {k: float(v["p_best"]) for k, v in comp.items()}
    assert sum(pb.values()) == pytest.approx(1.0) and pb["tail"] == 0.0 and pb["topo"] > pb["shortgpt"] > 0
    assert "**95% confidence set of the best**" in md and "0.25: topo, shortgpt." in md
    # the interval of a single job's accuracy is Wilson's; the headline table shows it and the marks
    wil = stats.wilson(80, N_SAMPLES)
    assert f"[{wil.low:.3f}, {wil.high:.3f}]" in cells["topo"][3]
    acc_rows = table_rows(md, "#### m · t · accuracy\n")
    assert acc_rows["shortgpt"][0].endswith("≡") and acc_rows["tail"][0].endswith("↓") and "[" in acc_rows["topo"][0]
    assert "≈" not in md and "indistinguishable" not in md
    assert "[" in acc_rows["*unpruned (reference)*"][0]  # the reference row carries its interval too
    assert "_confirmatory (the headline metric" in md.split("#### m · t · accuracy\n", 1)[1].split("####", 1)[0]
    assert "_exploratory (" in md.split("#### m · t · accuracy/math\n", 1)[1].split("####", 1)[0]
    # agreement with the unpruned model: topo keeps the answer on 90 of 100 samples
    assert float(comp["topo"]["agreement_with_unpruned"]) == pytest.approx(0.9)
    # summary.csv: every metric with its interval
    row = next(r for r in read_csv(stat_sweep / "summary.csv") if r["scorer"] == "topo")
    assert float(row["accuracy/ci_low"]) == pytest.approx(wil.low) and float(row["accuracy/ci_high"]) == pytest.approx(wil.high)
    assert row["accuracy/math/ci_low"] != "" and float(row["agreement_with_unpruned"]) == pytest.approx(0.9)
    # regimes: tail is shown worse (ranking-sensitive); the spread has an interval
    reg = read_csv(stat_sweep / "regimes.csv")
    assert reg[0]["best"] == "topo" and reg[0]["worst"] == "tail" and reg[0]["n_not_shown_worse"] == "2"
    assert float(reg[0]["spread"]) == pytest.approx(0.4) and reg[0]["regime"] == "ranking-sensitive"
    assert float(reg[0]["spread_ci_low"]) < 0.4 < float(reg[0]["spread_ci_high"])
    # cost: a measured speedup below 1 is flagged
    eff = {r["scorer"]: r for r in read_csv(stat_sweep / "efficiency.csv")}
    assert "prefill below 1" in eff["tail"]["flag"] and float(eff["topo"]["ideal_speedup"]) == pytest.approx(8 / 6)
    assert s.stats is not None and s.stats.missing_samples == 0


def test_the_equivalence_margin_is_configurable_and_printed(stat_sweep: Path):
    build_summary([stat_sweep], plots=False, equivalence_margin=0.01)
    comp = {r["scorer"]: r for r in read_csv(stat_sweep / "comparison.csv") if r["metric"] == "accuracy"}
    assert comp["shortgpt"]["verdict"] == "not shown different" and comp["shortgpt"]["tost_margin"] == "0.01"
    md = (stat_sweep / "summary.md").read_text()
    assert "within ±0.01" in md and "not shown different" in md
    with pytest.raises(ValueError, match="equivalence margin must be positive"):
        build_summary([stat_sweep], plots=False, equivalence_margin=0.0)


def test_jobs_without_samples_are_named_not_tested(stat_sweep: Path):
    (next(stat_sweep.glob("*_tail_s0.25")) / "samples.jsonl").unlink()
    build_summary([stat_sweep], plots=False)
    md = (stat_sweep / "summary.md").read_text()
    assert "1 of the jobs wrote no samples.jsonl" in md
    comp = {r["scorer"]: r for r in read_csv(stat_sweep / "comparison.csv") if r["metric"] == "accuracy"}
    assert comp["tail"]["verdict"] == "n/a" and comp["tail"]["p_value"] == ""
    assert float(comp["shortgpt"]["p_holm"]) == pytest.approx(1.0)


def test_statistics_plots_are_written(stat_sweep: Path):
    s = build_summary([stat_sweep])
    names = {p.name for p in s.plots}
    for stem in ("comparison", "regimes", "agreement_with_unpruned", "pareto", "metric_vs_sparsity"):
        path = stat_sweep / "plots" / f"{stem}__m__t.png"
        assert path.name in names
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_calibration_variance_over_draws(tmp_path: Path):
    root = tmp_path / "draws"
    ref = _flags(90)
    stat_job(root, "cosine", 0.0, ref, removed=[])
    for seed, (n, removed) in enumerate([(70, [5, 6]), (74, [5, 6]), (78, [5, 7])]):
        stat_job(root, "topo", 0.25, _flags(n), cal_seed=seed, removed=removed, reference=ref)
        stat_job(root, "tail", 0.25, _flags(30), cal_seed=seed, removed=[6, 7], reference=ref)
    s = build_summary([root])
    md = (root / "summary.md").read_text()
    title = "#### m · t · accuracy: variance over calibration draws"
    assert title in md
    rows = {r["scorer"]: r for r in read_csv(root / "calibration_variance.csv") if float(r["sparsity"]) == 0.25}
    assert rows["topo"]["n_draws"] == "3"
    assert float(rows["topo"]["mean"]) == pytest.approx(0.74) and float(rows["topo"]["std_over_draws"]) == pytest.approx(0.04)
    assert float(rows["topo"]["mean_pairwise_jaccard"]) == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert rows["topo"]["removal_frequency"].split()[5:8] == ["1.000", "0.667", "0.333"]
    assert float(rows["tail"]["std_over_draws"]) == 0.0 and float(rows["tail"]["mean_pairwise_jaccard"]) == 1.0
    assert 0.05 < float(rows["topo"]["sampling_half_width"]) < 0.1  # Wilson half-width at n = 100
    # the sampling error on the SD's scale (a standard error), and no ratio of an SD to a half-width
    assert float(rows["topo"]["sampling_se"]) == pytest.approx(float(rows["topo"]["sampling_half_width"]) / 1.959964)
    assert "std / sampling" not in md and "sampling SE (one draw)" in md
    # one new draw of topo: mean ± t(2) · SD · sqrt(1 + 1/3)
    from scipy.stats import t as t_dist

    half = t_dist.ppf(0.975, 2) * 0.04 * (4 / 3) ** 0.5
    assert float(rows["topo"]["new_draw_pi_low"]) == pytest.approx(0.74 - half)
    assert float(rows["topo"]["new_draw_pi_high"]) == pytest.approx(min(1.0, 0.74 + half))
    # topo's results vary over draws: the draw is the unit (t over draw means); tail's are identical
    comp = {r["scorer"]: r for r in read_csv(root / "comparison.csv") if r["metric"] == "accuracy"}
    assert comp["tail"]["test"] == "draw_t" and comp["tail"]["unit"] == "draws" and comp["tail"]["verdict"] == "worse"
    assert comp["tail"]["draw_status"] == "identical over draws" and comp["topo"]["draw_status"] == "varies over draws"
    assert comp["topo"]["ci_method"] == "draw_t"
    assert "calibration_variance__m__t.png" in {p.name for p in s.plots}


def test_wandb_summary_tables_carry_intervals_and_verdicts(stat_sweep: Path, tmp_path: Path):
    from topovlm.summary.wandb import log_summary_run

    s = build_summary([stat_sweep])
    run_dir = log_summary_run(s, {"enabled": True, "mode": "offline", "project": "topovlm-test"}, group="g")
    assert run_dir is not None
    tables: dict = {}
    for _ in range(60):
        tables = {p.relative_to(run_dir / "files" / "media" / "table").as_posix(): json.loads(p.read_text())
                  for p in (run_dir / "files" / "media" / "table").rglob("*.table.json")}
        if any(k.startswith("summary/comparison") for k in tables):
            break
        time.sleep(0.5)
    comp = next(v for k, v in tables.items() if k.startswith("summary/comparison"))
    col = {c: i for i, c in enumerate(comp["columns"])}
    verdicts = {r[col["scorer"]]: r[col["verdict"]] for r in comp["data"] if r[col["metric"]] == "accuracy"}
    assert verdicts == {"topo": "best", "shortgpt": "equivalent (±0.05)", "tail": "worse"}
    agg = next(v for k, v in tables.items() if k.startswith("summary/aggregate"))
    assert {"ci_low", "ci_high", "verdict"} <= set(agg["columns"])
    assert any(k.startswith("summary/regimes") for k in tables) and any(k.startswith("summary/efficiency") for k in tables)


def test_a_resumed_copy_reads_the_samples_of_the_run_it_came_from(stat_sweep: Path, tmp_path: Path):
    """A job resumed into another sweep dir copies results.json only; its samples are read from
    the run it was resumed from."""
    src = next(stat_sweep.glob("*_tail_s0.25"))
    other = tmp_path / "second" / "0_tail_s0.25"
    other.mkdir(parents=True)
    res = json.loads((src / "results.json").read_text())
    res.update(resumed_from=str(src), out_dir=str(other))
    (other / "results.json").write_text(json.dumps(res))
    best = next(stat_sweep.glob("*_topo_s0.25"))
    shutil.copytree(best, tmp_path / "second" / best.name)
    build_summary([tmp_path / "second"], plots=False)
    comp = {r["scorer"]: r for r in read_csv(tmp_path / "second" / "comparison.csv") if r["metric"] == "accuracy"}
    assert comp["tail"]["verdict"] == "worse" and comp["tail"]["discordant_best_only"] == "40"


# --------------------------------------------------------------------------- results that cannot be trusted

def _failures(md: str) -> dict[str, list[str]]:
    """Failures rows: job dir name -> the other cells."""
    return table_rows(md.split("## Failures", 1)[1], "| job |") if "## Failures" in md else {}


def _summarize(root: Path, capsys) -> tuple[int, str, str]:
    from topovlm.cli import main

    code = main(["summarize", str(root), "--no-plots", "-q"])
    return code, capsys.readouterr().err, (root / "summary.md").read_text()


@pytest.mark.parametrize("damage", ["truncated", "not_json", "not_utf8", "metrics_list", "sparsity_text",
                                    "removed_outside", "newer_schema"])
def test_an_unreadable_or_mismatched_result_is_a_failure_and_exits_1(stat_sweep: Path, capsys, damage):
    job = next(stat_sweep.glob("*_tail_s0.25"))
    path = job / "results.json"
    text = path.read_text()
    data = json.loads(text)
    if damage == "truncated":
        path.write_text(text[: len(text) // 2])
    elif damage == "not_json":
        path.write_text("{'model': 'm'}")
    elif damage == "not_utf8":
        path.write_bytes(b"\xff\xfe" + text.encode())
    else:
        data.update({"metrics_list": {"metrics": [0.4]}, "sparsity_text": {"sparsity": "0.25"},
                     "removed_outside": {"removed_layers": [5, 99]},
                     "newer_schema": {"schema_version": 99}}[damage])
        path.write_text(json.dumps(data))
    code, err, md = _summarize(stat_sweep, capsys)
    assert code == 1 and "could not be trusted" in err
    fails = _failures(md)
    assert job.name in fails, md.split("## Failures", 1)[1]
    assert str(path) in fails[job.name][-1]
    assert "every job finished" not in md
    assert not any(r["out_dir"] == str(job) for r in read_csv(stat_sweep / "summary.csv"))  # in no table
    assert len(read_csv(stat_sweep / "summary.csv")) == 3


def test_a_hand_edited_accuracy_is_inconsistent_not_best(stat_sweep: Path, capsys):
    job = next(stat_sweep.glob("*_tail_s0.25"))  # 40 of 100 correct in its samples.jsonl
    res = json.loads((job / "results.json").read_text())
    res["metrics"]["accuracy"] = 0.99
    (job / "results.json").write_text(json.dumps(res))
    code, err, md = _summarize(stat_sweep, capsys)
    assert code == 1
    fails = _failures(md)
    assert fails[job.name][2] == "inconsistent"
    assert "accuracy=0.99, its 100 samples give 0.4" in fails[job.name][3]
    rows = table_rows(md, "#### m · t · accuracy\n")
    assert "tail" not in rows and rows["topo"][0].startswith("**0.800")  # the true best stays best
    assert "0.990" not in md.split("## Failures", 1)[0]


def test_a_hand_edited_domain_or_multiple_choice_part_is_inconsistent(stat_sweep: Path, capsys):
    topo = next(stat_sweep.glob("*_topo_s0.25"))
    res = json.loads((topo / "results.json").read_text())
    res["metrics"]["accuracy/math"] = round(res["metrics"]["accuracy/math"] - 0.02, 6)
    (topo / "results.json").write_text(json.dumps(res))
    short = next(stat_sweep.glob("*_shortgpt_s0.25"))  # accuracy_mc from the records' correct_mc
    lines = [json.loads(line) for line in (short / "samples.jsonl").read_text().splitlines()]
    (short / "samples.jsonl").write_text("".join(json.dumps({**r, "correct_mc": i < 30}) + "\n" for i, r in enumerate(lines)))
    res = json.loads((short / "results.json").read_text())
    res["metrics"]["accuracy_mc"] = 0.31
    (short / "results.json").write_text(json.dumps(res))
    code, _, md = _summarize(stat_sweep, capsys)
    fails = _failures(md)
    assert code == 1 and set(fails) == {topo.name, short.name}
    assert "accuracy/math=" in fails[topo.name][3] and "samples give" in fails[topo.name][3]
    assert "accuracy_mc=0.31, its 100 samples give 0.3" in fails[short.name][3]


def test_a_broken_samples_file_is_named_with_its_line(stat_sweep: Path, capsys):
    job = next(stat_sweep.glob("*_tail_s0.25"))
    lines = (job / "samples.jsonl").read_text().splitlines(keepends=True)
    (job / "samples.jsonl").write_text("".join(lines[:3]) + lines[3][:20] + "\n" + "".join(lines[4:]))
    code, _, md = _summarize(stat_sweep, capsys)
    assert code == 1 and f"{job / 'samples.jsonl'}, line 4" in _failures(md)[job.name][3]


def test_a_consistent_sweep_and_a_perplexity_check(tmp_path: Path, capsys, stat_sweep: Path):
    code, err, md = _summarize(stat_sweep, capsys)
    assert code == 0 and err == "" and "every job finished" in md
    # perplexity: exp(sum nll_sum / sum num_tokens) over the samples
    import math

    root = tmp_path / "ppl"
    for scorer, nll, ok in (("cosine", 2.0, True), ("tail", 3.0, False)):
        out = fake_job(root, scorer, 0.25, 0.0, metric="perplexity", removed=[5, 6])
        res = json.loads((out / "results.json").read_text())
        true_nll = (nll * 10 + 1.0 * 30) / 40
        res["metrics"] = {"perplexity": math.exp(true_nll) * (1.0 if ok else 0.9), "nll": true_nll, "num_tokens": 40.0}
        (out / "results.json").write_text(json.dumps(res))
        (out / "samples.jsonl").write_text(
            json.dumps({"key": "t/a", "id": "a", "nll_sum": nll * 10, "num_tokens": 10}) + "\n"
            + json.dumps({"key": "t/b", "id": "b", "nll_sum": 30.0, "num_tokens": 30}) + "\n")
    code, _, md = _summarize(root, capsys)
    fails = _failures(md)
    assert code == 1 and list(fails) == [next(root.glob("*_tail_*")).name] and "perplexity=" in next(iter(fails.values()))[3]


def test_summary_md_opens_with_the_verdict_and_gives_the_legend_once(stat_sweep: Path):
    build_summary([stat_sweep], plots=False)
    md = (stat_sweep / "summary.md").read_text()
    section = md.split("## m · t", 1)[1]
    # the answer comes first: before any table
    assert section.lstrip().startswith("**Verdict** (accuracy, higher is better; n = 100 questions;")
    verdict = section.split("####", 1)[0]
    line = next(ln for ln in verdict.splitlines() if ln.startswith("- **0.25**"))
    assert line.startswith("- **0.25**: best **topo** accuracy = 0.800 [95% CI 0.")
    assert "cannot be told from it: shortgpt; shown worse: tail" in line and "(1 calibration draw per scorer)" in line
    assert "Unpruned: 0.900 [95% CI" in verdict
    # one legend and one family note for the per-domain tables, not one per table
    assert md.count("**bold** = best scorer at that sparsity") == 1
    assert md.count("_exploratory (Holm within each sparsity") == 1
    assert md.index("**Verdict**") < md.index("| sparsity | scorer |") < md.index("#### m · t · accuracy/math")


def test_plots_that_need_three_scorers_appear_with_three(stat_sweep: Path):
    from topovlm.summary.plots import chance_level

    s = build_summary([stat_sweep])
    names = {p.name for p in s.plots}
    assert {"agreement__m.png", "regimes__m__t.png", "metric_vs_sparsity__m__t.png", "comparison__m__t.png"} <= names
    assert chance_level(s, "m", "t") == 1.0  # every question's category has one answer ("yes"): a sure guess


def test_topo_activity_plot_says_whether_epi_entered_the_decision():
    from topovlm.topo.plots import epi_role

    assert epi_role({"epi": {"mix": 0.0}}).startswith("EPI did not enter the decision (epi_mix=0)")
    assert epi_role({"epi": {"mix": 0.3}}).startswith("EPI entered the decision")
