"""Launcher presets: joblib runs jobs in parallel for real, the SLURM preset renders the sbatch
script a cluster would get, submitit's local executor runs a small sweep; experiment configs compose."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers import CONF, ROOT

TINY = ["debug=smoke", "task.dataset.n=8"]


def sweep(tmp_path: Path, *args: str, logger: str = "logger=none", timeout: int = 400) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch.py", "-m", *TINY, logger, f"cache_dir={tmp_path / 'cache'}",
           f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def summary_rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def hydra_compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from topovlm.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


@pytest.mark.slow
def test_joblib_runs_jobs_in_parallel_and_the_summary_is_printed_at_the_end(tmp_path: Path):
    proc = sweep(tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "task=text_ppl", "task.limit=2",
                 "scorer=cosine,tail", "sparsity=0,0.25")
    log = proc.stdout + proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in log
    out = tmp_path / "sweep"
    assert len((out / "results.jsonl").read_text().splitlines()) == 4  # every process appended its row
    # the multirun-end callback, in the launching process: CSV, terminal table, plots
    rows = summary_rows(out)
    assert len(rows) == 4 and {r["scorer"] for r in rows} == {"cosine", "tail"}
    ppl = {(r["scorer"], float(r["sparsity"])): float(r["perplexity"]) for r in rows}
    assert ppl[("cosine", 0.0)] == pytest.approx(ppl[("tail", 0.0)])  # both are the unpruned model
    assert next(r for r in rows if r["scorer"] == "tail" and r["sparsity"] == "0.25")["removed_layers"] == "8 9 10"
    table = {}
    for line in proc.stdout.split("#### tiny-llava · text_ppl · perplexity", 1)[1].splitlines():
        if line.startswith("| ") and not line.startswith("| scorer"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            table[cells[0]] = cells[1:]
        elif table:
            break
    ref = ppl[("cosine", 0.0)]
    # the reference cell: the value, then its 95% interval
    assert table["*unpruned (reference)*"][0].split(" [")[0] == (f"{ref:.1f}" if ref >= 100 else f"{ref:.3f}")
    best = min(("cosine", "tail"), key=lambda sc: ppl[(sc, 0.25)])
    assert table[best][0].startswith("**") and not table[({"cosine", "tail"} - {best}).pop()][0].startswith("**")
    plots = {p.name for p in (out / "plots").iterdir()}
    assert plots >= {"metric_vs_sparsity__tiny-llava__text_ppl.png", "removed_layers__tiny-llava.png"}
    assert "agreement__tiny-llava.png" not in plots  # two scorers: the agreement is one number, in summary.md


def test_joblib_preset_composes_to_the_plugin():
    cfg = hydra_compose(["hydra/launcher=joblib"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == 2 and cfg.hydra.launcher.prefer == "processes"


def test_slurm_preset_renders_an_sbatch_script_with_one_gpu_per_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import submitit
    import submitit.slurm.slurm as slurm
    from hydra.core.hydra_config import HydraConfig
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    cfg = hydra_compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90",
                         "hydra.launcher.mem_gb=48", "hydra.launcher.account=proj", f"hydra.sweep.dir={tmp_path}"])
    HydraConfig.instance().set_config(cfg)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params.pop("_target_") == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert params["gpus_per_node"] == 1 and params["tasks_per_node"] == 1
    # what SlurmLauncher.launch does with these parameters, up to the sbatch file
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")  # no srun on this machine
    executor = submitit.AutoExecutor(cluster="slurm", folder=params["submitit_folder"],
                                     slurm_max_num_timeout=params["max_num_timeout"])
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    script = executor._executor._make_submission_file_text("python -u launch.py", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90", "#SBATCH --mem=48GB",
                 "#SBATCH --account=proj", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=8"):
        assert line in script, script
    assert f"{tmp_path}/.submitit/" in script  # job logs next to the sweep, on the shared filesystem


@pytest.mark.slow
def test_submitit_local_runs_a_small_sweep_logged_to_wandb_offline(tmp_path: Path):
    wb = tmp_path / "wb"
    sweep(tmp_path, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1",
          "scorer=tail", "sparsity=0.25", f"logger.wandb.dir={wb}", logger="logger=wandb")
    out = tmp_path / "sweep"
    rows = summary_rows(out)
    assert [(r["scorer"], r["removed_layers"]) for r in rows] == [("tail", "8 9 10")]
    logs = list((out / ".submitit").rglob("*_log.out"))
    assert logs and any("Job completed successfully" in p.read_text() for p in logs)
    # the job's run (in the submitit process) and the summary run (in the launching process),
    # both offline, in the same group: the sweep id
    job_runs = list((wb / "wandb").glob("offline-run-*"))
    summary_runs = list((out / "wandb").glob("offline-run-*"))  # next to summary.csv
    assert len(job_runs) == 1 and len(summary_runs) == 1
    group = f"sweep-{out.parent.name}_{out.name}".encode()
    assert all(group in next(r.glob("*.wandb")).read_bytes() for r in job_runs + summary_runs)
    assert (summary_runs[0] / "files" / "media" / "table" / "summary").is_dir()


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_for_every_job_of_its_sweep(name: str):
    from hydra.core.global_hydra import GlobalHydra

    raw = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    params = {k: str(v).split(",") for k, v in OmegaConf.to_container(raw.hydra.sweeper.params).items()}
    assert "sparsity" in params and "scorer" in params
    assert all(0.0 <= float(s) < 1.0 for s in params["sparsity"])
    # the unpruned reference row: a sparsity-0 job, or every pruned job's reference_metrics
    assert "0" in params["sparsity"] or OmegaConf.select(raw, "reference", default=True)
    defaults = [d for d in OmegaConf.to_container(raw.defaults) if isinstance(d, dict)]
    hydra_compose([])  # initialise the config search path
    missing = []
    for group, options in [("task", params.get("task", [])), ("scorer", params["scorer"]),
                           *[(k.removeprefix("override /"), [v]) for d in defaults for k, v in d.items()]]:
        with __import__("hydra").initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            available = set(GlobalHydra.instance().config_loader().get_group_options(group))
        missing += [f"{group}/{o}" for o in options if o not in available]
    assert not missing, f"{name}: presets not in conf/: {', '.join(sorted(set(missing)))}"
    from topovlm.config import validate

    cfg = hydra_compose([f"experiment={name}"])
    assert cfg.hydra.sweeper.params.sparsity == raw.hydra.sweeper.params.sparsity
    for key, values in params.items():
        for v in values:
            # values only: the 7B checkpoints and their datasets are not on this machine
            validate(hydra_compose([f"experiment={name}", f"{key}={v}"]), inputs=False)


# ---------------------------------------------------------------- one worker per GPU (hydra/launcher=gpus)

def test_gpus_preset_composes_to_the_pinning_launcher():
    cfg = hydra_compose(["hydra/launcher=gpus", "hydra.launcher.devices=[2,3]"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.topovlm_gpus.gpus_launcher.GpusLauncher"
    assert list(cfg.hydra.launcher.devices) == [2, 3]


def test_visible_devices_reads_the_list_the_environment_or_nothing(monkeypatch: pytest.MonkeyPatch):
    from topovlm.errors import ConfigError
    from topovlm.gpu_slots import visible_devices

    assert visible_devices([4, 5]) == ["4", "5"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_devices() == []  # the launcher then refuses: no GPU
    with pytest.raises(ConfigError, match="listed twice"):
        visible_devices("1,1")


def _claim_and_hold(devices, lock_dir, out, release):
    import os

    from topovlm.gpu_slots import claim_device

    device = claim_device(devices, lock_dir, poll_s=0.05)
    out.put((os.getpid(), device, os.environ["CUDA_VISIBLE_DEVICES"]))
    release.wait(60)


def test_claims_pin_processes_to_distinct_devices_and_a_dead_worker_frees_its_slot(tmp_path: Path):
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    events = [ctx.Event() for _ in range(3)]
    procs = [ctx.Process(target=_claim_and_hold, args=(["0", "1"], tmp_path, out, ev)) for ev in events]
    try:
        procs[0].start(), procs[1].start()
        first = [out.get(timeout=60) for _ in range(2)]
        assert sorted(d for _, d, _ in first) == ["0", "1"]
        assert all(d == env for _, d, env in first)  # the process sees only its GPU
        procs[2].start()  # a third worker (e.g. one restarting): no slot until a worker ends
        with pytest.raises(queue.Empty):
            out.get(timeout=3)
        events[0].set()
        procs[0].join(30)
        pid, device, env = out.get(timeout=30)
        assert pid == procs[2].pid and device == env == dict((p, d) for p, d, _ in first)[procs[0].pid]
    finally:
        for ev in events:
            ev.set()
        for p in procs:
            p.join(30)


@pytest.mark.slow
def test_gpus_launcher_runs_every_job_once_one_worker_per_simulated_gpu(tmp_path: Path):
    import re

    proc = sweep(tmp_path, "hydra/launcher=gpus", "hydra.launcher.devices=[0,1]", "task=text_ppl", "task.limit=2",
                 "scorer=cosine,tail", "sparsity=0,0.25")
    log = proc.stdout + proc.stderr
    assert "4 jobs on 2 GPUs (0,1), one worker each" in log
    ran = [(int(j), d, int(pid)) for j, d, pid in re.findall(r"#(\d+) on GPU (\d+) \(worker (\d+)\)", log)]
    assert sorted(j for j, _, _ in ran) == [0, 1, 2, 3]
    device_of = {}
    for _, device, pid in ran:  # a worker keeps its GPU from one job to the next
        assert device_of.setdefault(pid, device) == device
    assert sorted(device_of.values()) == ["0", "1"]  # two workers, one per GPU
    out = tmp_path / "sweep"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len({(r["scorer"], r["sparsity"]) for r in rows}) == 4  # every job once
    assert len(list(out.glob("*/results.json"))) == 4


# ---------------------------------------------------------------- device_map=fit

def test_fit_places_a_model_that_fits_on_one_gpu_and_spreads_one_that_does_not(tmp_path: Path):
    import torch

    from topovlm.adapters.loading import fit_device_map, load_pretrained, weight_bytes
    from topovlm.adapters.tiny import tiny_llava

    model, processor = tiny_llava()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    for dtype in ("float32", "float16"):
        loaded, _ = load_pretrained("llava", str(tmp_path), dtype=dtype)
        real = sum(t.numel() * t.element_size() for t in (*loaded.parameters(), *loaded.buffers()))
        assert weight_bytes("llava", str(tmp_path), dtype) == real  # sized from config.json on meta
    gib = 2**30
    seven_b = 14 * gib  # LLaVA-1.5-7B's weights in float16
    assert fit_device_map(seven_b, [79 * gib] * 8) == {"": 0}  # H100s: whole on the worker's GPU
    assert fit_device_map(seven_b, [15 * gib] * 8) == "auto"  # 16 GB cards: spread
    assert fit_device_map(seven_b, [15 * gib]) == {"": 0}  # one GPU: nothing to spread over
    assert fit_device_map(seven_b, []) is None  # no GPU: model.device
    assert not torch.cuda.is_available()
    cpu, _ = load_pretrained("llava", str(tmp_path), device_map="fit")  # no GPU here: loads on model.device
    assert {p.device.type for p in cpu.parameters()} == {"cpu"}


@pytest.mark.parametrize("preset", ["llava-1.5-7b", "llava-v1.6-vicuna-7b", "llava-v1.6-mistral-7b", "qwen2-vl-7b", "qwen2.5-vl-7b", "llama-2-7b"])
def test_7b_presets_load_on_one_gpu_when_they_fit(preset: str):
    assert hydra_compose([f"model={preset}"]).model.device_map == "fit"
