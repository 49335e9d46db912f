"""README "Adding a scorer", followed word for word: its files written into a copy of the
repository, the registry tests pass there and ``topovlm list scorers`` shows the new scorer."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

from tests.helpers import ROOT

SKIP = shutil.ignore_patterns(".venv", ".git", "__pycache__", ".pytest_cache", "outputs", "multirun", "*.egg-info",
                              "results")


def readme_files() -> dict[str, str]:
    """The section's code blocks that open with a ``# path`` comment: path -> content."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Adding a scorer", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, flags=re.S):
        first, _, body = block.partition("\n")
        if first.startswith("# ") and "/" in first:
            files[first[2:].strip()] = block
    return files


def test_the_readme_scorer_registers_and_passes_the_registry_tests(tmp_path):
    files = readme_files()
    assert set(files) == {"baselines/norm_growth.py", "conf/scorer/norm_growth.yaml"}
    repo = tmp_path / "repo"
    shutil.copytree(ROOT, repo, ignore=SKIP)
    for rel, content in files.items():
        (repo / rel).write_text(content)
    env = {**os.environ, "PYTHONPATH": str(repo)}  # the copy's packages, not the installed tree's
    listed = subprocess.run([sys.executable, "-m", "topovlm.cli", "list", "scorers", "norm*"], cwd=repo, env=env,
                            capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    assert "norm_growth" in listed.stdout and "baselines.norm_growth" in listed.stdout and "pooling='last'" in listed.stdout
    tests = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "tests/unit/test_registry.py"],
                           cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-3000:]
    assert "[norm_growth] PASSED" in tests.stdout  # the new preset was among the tests run
