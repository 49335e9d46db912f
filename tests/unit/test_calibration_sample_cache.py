"""Calibration samples decoded once per process: the second job of a sweep neither reads its
images nor hashes them again; an edited file is read again."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

import topovlm.capture_cache as capture_cache
import topovlm.runner as runner
from tests.helpers import compose, tiny_overrides
from topovlm.capture_cache import CalibrationSamples, content_digest, source_files_digest
from topovlm.data.sources import load_samples
from topovlm.identity import samples_digest


def _write_dataset(root, n: int = 6) -> None:
    root.mkdir()
    lines = []
    for i in range(n):
        Image.new("RGB", (24, 24), (30 * i, 100, 200)).save(root / f"img{i}.png")
        lines.append(json.dumps({"id": f"q{i}", "question": f"What colour? ({i})", "answer": "blue",
                                 "image": f"img{i}.png"}))
    (root / "calibration.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def counted(monkeypatch):
    """A memo of this test's own, and counts of image opens and of sample-content hashes."""
    memo = CalibrationSamples()
    monkeypatch.setattr(runner, "CALIBRATION_SAMPLES", memo)
    calls = {"open": 0, "hash": 0}
    real_open, real_hash = Image.open, capture_cache.samples_digest

    def opening(*a, **k):
        calls["open"] += 1
        return real_open(*a, **k)

    def hashing(samples):
        calls["hash"] += 1
        return real_hash(samples)

    monkeypatch.setattr(Image, "open", opening)
    monkeypatch.setattr(capture_cache, "samples_digest", hashing)
    return memo, calls


def _job(tmp_path, data, name: str, *extra: str):
    cfg = compose(tiny_overrides(tmp_path, "calibration.dataset.source=jsonl", f"calibration.dataset.path={data}",
                                 "calibration.dataset.split=calibration", "calibration.n=6", *extra))
    return runner.prepare(cfg, tmp_path / name, None, "test", None)


def test_the_second_job_does_not_decode_or_hash_again_and_an_edited_file_is_read_again(tmp_path, counted, caplog):
    memo, calls = counted
    caplog.set_level(logging.DEBUG, logger="topovlm.capture_cache")
    data = tmp_path / "data"
    _write_dataset(data)
    first = runner.calibration_samples(_job(tmp_path, data, "a", "sparsity=0.25"))
    opened = calls["open"]
    assert opened >= 6 and calls["hash"] == 1 and memo.loads == 1
    second = runner.calibration_samples(_job(tmp_path, data, "b", "sparsity=0.5", "scorer=shortgpt"))
    assert (calls["open"], calls["hash"], memo.loads) == (opened, 1, 1)  # no image read, nothing hashed
    assert second is not first and [s.id for s in second] == [s.id for s in first]  # a list of its own
    assert f"calibration samples reused, decoded earlier in this process (keyed on dataset=jsonl:v1:calibration:{data}" \
           in caplog.text
    # the capture key's content digest: carried with the samples, equal to hashing them afresh
    assert content_digest(second) == samples_digest(load_samples(_job(tmp_path, data, "c").cfg.calibration.dataset,
                                                                 n=6, seed=0))
    assert calls["hash"] == 1

    before = source_files_digest(_job(tmp_path, data, "d").cfg.calibration.dataset)
    Image.new("RGB", (24, 24), (255, 0, 0)).save(data / "img3.png")  # the same name, other pixels
    after = source_files_digest(_job(tmp_path, data, "d").cfg.calibration.dataset)
    assert after != before
    third = runner.calibration_samples(_job(tmp_path, data, "e"))
    assert memo.loads == 2 and calls["open"] > opened
    assert content_digest(third) != content_digest(first)  # so the capture key changes with it
    assert np.asarray(next(s for s in third if s.id == "q3").image)[0, 0].tolist() == [255, 0, 0]


def test_generated_sets_are_keyed_by_their_config(counted):
    """The shapes benchmark has no files: the config (n, seed, split, version) is the whole key."""
    memo, calls = counted
    cal = compose(["calibration.n=8"]).calibration
    a = memo.get(cal.dataset, 8, 0)
    assert memo.get(cal.dataset, 8, 0) == a and memo.loads == 1
    other = memo.get(cal.dataset, 8, 1)  # another seed: other samples
    assert memo.loads == 2 and [s.id for s in other] != [s.id for s in a]
    assert calls["hash"] == 2
