"""No cache or output format can run code when read, and no config value writes outside its root.

Classes of fault (docs/reliability.md, "A shared cache"): a planted pickle in a shared cache,
a reader that could unpickle, a config name that is a path (``../``, absolute, NUL, too long),
a pooled model edited where the old fingerprint did not look, a job dir holding another job's
result, a scorer that fails after its capture is recorded as failing in ``score``.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, compose
from topovlm.api import ScoreResult
from topovlm.config import ConfigError
from topovlm.ranking_store import load_ranking, save_ranking
from topovlm.runner import run_job
from topovlm.storage import MAX_NAME, OutsideRoot, inside, safe_name


def overrides(tmp: Path, *extra: str) -> list[str]:
    return ["debug=smoke", "scorer=shortgpt", f"cache_dir={tmp / 'cache'}", *extra]


# ------------------------------------------------------------------ no code in caches

_UNSAFE_READS = re.compile(r"\bpickle\b|\bcloudpickle\b|\bdill\b|allow_pickle\s*=\s*True|weights_only\s*=\s*False|"
                           r"torch\.load\((?![^)]*weights_only\s*=\s*True)")


def test_no_reader_in_the_package_can_unpickle():
    offenders = []
    for folder in ("topovlm", "baselines"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                if _UNSAFE_READS.search(code):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


class _RunsCode:
    def __reduce__(self):
        return (Path.write_text, (Path(_RunsCode.target), "pwned"))


def test_a_planted_pickle_in_a_shared_cache_runs_nothing(tmp_path):
    run_job(compose(overrides(tmp_path, "sparsity=0.25")), tmp_path / "a")
    [entry] = [p for p in (tmp_path / "cache" / "scores").rglob("shortgpt-*") if not p.name.endswith(".lock")]
    assert entry.suffix == ".npz"
    _RunsCode.target = str(tmp_path / "PWNED")
    entry.write_bytes(pickle.dumps(_RunsCode()))  # a group member's planted payload
    res = run_job(compose(overrides(tmp_path, "sparsity=0.5")), tmp_path / "b")
    assert not (tmp_path / "PWNED").exists()
    assert not res["scores_from_cache"]  # recomputed
    assert list(entry.parent.glob(entry.name + ".corrupt-*")), "the payload is kept as evidence"


def test_a_ranking_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    cost = rng.normal(size=(5, 4))
    cost[4, 1:] = np.nan
    result = ScoreResult(scores=[0.1, np.nan, 3.0, -1.0], redundancy=[1.0, 2.0, 3.0, 4.0], block_cost=cost,
                         extra={"topology": {"bars": [[0, 1.5]], "nan": float("nan")}, "n": np.int64(3)},
                         decision=[2, 3], arrays={"clouds": rng.normal(size=(3, 4, 2)).astype(np.float32)})
    back = load_ranking(save_ranking(tmp_path / "r.npz", result), 4)
    np.testing.assert_array_equal(back.scores, result.scores)
    np.testing.assert_array_equal(back.redundancy, result.redundancy)
    np.testing.assert_array_equal(back.block_cost, cost)
    assert back.decision == [2, 3] and back.extra["n"] == 3 and back.extra["topology"]["bars"] == [[0, 1.5]]
    assert back.arrays["clouds"].dtype == np.float32
    np.testing.assert_array_equal(back.arrays["clouds"], result.arrays["clouds"])
    with pytest.raises(ValueError, match="5 layers"):
        load_ranking(tmp_path / "r.npz", 5)


# ------------------------------------------------------------------ paths stay in their roots

HOSTILE = {"dotdot": "../../../../elsewhere/PWNED", "absolute": "/tmp/PWNED-abs", "nul": "a\x00b",
           "long": "x" * 400, "dot": "..", "hidden": ".bashrc"}


@pytest.mark.parametrize("value", list(HOSTILE.values()), ids=list(HOSTILE))
def test_safe_name_is_one_component_and_injective(value):
    name = safe_name(value)
    assert "/" not in name and "\x00" not in name and not name.startswith(".") and len(name) <= MAX_NAME
    assert safe_name(value + "1") != name
    assert safe_name("llava-1.5-7b") == "llava-1.5-7b"  # ordinary names are unchanged


def test_inside_refuses_a_path_that_resolves_elsewhere(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(OutsideRoot):
        inside(tmp_path / "root", tmp_path / "root" / ".." / "x")
    with pytest.raises(OutsideRoot):
        inside(tmp_path / "root", tmp_path / "root" / "link" / "x")
    assert inside(tmp_path / "root", tmp_path / "root" / "a" / "b")


@pytest.mark.parametrize("key", ["model.name", "task.name"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "long"])
def test_config_names_never_write_outside_the_cache_and_the_job_dir(key, kind, tmp_path):
    work = tmp_path / "work"
    value = HOSTILE[kind].replace("/tmp/", f"{tmp_path}/")
    run_job(compose(overrides(work, "sparsity=0.25", f"{key}='{value}'")), work / "job")
    written = {p for p in tmp_path.rglob("*")}
    outside = [p for p in written if not (p == work or work in p.parents)]
    assert not outside, outside
    assert json.loads((work / "job" / "results.json").read_text())["config"][key.split(".")[0]]["name"] == value


# ------------------------------------------------------------------ no silent wrong numbers

def test_a_pooled_model_edited_where_the_fingerprint_does_not_sample_is_not_reused():
    from topovlm.adapters.loading import load_adapter
    from topovlm.capture_cache import model_fingerprint
    from topovlm.model_pool import ModelPool

    cfg = compose(["debug=smoke"]).model
    pool = ModelPool()
    adapter = pool.acquire(cfg, load_adapter)
    before = model_fingerprint(adapter)
    weight = adapter.decoder_layers()[1].mlp.down_proj.weight
    weight.data.view(-1)[1] += 1.0  # one element the strided fingerprint skips, edited behind autograd
    assert model_fingerprint(adapter) == before  # the sampled fingerprint cannot see it ...
    pool.release(adapter)
    again = pool.acquire(cfg, load_adapter)
    assert again is not adapter and pool.loads == 2  # ... the full checksum does: a fresh model


def test_a_job_dir_holding_another_jobs_result_is_kept(tmp_path):
    first = run_job(compose(overrides(tmp_path, "sparsity=0.25", "seed=0")), tmp_path / "job")
    with pytest.raises(ConfigError, match=r"another job \(seed: 0 -> 5\).*\+force=true"):
        run_job(compose(overrides(tmp_path, "sparsity=0.25", "seed=5")), tmp_path / "job")
    kept = json.loads((tmp_path / "job" / "results.json").read_text())
    assert kept["job_key"] == first.job_key and kept["seed"] == 0
    forced = run_job(compose(overrides(tmp_path, "sparsity=0.25", "seed=5", "+force=true")), tmp_path / "job")
    assert forced.seed == 5


def test_a_refused_job_shows_as_failed_in_the_table_and_the_summary(tmp_path):
    from topovlm.app import failure_record
    from topovlm.results import rebuild_table, write_failure
    from topovlm.summary.load import load_failures, load_jobs

    run_job(compose(overrides(tmp_path, "sparsity=0.25", "seed=0")), tmp_path / "sweep" / "0_job")
    cfg = compose(overrides(tmp_path, "sparsity=0.25", "seed=5"))
    with pytest.raises(ConfigError) as err:
        run_job(cfg, tmp_path / "sweep" / "0_job")
    write_failure(tmp_path / "sweep" / "0_job", failure_record(cfg, tmp_path / "sweep" / "0_job", err.value))
    [row] = rebuild_table(tmp_path / "sweep")
    assert row["status"] == "failed" and "another job" in row["error"]
    assert load_jobs([tmp_path / "sweep"]) == [] and len(load_failures([tmp_path / "sweep"])) == 1


def test_a_scorer_failure_is_recorded_at_score_and_a_bad_ranking_is_never_cached(tmp_path, monkeypatch):
    from baselines.shortgpt import ShortGPTScorer

    def short(self, capture, ctx):
        return ScoreResult(scores=np.zeros(3), redundancy=np.zeros(3))

    monkeypatch.setattr(ShortGPTScorer, "score", short)
    with pytest.raises(RuntimeError, match="3 scores for 12 layers") as err:
        run_job(compose(overrides(tmp_path, "sparsity=0.25")), tmp_path / "a")
    assert err.value.topovlm_stage == "score"
    assert not [p for p in (tmp_path / "cache" / "scores").rglob("*.npz")]


def test_the_on_device_checksum_sees_one_changed_element_and_an_exchange():
    from topovlm.model_pool import device_sums

    w = torch.randn(5000).view(torch.int32)
    base = device_sums(w)
    changed = w.clone()
    changed[3000] += 1
    swapped = w.clone()
    swapped[[10, 2000]] = w[[2000, 10]]
    assert device_sums(changed) != base and device_sums(swapped) != base and device_sums(w.clone()) == base


def test_a_tie_that_decides_the_removal_is_recorded_in_the_result(tmp_path, monkeypatch):
    from baselines.tail import TailScorer

    def constant(self, capture, ctx):
        return ScoreResult(scores=np.ones(ctx.num_layers), redundancy=np.ones(ctx.num_layers))

    monkeypatch.setattr(TailScorer, "score", constant)
    res = run_job(compose(overrides(tmp_path, "scorer=tail", "sparsity=0.25")), tmp_path / "a")
    [note] = res["selection_warnings"]
    assert "the same redundancy" in note and "lower layer index removed first" in note
    assert json.loads((tmp_path / "a" / "results.json").read_text())["selection_warnings"] == [note]
