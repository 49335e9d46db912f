"""JobResult: what run_job returns and results.json holds; one identity-exclusion list; metric
directions from the evaluator, never from a metric's name."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import compose, tiny_overrides
from topovlm.results import (NOT_IDENTITY, RESULTS_FILE, SCHEMA_VERSION, JobResult, SchemaVersionError, read_result,
                             write_result)
from topovlm.summary import NOT_VARIANT, build_summary, load_jobs


def result(scorer: str = "cosine", sparsity: float = 0.25, value: float = 0.5, *, metric: str = "accuracy",
           config: dict | None = None, key: str | None = None, **fields) -> JobResult:
    cfg = {"model": {"name": "m"}, "task": {"name": "t", "evaluator": "vqa"}, "scorer": {"name": scorer},
           "sparsity": sparsity, "seed": 0, "calibration": {"seed": 0}, **(config or {})}
    return JobResult(model="m", task="t", scorer=scorer, sparsity=sparsity, seed=0, metrics={metric: value},
                     num_layers=8, num_layers_kept=6, removed_layers=[5, 6], redundancy=list(range(8)), config=cfg,
                     job_key=key or f"{scorer}-{sparsity}-{json.dumps(config, sort_keys=True)}", **fields)


def write(root: Path, name: str, res: JobResult | dict) -> Path:
    out = root / name
    out.mkdir(parents=True)
    if isinstance(res, JobResult):
        res.out_dir = str(out)
        write_result(out / RESULTS_FILE, res)
    else:
        (out / RESULTS_FILE).write_text(json.dumps(res))
    return out


# --------------------------------------------------------------------------- serialisation

def test_results_json_round_trips_and_keeps_its_keys(tmp_path: Path):
    res = result(extra={"topology": {"eps": 0.1}}, metric_directions={"accuracy": True})
    out = write(tmp_path, "0_job", res)
    data = json.loads((out / RESULTS_FILE).read_text())
    assert list(data)[0] == "schema_version" and data["schema_version"] == SCHEMA_VERSION
    assert data["topology"] == {"eps": 0.1} and "extra" not in data  # a scorer's section at the top level
    assert "resumed_from" not in data and "linked_outputs" not in data  # computed, not copied
    assert {"model", "task", "scorer", "sparsity", "seed", "metrics", "removed_layers", "kept_layers", "redundancy",
            "scores", "reference_metrics", "efficiency", "timings", "protocol", "config", "identity", "job_key",
            "out_dir", "wandb_group", "wandb", "metric_directions"} <= set(data)
    back = read_result(out / RESULTS_FILE)
    assert back == res
    assert back["topology"] == back.extra["topology"] and back["metrics"] is back.metrics  # the JSON view
    assert "resumed_from" not in back and back.get("resumed_from") is None
    copy = back.with_changes(resumed_from="/elsewhere")
    assert copy["resumed_from"] == "/elsewhere" and json.loads(json.dumps(copy.to_dict()))["resumed_from"] == "/elsewhere"


def test_the_unversioned_layout_still_loads_and_summarises(tmp_path: Path):
    legacy = result().to_dict()
    del legacy["schema_version"], legacy["metric_directions"]
    write(tmp_path, "0_cosine", legacy)
    write(tmp_path, "1_cosine", {**legacy, "sparsity": 0.0, "removed_layers": [], "job_key": "ref",
                                 "metrics": {"accuracy": 0.9}})
    loaded = read_result(tmp_path / "0_cosine" / RESULTS_FILE)
    assert loaded is not None and loaded.schema_version == SCHEMA_VERSION and loaded.metric_directions == {}
    s = build_summary([tmp_path], plots=False)
    assert len(s.jobs) == 2 and "unpruned (reference)" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, "2", 0])
def test_an_unknown_schema_version_is_refused_clearly(tmp_path: Path, version):
    data = {**result().to_dict(), "schema_version": version}
    out = write(tmp_path, "0_job", data)
    with pytest.raises(SchemaVersionError, match="schema_version"):
        read_result(out / RESULTS_FILE)
    with pytest.raises(SchemaVersionError, match=re.escape(str(out / RESULTS_FILE))):
        load_jobs([tmp_path])
    if version == SCHEMA_VERSION + 1:
        with pytest.raises(SchemaVersionError, match="newer than this topovlm reads"):
            JobResult.from_dict(data)


def test_an_incomplete_dict_is_no_result(tmp_path: Path):
    data = result().to_dict()
    del data["metrics"]
    out = write(tmp_path, "0_job", data)
    assert read_result(out / RESULTS_FILE) is None
    assert load_jobs([tmp_path]) == []


# --------------------------------------------------------------------------- one identity-exclusion list

def _value(key: str, i: int):
    return {"logger": {"wandb": {"mode": ["disabled", "offline"][i]}}, "num_threads": [None, 1][i]}.get(key, [False, True][i])


@pytest.mark.parametrize("key", NOT_IDENTITY)
def test_jobs_differing_only_in_a_non_identity_key_share_a_label(tmp_path: Path, key: str):
    for i in range(2):
        write(tmp_path, f"{i}_cosine", result(value=0.4 + 0.1 * i, config={key: _value(key, i)}, key=f"k{i}"))
    labels = {j.label for j in load_jobs([tmp_path])}
    assert labels == {"cosine"}, f"{key} split one scorer into {labels}"


def test_a_method_key_still_splits_labels(tmp_path: Path):
    for i, pooling in enumerate(("last", "text_mean")):
        write(tmp_path, f"{i}_cosine", result(config={"scorer": {"name": "cosine", "pooling": pooling}}))
    assert {j.label for j in load_jobs([tmp_path])} == {"cosine[pooling=last]", "cosine[pooling=text_mean]"}


def test_the_runner_and_the_summary_read_the_same_list():
    import topovlm.runner as runner

    assert runner.NOT_IDENTITY is NOT_IDENTITY
    assert set(NOT_IDENTITY) <= set(NOT_VARIANT)
    base = ["model=tiny_llava", "logger=none"]
    assert runner.job_key(compose(base)) == runner.job_key(compose([*base, "num_threads=1", "reuse_model=false",
                                                                    "reference=false"]))


# --------------------------------------------------------------------------- metric directions

def test_direction_comes_from_the_recorded_evaluator_direction_not_the_name(tmp_path: Path):
    # "wer" names no lower-is-better word; "time_to_answer" contains one: their recorded direction rules
    for i, (scorer, wer, tta) in enumerate((("cosine", 0.2, 5.0), ("tail", 0.4, 9.0))):
        res = result(scorer, value=wer, metric="wer", key=scorer, metric_directions={"wer": False,
                                                                                     "time_to_answer": True})
        res.metrics["time_to_answer"] = tta
        write(tmp_path, f"{i}_{scorer}", res)
    s = build_summary([tmp_path], plots=False)
    tables = {t.metric: t for t in s.tables}
    assert tables["wer"].lower_is_better and tables["wer"].best(0.25) == ["cosine"]
    assert tables["time_to_answer"].higher_is_better and tables["time_to_answer"].best(0.25) == ["tail"]
    md = (tmp_path / "summary.md").read_text()
    assert "#### m · t · wer\n\nlower is better" in md and "#### m · t · time_to_answer\n\nhigher is better" in md


def test_legacy_results_ask_the_evaluator_registry_then_the_default(tmp_path: Path):
    from topovlm.summary import DEFAULT_HIGHER_IS_BETTER, higher_is_better

    ppl = result(config={"task": {"name": "t", "evaluator": "perplexity"}})
    assert higher_is_better([ppl], "nll") is False and higher_is_better([ppl], "perplexity") is False
    vqa = result()
    assert higher_is_better([vqa], "accuracy/math") is True
    unknown = result(config={"task": {"name": "t", "evaluator": "no_such_evaluator"}})
    assert higher_is_better([unknown], "loss") is DEFAULT_HIGHER_IS_BETTER
    assert higher_is_better([result(metric_directions={"nll": True}), ppl], "nll") is True  # recorded first


def test_lmms_directions_are_lmms_evals_own():
    from topovlm.evaluation.lmms import extract_directions

    results = {"results": {"mme": {"alias": "mme", "mme_perception_score,none": 1400.0,
                                   "mme_perception_score_stderr,none": 3.0},
                           "chair": {"chair_i,none": 0.2, "chair_s,flt": 0.4}},
               "higher_is_better": {"mme": {"mme_perception_score": True}, "chair": {"chair_i": False, "chair_s": None}}}
    assert extract_directions(results, {}, prefix=True) == {"mme/mme_perception_score": True, "chair/chair_i": False}


def test_run_job_returns_a_job_result_with_the_evaluators_directions(tmp_path: Path):
    from topovlm.runner import run_job

    res = run_job(compose(tiny_overrides(tmp_path, "sparsity=0.25", "scorer=tail")), tmp_path / "job")
    assert isinstance(res, JobResult)
    on_disk = json.loads((tmp_path / "job" / RESULTS_FILE).read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION
    assert on_disk["metric_directions"]["accuracy"] is True and "num_samples" not in on_disk["metric_directions"]
    assert set(on_disk["metric_directions"]) <= set(on_disk["metrics"])
    assert read_result(tmp_path / "job" / RESULTS_FILE).metrics == res.metrics
