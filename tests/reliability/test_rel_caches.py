"""Caches heal: a corrupt entry of each kind is logged with its path, moved aside (kept as
evidence) and recomputed; stale temporary files are removed; nothing is visible half-written."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import compose
from topovlm.runner import run_job


def overrides(tmp: Path, *extra: str) -> list[str]:
    return ["debug=smoke", "scorer=shortgpt", f"cache_dir={tmp / 'cache'}", *extra]


def _one(cache: Path, pattern: str) -> Path:
    found = sorted(p for p in cache.glob(pattern) if not p.name.endswith(".lock"))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _replace_arrays(path: Path, **arrays) -> None:
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    data.update(arrays)
    with open(path, "wb") as f:
        np.savez(f, **data)


CORRUPTIONS = {
    # kind: (file under the cache, how it is damaged)
    "capture meta.json": ("captures/*/meta.json", lambda p: p.write_text('{"num_layers": 12, "sample')),
    "capture pooled.npz": ("captures/*/pooled.npz", lambda p: p.write_bytes(p.read_bytes()[:200])),
    "capture statistic .npy": ("captures/*/stat-*.npy", lambda p: p.write_bytes(p.read_bytes()[:90])),
    "ranking .npz": ("scores/*/shortgpt-*.npz", lambda p: p.write_bytes(p.read_bytes()[:40])),
    "ranking of another shape": ("scores/*/shortgpt-*.npz", lambda p: _replace_arrays(p, scores=np.zeros(3))),
    "ranking with an object array": ("scores/*/shortgpt-*.npz",
                                     lambda p: _replace_arrays(p, scores=np.array([object()] * 12, dtype=object))),
    "reference {}": ("reference/*.json", lambda p: p.write_text("{}")),
    "completed index": ("completed/*.json", lambda p: p.write_text("")),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_corrupt_entry_is_logged_discarded_and_recomputed(kind, tmp_path, caplog):
    first = run_job(compose(overrides(tmp_path, "sparsity=0.25")), tmp_path / "a")
    pattern, damage = CORRUPTIONS[kind]
    victim = _one(tmp_path / "cache", pattern)
    damage(victim)
    (victim.parent / f".{victim.name}.x1y2z3.tmp").write_bytes(b"")  # a killed writer's leftover
    caplog.set_level(logging.DEBUG)  # the cache hits' details (keys, paths) are at DEBUG
    # a job that needs the entry again (another sparsity: same capture, ranking and reference;
    # for the index, the same job in another dir; for the capture, +force=true rescores from it)
    again = {"completed index": ["sparsity=0.25"]}.get(kind, ["sparsity=0.5"])
    if kind.startswith("capture"):
        again.append("+force=true")
    res = run_job(compose(overrides(tmp_path, *again)), tmp_path / "b")
    logged = caplog.text
    moved = victim.parent if kind in ("capture meta.json", "capture pooled.npz") else victim  # a capture is one folder
    assert f"corrupt cache entry {moved}" in logged, logged
    assert "removing stale temporary file" in logged
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    aside = list(moved.parent.glob(f"{moved.name}.corrupt-*"))
    assert len(aside) == 1, "the damaged entry is kept beside the new one, as evidence"
    np.testing.assert_allclose(res["scores"], first["scores"], rtol=1e-6)
    if kind == "reference {}":
        assert res["reference_metrics"] and res["reference_metrics"] == first["reference_metrics"]
    # healed: the entry is whole again and the next job uses it without complaint
    caplog.clear()
    run_job(compose(overrides(tmp_path, "sparsity=0.4")), tmp_path / "c")
    assert "corrupt cache entry" not in caplog.text
    assert "cache hit: ranking" in caplog.text and "cache hit: reference" in caplog.text


def test_files_are_never_visible_half_written_and_are_group_readable(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        run_job(compose(overrides(tmp_path, "sparsity=0.25")), tmp_path / "a")
    finally:
        os.umask(old)
    written = [p for p in [*(tmp_path / "cache").rglob("*"), *(tmp_path / "a").rglob("*")] if p.is_file()]
    assert written and not [p for p in written if p.name.endswith(".tmp")]
    private = [p for p in written if p.stat().st_mode & 0o044 != 0o044]
    assert not private, private  # mkstemp's 0600 would break a group-shared cache
    dirs = [p for p in (tmp_path / "cache").rglob("*") if p.is_dir()]
    assert all(p.stat().st_mode & 0o055 == 0o055 for p in dirs)
    assert json.loads((tmp_path / "a" / "results.json").read_text())["effective"]["calibration.n"] == 6
