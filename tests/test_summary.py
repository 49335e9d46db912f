"""The sweep summary: CSV, Markdown, plots, ranking agreement, the CLI, the W&B summary run."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import ROOT
from topovlm.summary import build_summary, jaccard, kendall_tau

NUM_LAYERS = 8
COSINE_RED = [0, 1, 2, 3, 4, 7, 6, 5]
TOPO_RED = [0, 1, 2, 3, 4, 5, 6, 7]


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
        "config": {"model": {"name": model}, "task": {"name": task}, "scorer": {"name": scorer, **params},
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
    assert names == ["agreement__m.png", "metric_vs_sparsity__m__t.png", "removed_layers__m.png",
                     "score_profiles__m.png"]
    for p in s.plots:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 300 and im.height > 200
            assert len(set(im.convert("L").getdata())) > 10  # something was drawn
    # one panel per metric: headline + the two domains, side by side
    with Image.open(sweep / "plots" / "metric_vs_sparsity__m__t.png") as im:
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
    proc = subprocess.run([sys.executable, "-m", "topovlm.summary", str(sweep), "-o", str(tmp_path / "o"), "--no-plots"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| *unpruned (reference)* | 0.900 | 0.900 |" in proc.stdout
    assert len(read_csv(tmp_path / "o" / "summary.csv")) == 6


def test_wandb_summary_run_offline(sweep: Path, tmp_path: Path):
    from topovlm.wandb_summary import log_summary_run

    s = build_summary([sweep])
    run_dir = log_summary_run(s, {"enabled": True, "mode": "offline", "project": "topovlm-test",
                                  "dir": str(tmp_path / "wb")}, group="sweep-test_group")
    assert run_dir is not None and run_dir.name.startswith("offline-run-")
    assert run_dir.parent == sweep / "wandb"  # next to summary.csv, not with the jobs' runs
    raw = b""
    for _ in range(60):  # the offline transaction log can land shortly after finish() returns
        raw = next(run_dir.glob("*.wandb")).read_bytes()
        if b"summary/jobs" in raw:
            break
        time.sleep(0.5)
    assert b"sweep-test_group" in raw and b"summary/jobs" in raw
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


# The multirun-end callback on real sweeps: tests/test_launchers.py (joblib, submitit) and
# tests/test_resume.py (the basic launcher, a re-run with seeds).


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
