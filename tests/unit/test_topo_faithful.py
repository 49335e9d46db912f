"""The topo presets against the papers: hand-computed barcodes, the ancestor's CSV format,
the norm activations, and loud failures on degenerate inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import compose, make_samples, tiny_overrides
from topovlm.topo.barcodes import layer_bars, read_barcode_csv, rescore, write_barcode_csv
from topovlm.topo.consistency import consistency_from_ps, persistence_similarity
from topovlm.topo.ranking import decide, empty_layer_warnings, tie_warning
from topovlm.topo.scorer import TopoLLMScorer, TopoScorer

# ---------------------------------------------------------------- a hand-computed barcode
# Four representations, H1 layer bars A = [0, 4), B = [1, 3), C = [2, 4):
#   PS = [[1, 1, 1, 1],      beta = diag = [1, 2, 3, 2]
#         [1, 2, 2, 1],
#         [1, 2, 3, 2],
#         [1, 1, 2, 2]]
BARS = np.array([[0, 4], [1, 3], [2, 4]])
PS = np.array([[1, 1, 1, 1], [1, 2, 2, 1], [1, 2, 3, 2], [1, 1, 2, 2]])
# gardinazzi: r(i) = mean_j PS(i,j)/beta(j), j = i included
#   r0 = (1 + 1/2 + 1/3 + 1/2)/4 = 7/12, r1 = (1 + 1 + 2/3 + 1/2)/4 = 19/24, r2 = 1, r3 = 19/24
GARDINAZZI = [7 / 12, 19 / 24, 1.0, 19 / 24]
# ilp, alpha = 1: sum_j |i-j| PS(i,j) / beta(i) / sum_j |i-j|
#   i0: (1+2+3)/1/6 = 1; i1: (1+2+2)/2/4 = 5/8; i2: (2+2+2)/3/4 = 1/2; i3: (3+2+2)/2/6 = 7/12
ILP = [1.0, 5 / 8, 1 / 2, 7 / 12]
# topovlm_reconstruction, alpha = 1: sum_{j!=i} |i-j| PS(i,j)/beta(j) / sum_{j!=i} |i-j|
#   i0: (1/2 + 2/3 + 3/2)/6 = 4/9; i1: (1 + 2/3 + 1)/4 = 2/3; i2: (2 + 1 + 1)/4 = 1; i3: (3 + 1 + 2/3)/6 = 7/9
RECON = [4 / 9, 2 / 3, 1.0, 7 / 9]
# the same bars as zigzag positions (K_i at 2i, K_i ∩ K_i+1 at 2i+1), 0-based:
# A born at K_0, never dies; B born at K_1 (2), dies at K_2 ∩ K_3 (5 -> 3); C born at K_1 ∩ K_2
# (3 -> 2), never dies; D lives only on K_1 ∩ K_2 (3 -> 2, 4 -> 2): dropped. One H0 bar.
CSV = "dimension,birth,death\n0,0,inf\n1,0,inf\n1,2,5\n1,3,inf\n1,3,4\n"


def test_persistence_similarity_of_the_hand_barcode():
    np.testing.assert_array_equal(persistence_similarity(BARS, 4), PS)


@pytest.mark.parametrize("formula, expected", [("gardinazzi", GARDINAZZI), ("ilp", ILP),
                                               ("topovlm_reconstruction", RECON)])
def test_formulas_by_hand(formula, expected):
    np.testing.assert_allclose(consistency_from_ps(PS, formula, alpha=1.0), expected)


def test_alpha_weights_and_the_ancestor_ignores_them():
    # alpha = 2, reconstruction, i0: (1/2 + 4/3 + 9/2)/14 = 19/42
    assert consistency_from_ps(PS, "topovlm_reconstruction", alpha=2.0)[0] == pytest.approx(19 / 42)
    np.testing.assert_allclose(consistency_from_ps(PS, "gardinazzi", alpha=2.0), GARDINAZZI)
    # ilp with alpha = 0 keeps the j = i term (|0|^0 = 1): i1: (1+2+2+1)/2/4 = 3/4
    assert consistency_from_ps(PS, "ilp", alpha=0.0)[1] == pytest.approx(3 / 4)


def test_empty_layers_policies_by_hand():
    # one bar on representations 0..1 of 3: beta = [1, 1, 0]
    ps = persistence_similarity(np.array([[0, 2]]), 3)
    # gardinazzi, skip: r0 = (1 + 1)/2 = 1; zero: (1 + 1 + 0)/3 = 2/3; nan: the ancestor's 0/0
    np.testing.assert_allclose(consistency_from_ps(ps, "gardinazzi", empty="skip"), [1, 1, 0])
    np.testing.assert_allclose(consistency_from_ps(ps, "gardinazzi", empty="zero"), [2 / 3, 2 / 3, 0])
    assert np.isnan(consistency_from_ps(ps, "gardinazzi", empty="nan")).all()
    # ilp: the empty representation's own row is 0/0; skip drops j = 2 from the weights
    # i0: skip (1*1)/1/1 = 1, zero (1*1 + 2*0)/1/3 = 1/3
    np.testing.assert_allclose(consistency_from_ps(ps, "ilp", empty="skip"), [1, 1, 0])
    np.testing.assert_allclose(consistency_from_ps(ps, "ilp", empty="zero"), [1 / 3, 1 / 2, 0])
    with pytest.raises(ValueError, match="formula"):
        consistency_from_ps(ps, "mean")


# ---------------------------------------------------------------- the CSV format and topo-score

def test_csv_positions_snap_like_the_scorer(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text(CSV)
    bars, reps, inferred = layer_bars(read_barcode_csv(path), num_reps=4)
    assert (reps, inferred) == (4, False)
    assert bars[1].tolist() == [[0, 4], [1, 3], [2, 4]]  # the single-intersection bar is dropped
    assert bars[0].tolist() == [[0, 4]]
    one_based = tmp_path / "one.csv"
    write_barcode_csv(one_based, {p: np.where(np.isinf(b), 99, b) for p, b in read_barcode_csv(path).items()},
                      num_positions=7, start_index=1)
    assert read_barcode_csv(one_based, start_index=1)[1].tolist() == read_barcode_csv(path)[1].tolist()
    with pytest.raises(ValueError, match="before K_0"):
        read_barcode_csv(path, start_index=1)
    (tmp_path / "half.csv").write_text("dimension,birth,death\n1,0.5,2\n")
    with pytest.raises(ValueError, match="integers"):
        read_barcode_csv(tmp_path / "half.csv")
    (tmp_path / "bad.csv").write_text("dim,birth,death\n1,0,2\n")
    with pytest.raises(ValueError, match="dimension"):
        read_barcode_csv(tmp_path / "bad.csv")


def test_rescore_reproduces_the_ancestor_rule(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_text(CSV)
    out = rescore(path, TopoLLMScorer(), exclude_last=True, num_reps=4)
    np.testing.assert_allclose(out["consistency"], GARDINAZZI)
    # remove every decoder representation with r >= 0.9 * max over them (representation 3 excluded)
    assert out["removed_layers"] == [2] and out["final_norm_index"] == 3
    assert rescore(path, TopoLLMScorer(eps=0.75), exclude_last=True, num_reps=4)["removed_layers"] == [1, 2]
    # without --exclude-last representation 3 (19/24 >= 0.75) may go too
    assert rescore(path, TopoLLMScorer(), num_reps=4, eps=0.75)["removed_layers"] == [1, 2, 3]
    assert rescore(path, TopoLLMScorer(), exclude_last=True, num_reps=4, remove=2)["removed_layers"] == [1, 2]
    ilp = rescore(path, TopoLLMScorer(formula="ilp"), exclude_last=True, num_reps=4)
    np.testing.assert_allclose(ilp["consistency"], ILP)
    assert ilp["removed_layers"] == [0]
    h0 = rescore(path, TopoLLMScorer(dim_weights={"h0": 1.0, "h1": 1.0}), num_reps=4)
    np.testing.assert_allclose(h0["consistency"], (np.array(GARDINAZZI) + 1.0) / 2)


def test_topo_score_cli_prints_json(tmp_path, capsys):
    from topovlm.cli import main

    path = tmp_path / "bars.csv"
    path.write_text("\n".join(line if line.startswith("dim") else ",".join(
        [line.split(",")[0]] + [v if v == "inf" else str(int(v) + 1) for v in line.split(",")[1:]])
        for line in CSV.strip().splitlines()) + "\n")
    assert main(["topo-score", str(path), "--start-index", "1", "--exclude-last", "--representations", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["consistency"], GARDINAZZI)
    assert out["removed_layers"] == [2] and out["scorer"] == "topo_llm"
    assert main(["topo-score", str(path), "--start-index", "1", "--exclude-last", "--representations", "4",
                 "--preset", "topo", "--remove", "1", "alpha=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    np.testing.assert_allclose(out["consistency"], RECON)
    assert out["removed_layers"] == [2] and out["decision"]["rule"] == "topk"
    # inferred size: the bars reach representation 3, so R = 3 and a warning says so
    assert main(["topo-score", str(path), "--start-index", "1"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["representations"] == 3 and "inferred" in captured.err
    assert main(["topo-score", str(path), "not_a_pair"]) == 1


def test_scorer_and_topo_score_share_one_code_path(tmp_path):
    """Bars the scorer computes, written in the ancestor's format and read back, give its scores."""
    from tests.helpers import synthetic_capture

    from topovlm.api import ScoringContext
    from topovlm.topo.clouds import layer_clouds
    from topovlm.topo.pipeline import compute_topology

    cap = synthetic_capture()
    scorer = TopoLLMScorer()
    res = scorer.score(cap, ScoringContext(seed=0, num_layers=cap.num_layers))
    lc = layer_clouds(cap, activations="post_attention_norm", include_final_norm=True)
    topo = compute_topology(lc.clouds, scorer.config())
    path = write_barcode_csv(tmp_path / "b.csv", topo.raw_bars, num_positions=2 * lc.num_layers - 1)
    out = rescore(path, scorer, exclude_last=True, num_reps=lc.num_layers)
    section = res.extra["topology"]
    np.testing.assert_allclose(out["consistency"], section["consistency_combined"])
    assert out["removed_layers"] == section["adaptive"]["layers"]
    np.testing.assert_allclose(res.scores, section["consistency_combined"][:cap.num_layers])


# ---------------------------------------------------------------- activations

def test_norm_capture_and_cache(tiny_llava, tmp_path):
    import torch

    from topovlm.capture import run_capture
    from topovlm.capture_cache import CaptureCache
    from topovlm.api import CaptureSpec

    cap = run_capture(tiny_llava, make_samples(6), CaptureSpec(norms=True), batch_size=3)
    num_layers = tiny_llava.num_layers
    assert cap.norm_out("last").shape == (num_layers + 1, 6, cap.h_out("last").shape[2])
    # representation L is the final norm of the last layer's output
    with torch.no_grad():
        final = tiny_llava.final_norm()(torch.tensor(cap.h_out("last")[-1])).numpy()
    np.testing.assert_allclose(cap.norm_out("last")[-1], final, rtol=1e-5, atol=1e-5)
    # an RMS norm output of unit-initialised weights has unit RMS per row, whatever the layer's scale
    rms = np.sqrt((cap.norm_out("last") ** 2).mean(axis=2))
    np.testing.assert_allclose(rms, 1.0, atol=1e-2)
    assert not np.allclose(cap.norm_out("last")[:-1], cap.h_out("last"))
    without = run_capture(tiny_llava, make_samples(6), CaptureSpec(), batch_size=3)
    with pytest.raises(KeyError, match="norms=True"):
        without.norm_out("last")

    cache = CaptureCache(tmp_path)
    key = CaptureCache.key("tiny", "shapes:norms")
    samples_fn = lambda: make_samples(6)  # noqa: E731 - a one-line local helper
    cache.get(key, lambda: tiny_llava, samples_fn, CaptureSpec(), batch_size=3)
    got = cache.get(key, lambda: tiny_llava, samples_fn, CaptureSpec(norms=True), batch_size=3)
    assert cache.forward_passes == 2  # an older capture without norms: one pass for just that
    np.testing.assert_allclose(got.norm_out("last"), cap.norm_out("last"), rtol=1e-5, atol=1e-5)
    cache.get(key, lambda: tiny_llava, samples_fn, CaptureSpec(norms=True), batch_size=3)
    assert cache.forward_passes == 2


def test_final_norm_is_scored_but_never_removed():
    from tests.helpers import SYNTHETIC_L as L
    from tests.helpers import synthetic_capture

    from topovlm.api import ScoringContext

    cap = synthetic_capture()
    res = TopoLLMScorer(eps=0.01).score(cap, ScoringContext(seed=0, num_layers=L))
    section = res.extra["topology"]
    assert section["representations"] == L + 1 and section["final_norm_index"] == L
    assert len(section["consistency"]["h1"]) == L + 1 and res.scores.shape == (L,)
    assert L not in section["adaptive"]["layers"]
    residual = TopoScorer(k=5, activations="residual", include_final_norm=False).score(
        cap, ScoringContext(seed=0, num_layers=L))
    assert residual.extra["topology"]["representations"] == L
    assert TopoScorer().capture_spec().norms and not TopoScorer(
        activations="residual", include_final_norm=False).capture_spec().norms


# ---------------------------------------------------------------- degenerate inputs

def test_k_too_large_fails_before_the_model_loads(tmp_path, monkeypatch):
    import topovlm.adapters.loading as loading
    from topovlm.config import ConfigError
    from topovlm.runner import run_job

    def never(*a, **k):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(loading, "load_adapter", never)
    cfg = compose(tiny_overrides(tmp_path, "scorer=topo"))  # k = 15, calibration.n = 12
    with pytest.raises(ConfigError, match=r"topo\.k.*scorer\.k=15.*calibration\.n=12"):
        run_job(cfg, tmp_path / "out")
    cfg = compose(tiny_overrides(tmp_path, "scorer=topo_llm", "scorer.num_points=6"))  # k = 5 >= 6 - 1
    with pytest.raises(ConfigError, match="num_points=6"):
        run_job(cfg, tmp_path / "out")
    assert not (tmp_path / "out" / "results.json").exists()
    # the adaptive policy needs a scorer that decides; the generic threshold rule is everyone's
    with pytest.raises(ConfigError, match="selection.policy=adaptive: scorer=cosine makes no decision"):
        run_job(compose(tiny_overrides(tmp_path, "scorer=cosine", "selection.policy=adaptive")), tmp_path / "out")


def test_empty_and_constant_warnings():
    betti = {0: np.ones(8, dtype=int), 1: np.array([0, 0, 0, 1, 2, 1, 1, 1])}
    warns = empty_layer_warnings(betti, {0: 0.0, 1: 1.0}, hint="raise calibration.n")
    assert len(warns) == 1 and warns[0]["count"] == 3 and warns[0]["dim"] == "h1"
    assert "3 of 8" in warns[0]["message"] and "calibration.n" in warns[0]["message"]
    assert empty_layer_warnings({1: np.array([0, 0, 1, 1, 1, 1, 1, 1])}, {1: 1.0}) == []  # 2/8: not over 1/4
    assert empty_layer_warnings(betti, {0: 1.0, 1: 0.0}) == []  # H1 not scored
    tie = tie_warning(np.full(5, 0.5), [1, 2, 3, 4])
    assert tie and "tie-break" in tie["message"]
    assert tie_warning(np.array([0.9, 0.5, 0.5, 0.6]), [1, 2, 3]) is None
    assert tie_warning(np.array([0.9, 0.5, 0.5]), [1, 2]) is not None  # only the removable ones count
    with pytest.raises(ValueError):
        decide(np.zeros(3), [0, 1, 2])


def test_warnings_reach_results_json_and_the_log(tmp_path, caplog):
    from topovlm.runner import run_job

    # k = 1: sparse graphs, H1 empty in most layers of the tiny model
    cfg = compose(tiny_overrides(tmp_path, "scorer=topo_llm", "scorer.k=1", "sparsity=0"))
    with caplog.at_level("WARNING"):
        results = run_job(cfg, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    warns = saved["topology"]["warnings"]
    betti = np.asarray(saved["topology"]["betti"]["h1"])
    expected = int((betti == 0).sum())
    assert expected > len(betti) / 4  # the regime this test is about
    empty = [w for w in warns if w["kind"] == "empty_layers"]
    assert len(empty) == 1 and empty[0]["count"] == expected
    assert f"{expected} of {len(betti)}" in caplog.text
    assert results["scorer"] == "topo_llm" and saved["selection_policy"] == "adaptive"


@pytest.mark.slow
def test_adaptive_policy_applies_the_ancestor_rule_and_topk_follows_the_budget(tmp_path):
    """topo_llm prunes by its own rule (S >= eps * max S) whatever the sparsity; topo sweeps budgets."""
    from topovlm.runner import run_job

    over = ("calibration.n=24", "scorer.k=4", "selection.protect=[]")
    a = run_job(compose(tiny_overrides(tmp_path, "scorer=topo_llm", "sparsity=0.1", *over)), tmp_path / "a")
    b = run_job(compose(tiny_overrides(tmp_path, "scorer=topo_llm", "sparsity=0.3", *over)), tmp_path / "b")
    assert a["selection_policy"] == b["selection_policy"] == "adaptive"
    assert a["removed_layers"] == b["removed_layers"] == a["topology"]["adaptive"]["layers"]
    r = np.asarray(a["redundancy"], dtype=float)
    top = np.nanmax(r)
    assert all(r[i] >= 0.9 * top for i in a["removed_layers"])
    c = run_job(compose(tiny_overrides(tmp_path, "scorer=topo", "sparsity=0.25", *over)), tmp_path / "c")
    assert c["selection_policy"] == "topk"
    assert len(c["removed_layers"]) == int(np.floor(0.25 * c["num_layers"] + 0.5))
