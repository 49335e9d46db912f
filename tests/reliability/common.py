"""Shared pieces of the reliability suite: fast tiny-model sweeps in real subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

HERE = Path(__file__).resolve().parent


def fast(tmp: Path, *extra: str) -> list[str]:
    """The cheapest real job: tiny LLaVA, 4 questions, 6 calibration samples, no timing."""
    return ["debug=smoke", "reference=false", "num_threads=1", "hydra.callbacks.summary.plots=false",
            f"cache_dir={tmp / 'cache'}", *extra]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
            "WANDB_SILENT": "true", **extra}


def launch(args: list[str], *, kill_at: str | None = None, timeout: int = 300, **extra_env: str
           ) -> subprocess.CompletedProcess:
    """``launch.py`` with ``args``; ``kill_at`` (see kill_launch.py) SIGKILLs it at that point."""
    script = [str(HERE / "kill_launch.py")] if kill_at else ["launch.py"]
    e = env(**extra_env, **({"KILL_AT": kill_at} if kill_at else {}))
    return subprocess.run([sys.executable, *script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


def rows(sweep: Path) -> list[dict]:
    table = sweep / "results.jsonl"
    return [json.loads(line) for line in table.read_text().splitlines()] if table.exists() else []


def log_of(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr
