"""Identity: caches know the code, the versions and every config value that changes a
number, not where they are mounted; +force recomputes ranking and reference; hits are
logged with their keys; results.json records the effective values."""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT, compose
from tests.reliability.common import fast, launch, log_of
from topovlm.config import ConfigError
from topovlm.identity import code_digest
from topovlm.runner import job_key, run_job


def overrides(tmp: Path, *extra: str) -> list[str]:
    return ["debug=smoke", "scorer=cosine", f"cache_dir={tmp / 'cache'}", *extra]


def _readme_block(first_line: str) -> str:
    """The fenced code block of README.md that starts with ``first_line``."""
    text = (ROOT / "README.md").read_text()
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README has no block starting with {first_line!r}")


@pytest.mark.slow
def test_readme_target_scorer_runs_verbatim_and_an_edit_invalidates_its_ranking(tmp_path):
    """"Adding a scorer" as the README writes it, its module kept outside the repository and
    named by ``_target_`` (tests/unit/test_readme_scorer.py follows it inside a copy). Then the
    module is edited (negated scores): the new code's ranking is computed, not the cached one,
    and the job is not taken for complete."""
    code = _readme_block("# baselines/norm_growth.py")
    (tmp_path / "my_scorers").mkdir()
    (tmp_path / "my_scorers" / "norm_growth.py").write_text(code)
    (tmp_path / "conf" / "scorer").mkdir(parents=True)
    (tmp_path / "conf" / "scorer" / "norm_growth.yaml").write_text(
        _readme_block("# conf/scorer/norm_growth.yaml") + "_target_: my_scorers.norm_growth.NormGrowthScorer\n")
    args = [*fast(tmp_path), "scorer=norm_growth", "sparsity=0.25", f"hydra.searchpath=[file://{tmp_path / 'conf'}]"]
    pythonpath = f"{ROOT}:{tmp_path}"

    first = launch(["-m", *args, f"hydra.sweep.dir={tmp_path / 'a'}"], PYTHONPATH=pythonpath)
    assert first.returncode == 0, log_of(first)[-3000:]
    res_a = json.loads(next((tmp_path / "a").glob("*/results.json")).read_text())
    assert res_a["scorer"] == "norm_growth" and len(res_a["removed_layers"]) == 3

    module = tmp_path / "my_scorers" / "norm_growth.py"
    module.write_text(code.replace("return ScoreResult(scores=s, redundancy=s)", "return ScoreResult(scores=-s, redundancy=-s)"))
    second = launch(["-m", *args, f"hydra.sweep.dir={tmp_path / 'b'}"], PYTHONPATH=pythonpath)
    assert second.returncode == 0, log_of(second)[-3000:]
    reused = re.findall(r"reused from the cache \(.*\): (.*)$", log_of(second), re.M)  # one short INFO line
    assert "already complete" not in log_of(second) and reused and "ranking" not in reused[0]
    assert "capture" in reused[0]  # the capture's code did not change
    res_b = json.loads(next((tmp_path / "b").glob("*/results.json")).read_text())
    assert res_b["scores"] == pytest.approx([-v for v in res_a["scores"]])
    assert res_b["scores_from_cache"] is False and res_b["job_key"] != res_a["job_key"]
    assert res_b["identity"]["code"]["scorer"] != res_a["identity"]["code"]["scorer"]
    assert res_b["identity"]["code"]["capture"] == res_a["identity"]["code"]["capture"]


def test_code_digest_follows_the_modules_a_class_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg_digest"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "util.py").write_text("def f(x):\n    return x\n")
    (pkg / "scorer.py").write_text("from pkg_digest.util import f\n\nclass S:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_digest("pkg_digest.scorer")
    (pkg / "util.py").write_text("def f(x):\n    return -x\n")  # an imported module changed
    assert code_digest("pkg_digest.scorer") != before
    # copying the package elsewhere (another mount point) does not change it
    moved = tmp_path / "elsewhere"
    shutil.copytree(pkg, moved / "pkg_digest")
    after = code_digest("pkg_digest.scorer")
    monkeypatch.syspath_prepend(str(moved))
    import sys
    for m in [m for m in sys.modules if m.startswith("pkg_digest")]:
        del sys.modules[m]
    assert code_digest("pkg_digest.scorer") == after


def test_every_value_that_matters_is_in_the_keys(tmp_path):
    base = compose(overrides(tmp_path, "sparsity=0.25"))
    for change in ("calibration.batch_size=3", "task.batch_size=2", "calibration.n=5", "seed=1",
                   "scorer.pooling=text_mean", "selection.protect=[0,1]"):
        assert job_key(compose(overrides(tmp_path, "sparsity=0.25", change))) != job_key(base), change
    for same in ("logger=wandb", "num_threads=1", f"cache_dir={tmp_path / 'elsewhere'}", "+force=true", "reference=false"):
        assert job_key(compose(overrides(tmp_path, "sparsity=0.25", same))) == job_key(base), same
    # the capture key holds the calibration batch size (padding changes the numbers)
    run_job(compose(overrides(tmp_path, "sparsity=0.25", "reference=false")), tmp_path / "a")
    run_job(compose(overrides(tmp_path, "sparsity=0.25", "reference=false", "calibration.batch_size=4")), tmp_path / "b")
    assert len([p for p in (tmp_path / "cache" / "captures").iterdir() if p.is_dir()]) == 2


def test_model_fingerprint_does_not_depend_on_where_the_model_is_mounted(tmp_path, tiny_llava):
    from topovlm.adapters.families import LlavaAdapter
    from topovlm.adapters.loading import load_pretrained
    from topovlm.capture_cache import model_fingerprint

    tiny_llava.model.save_pretrained(tmp_path / "mount_a" / "m")
    tiny_llava.processor.save_pretrained(tmp_path / "mount_a" / "m")
    shutil.copytree(tmp_path / "mount_a", tmp_path / "mount_b")
    prints = []
    for mount in ("mount_a", "mount_b"):
        model, processor = load_pretrained("llava", str(tmp_path / mount / "m"))
        assert str(tmp_path / mount) in model.config._name_or_path
        prints.append(model_fingerprint(LlavaAdapter(model, processor, name="m", source="pretrained")))
    assert prints[0] == prints[1]


def test_force_recomputes_ranking_and_reference_and_hits_are_logged(tmp_path, caplog, monkeypatch):
    from topovlm.evaluation.vqa import VQAEvaluator

    calls: list[int] = []
    original = VQAEvaluator.evaluate
    monkeypatch.setattr(VQAEvaluator, "evaluate", lambda self, a: calls.append(1) or original(self, a))
    caplog.set_level(logging.DEBUG)  # the cache hits' details (keys, paths) are at DEBUG
    first = run_job(compose(overrides(tmp_path, "sparsity=0.25")), tmp_path / "a")
    assert len(calls) == 2 and not first["scores_from_cache"]  # the reference and the pruned model
    assert "cache hit" not in caplog.text

    caplog.clear()
    other = run_job(compose(overrides(tmp_path, "sparsity=0.5")), tmp_path / "b")  # a new sparsity: hits
    assert len(calls) == 3 and other["scores_from_cache"]
    assert re.search(r"cache hit: ranking \S+ \(keyed on capture=\w+, scorer=cosine, params=\{'pooling': 'last'\}, "
                     r"seed=0, code=\w+\)", caplog.text)
    assert re.search(r"cache hit: reference \S+ \(keyed on model=\w+, task=.*, seed=0, code=\w+, versions=", caplog.text)

    caplog.clear()
    forced = run_job(compose(overrides(tmp_path, "sparsity=0.25", "+force=true")), tmp_path / "a")
    assert len(calls) == 5  # the reference was evaluated again, then the pruned model
    assert not forced["scores_from_cache"] and "resumed_from" not in forced
    assert "cache hit: ranking" not in caplog.text and "cache hit: reference" not in caplog.text
    assert "cache hit: capture" in caplog.text  # +force rescores from the (code-keyed) capture


def test_a_calibration_source_smaller_than_asked_is_an_error(tmp_path):
    cfg = compose(overrides(tmp_path, "calibration.dataset.source=text", "calibration.n=5000", "sparsity=0.25"))
    with pytest.raises(ConfigError, match=r"calibration.n=5000, but calibration.dataset \(source=text.* holds only 8 "
                                          r"samples; set calibration.n<=8") as err:
        run_job(cfg, tmp_path / "a")
    assert err.value.topovlm_stage == "calibration_samples"
    assert not (tmp_path / "cache" / "captures").exists()  # before the model was loaded
