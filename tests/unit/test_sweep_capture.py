"""One calibration pass per model per sweep: the sweep-start plan (capture_plan.json), the union
pass that records what every swept scorer needs, and captures served from it that equal each
scorer's own pass, array for array."""
from __future__ import annotations

import json
import logging
from functools import reduce
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf, open_dict

import topovlm.capture as capture_module
from tests.helpers import CONF, make_samples, tiny_overrides
from topovlm.api import CaptureSpec
from topovlm.capture_cache import PASSES_FILE, PLAN_FILE, CaptureCache
from topovlm.config import build_scorer

SWEPT = ("topo", "cosine", "shortgpt", "short_lvlm")


def assert_same_capture(served, own) -> None:
    """Every field a scorer reads, exactly (NaNs in the same places)."""
    assert (served.num_layers, served.sample_ids, served.domains, served.meta) == \
           (own.num_layers, own.sample_ids, own.domains, own.meta)
    for name in ("pooled", "stats", "norms"):
        a, b = getattr(served, name), getattr(own, name)
        assert sorted(a) == sorted(b), name  # no field more, none less
        for k in a:
            assert a[k].dtype == b[k].dtype, (name, k)
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}[{k}]")


def test_an_entry_of_one_scorer_gets_the_rest_of_the_union_in_one_pass(tiny_llava, tmp_path):
    """An entry an earlier run made for cosine alone (pooled states): the next scorer's pass adds
    what every other swept scorer lacks, and the last scorer runs none."""
    samples = make_samples(6)
    cosine, shortgpt, topo = (build_scorer({"name": n}) for n in ("cosine", "shortgpt", "topo"))
    union = reduce(lambda a, b: a | b, [s.capture_spec() for s in (cosine, shortgpt, topo)])
    cache = CaptureCache(tmp_path / "union")
    cache.get("k", lambda: tiny_llava, lambda: samples, cosine.capture_spec(), 3)  # no plan: its own fields
    shortgpt_cap = cache.get("k", lambda: tiny_llava, lambda: samples, shortgpt.capture_spec(), 3, record=union,
                             recorded_for=["cosine", "shortgpt", "topo"])
    topo_cap = cache.get("k", lambda: tiny_llava, lambda: samples, topo.capture_spec(), 3, record=union,
                         recorded_for=["cosine", "shortgpt", "topo"])
    assert cache.forward_passes == 2 and cache.last_hit
    # the pooled states came from cosine's own pass: not served by a union pass alone
    assert cache.last_union is None
    passes = json.loads((tmp_path / "union" / "k" / PASSES_FILE).read_text())["passes"]
    assert [p["recorded"] for p in passes] == [["pooled"], ["token_cos(tokens=all)", "norms"]]
    for scorer, served in ((shortgpt, shortgpt_cap), (topo, topo_cap)):
        own = CaptureCache(tmp_path / scorer.name).get("k", lambda: tiny_llava, lambda: samples,
                                                       scorer.capture_spec(), 3)
        assert_same_capture(served, own)


def _sweep(tmp: Path, scorers: tuple[str, ...], union_capture: bool = True, **params: str):
    """The sweep's master config (Hydra's, as the launcher hands it to callbacks) and its jobs."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from topovlm.callbacks import SweepGuard, job_configs
    from topovlm.config import register_configs

    register_configs()
    # calibration.n=18: topo's k=15 needs N - 1 > k
    overrides = tiny_overrides(tmp, "calibration.n=18")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        master = hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
        OmegaConf.set_readonly(master.hydra, False)
        with open_dict(master):
            master.hydra.sweep.dir = str(tmp / "sweep")
            master.hydra.sweeper.params = {"scorer": ",".join(scorers), "sparsity": "0.25", **params}
        SweepGuard(preflight=False, union_capture=union_capture).on_multirun_start(master)
        return master, [cfg for _, cfg in job_configs(master)]


def _run_score(cfg, out_dir: Path, sweep_dir: Path | None):
    """prepare -> calibration samples -> load -> score, as run_job runs them: the capture the
    scorer was given, and the ranking."""
    from topovlm.capture_cache import model_fingerprint
    from topovlm.model_pool import POOL
    from topovlm.runner import Timer, calibration_samples, load_model, prepare, score

    job = prepare(cfg, out_dir, sweep_dir, "test", None)
    given = []
    scorer_score = job.scorer.score
    job.scorer.score = lambda capture, ctx: given.append(capture) or scorer_score(capture, ctx)  # type: ignore[method-assign]
    samples = calibration_samples(job)
    adapter = load_model(job)
    try:
        timer = Timer(tag=f"{job.scorer.name} s=0.25")
        ranking = score(job, adapter, model_fingerprint(adapter), samples, timer)
    finally:
        POOL.release(adapter)
    assert len(given) == 1 and not ranking.from_cache
    return given[0], ranking


@pytest.fixture
def passes(monkeypatch):
    """The calibration passes run, as the specs they recorded."""
    recorded = []
    real = capture_module.run_capture

    def counting(adapter, samples, spec=CaptureSpec(), batch_size=16, **kw):
        recorded.append(spec)
        return real(adapter, samples, spec, batch_size, **kw)

    monkeypatch.setattr(capture_module, "run_capture", counting)
    return recorded


def test_a_sweep_of_four_scorers_runs_one_pass_per_attention_kind_and_serves_each_its_own_capture(
        tmp_path, passes, caplog):
    master, jobs = _sweep(tmp_path, SWEPT)
    sweep_dir = Path(master.hydra.sweep.dir)
    plan = json.loads((sweep_dir / PLAN_FILE).read_text())
    (group,) = plan["groups"].values()
    assert [(p["scorer"], p["eager_attention"]) for p in group["scorers"]] == \
           [("topo", False), ("cosine", False), ("shortgpt", False), ("short_lvlm", True)]
    assert [cfg.scorer.name for cfg in jobs] == list(SWEPT)

    caplog.set_level(logging.INFO, logger="topovlm.runner")
    served = {cfg.scorer.name: _run_score(cfg, tmp_path / "sweep" / str(i), sweep_dir) for i, cfg in enumerate(jobs)}
    # topo's pass records what cosine and shortgpt need too; short_lvlm's statistic reads attention
    # maps (eager attention, states that differ in the last bits): a pass and an entry of its own
    assert len(passes) == 2
    assert passes[0].norms and [r.key for r in passes[0].stats] == ["token_cos(tokens=all)"]
    assert [r.name for r in passes[1].stats] == ["tis_cos"] and not passes[1].norms
    keys = {name: r.cache["capture"]["key"] for name, (_, r) in served.items()}
    assert keys["topo"] == keys["cosine"] == keys["shortgpt"] != keys["short_lvlm"]
    assert [served[n][1].cache["capture"]["hit"] for n in SWEPT] == [False, True, True, False]
    assert "[topo s=0.25] the calibration pass recorded what topo, cosine, shortgpt need" in caplog.text
    for name in ("cosine", "shortgpt"):
        assert f"[{name} s=0.25] capture served from the sweep's union pass (recorded for cosine, shortgpt, topo)" \
               in caplog.text

    # each scorer alone, in a cache of its own and outside any sweep: its own pass
    own_passes = len(passes)
    for i, cfg in enumerate(jobs):
        own_cfg = cfg.copy()
        own_cfg.cache_dir = str(tmp_path / f"own-{i}")
        own, _ = _run_score(own_cfg, tmp_path / "own" / str(i), None)
        assert_same_capture(served[cfg.scorer.name][0], own)
    assert len(passes) - own_passes == len(SWEPT)  # one each: the comparison is with real passes


def test_without_the_plan_each_scorer_records_its_own_pass(tmp_path, passes):
    """The plan decides what a pass records, nothing else: with union_capture=false the same
    sweep runs a pass per scorer that needs a field the cache lacks."""
    _sweep(tmp_path, ("topo", "cosine", "shortgpt"))
    master, jobs = _sweep(tmp_path, ("topo", "cosine", "shortgpt"), union_capture=False)
    sweep_dir = Path(master.hydra.sweep.dir)
    assert not (sweep_dir / PLAN_FILE).exists()  # the first sweep's plan is not this one's
    for i, cfg in enumerate(jobs):
        _run_score(cfg, sweep_dir / str(i), sweep_dir)
    # topo: pooled and norms; cosine: nothing new; shortgpt: its statistic
    assert [(p.norms, [r.key for r in p.stats]) for p in passes] == [(True, []), (False, ["token_cos(tokens=all)"])]


def test_the_plan_skips_bad_jobs_and_has_a_group_per_calibration_set(tmp_path):
    # sparsity=1.5 jobs are bad config (they fail on their own); calibration seeds: one capture
    # entry each, so a group (and a pass) each
    master, jobs = _sweep(tmp_path, ("topo", "shortgpt"), sparsity="0.25,1.5", **{"calibration.seed": "0,1"})
    assert len(jobs) == 8
    groups = json.loads((Path(master.hydra.sweep.dir) / PLAN_FILE).read_text())["groups"]
    assert sorted(g["calibration"].rsplit(":", 1)[-1] for g in groups.values()) == ["seed=0", "seed=1"]
    assert all([p["scorer"] for p in g["scorers"]] == ["topo", "shortgpt"] for g in groups.values())
