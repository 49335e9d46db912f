"""``ppl`` and ``sleb``: hand-computed cases on a 4-layer tiny LLaVA in which one layer is the
identity (its attention and MLP write nothing to the residual stream) and the others are trained
to answer the calibration questions (so removing any of them costs loss), the harness's removal
loss against a direct computation, and the model left whole after scoring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.ppl import PPLScorer
from baselines.sleb import SLEBScorer
from tests.helpers import make_samples
from topovlm.adapters.families import LlavaAdapter
from topovlm.adapters.tiny import tiny_llava
from topovlm.api import ScoringContext
from topovlm.model_pool import weights_checksum
from topovlm.removal_loss import CalibrationLoss

IDENTITY = 2


@pytest.fixture(scope="module")
def adapter():
    model, processor = tiny_llava(num_layers=4, hidden_size=64, seed=3)
    layer = model.model.language_model.layers[IDENTITY]
    with torch.no_grad():  # a residual block that adds nothing: removing it changes no output
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    adapter = LlavaAdapter(model, processor, name="tiny-identity")
    _fit_answers(adapter, frozen=list(layer.parameters()))
    return adapter


def _fit_answers(adapter, frozen, steps: int = 100) -> None:
    """Optimizer steps on the calibration answers (the answer tokens and a stop): every layer
    but the identity one learns to matter, and greedy generation answers every question."""
    torch.manual_seed(0)
    frozen_ids = {id(p) for p in frozen}
    params = [p for p in adapter.model.parameters() if id(p) not in frozen_ids]
    opt = torch.optim.Adam(params, lr=3e-3)
    samples, eos = _samples(), adapter.tokenizer.eos_token
    inputs = adapter.build_inputs(samples, answers=[s.answer + eos for s in samples])
    ids = inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    for row, s in enumerate(samples):  # left padding: each row ends with its answer and the stop
        prompt = adapter.prompt(s)
        n = len(adapter.tokenizer(prompt + s.answer + eos, add_special_tokens=False)["input_ids"]) - \
            len(adapter.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        labels[row, ids.shape[1] - n:] = ids[row, ids.shape[1] - n:]
    adapter.model.train()
    for _ in range(steps):
        opt.zero_grad()
        adapter.model(**inputs, labels=labels).loss.backward()
        opt.step()
    adapter.model.eval()


def _samples():
    return make_samples(6)


def test_the_removal_loss_is_the_answer_tokens_nll_and_leaves_the_model_whole(adapter):
    loss = CalibrationLoss(adapter, _samples(), batch_size=4)
    before = weights_checksum(adapter.model), [id(m) for m in adapter.decoder_layers()]
    # direct: each sample alone, no padding, NLL of its answer tokens after the prompt
    nll, count = 0.0, 0
    for s in _samples():
        full = adapter.build_inputs([s], answers=[s.answer])
        n = len(adapter.tokenizer(adapter.prompt(s) + s.answer, add_special_tokens=False)["input_ids"]) - \
            len(adapter.tokenizer(adapter.prompt(s), add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            logp = torch.log_softmax(adapter.forward(full).logits.float()[0], -1)
        ids = full["input_ids"][0]
        nll -= sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))
        count += n
    assert count == loss.num_tokens > 0
    assert loss(()) == pytest.approx(nll / count, rel=1e-4)
    assert loss((1,)) != pytest.approx(loss(()), rel=1e-6)
    assert (weights_checksum(adapter.model), [id(m) for m in adapter.decoder_layers()]) == before
    assert adapter.kept_layers == [0, 1, 2, 3] and loss.passes == 3


def test_removing_the_identity_layer_changes_nothing(adapter):
    loss = CalibrationLoss(adapter, _samples(), batch_size=6)
    assert loss((IDENTITY,)) == pytest.approx(loss(()), abs=1e-6)


def test_ppl_ranks_the_identity_layer_first(adapter):
    loss = CalibrationLoss(adapter, _samples(), batch_size=6)
    result = PPLScorer(num_samples=None).score(None, ScoringContext(num_layers=4, removal_loss=loss))
    assert int(np.argmax(result.redundancy)) == IDENTITY
    assert result.extra["ppl"]["cost"]["passes"] == 5  # the unpruned model and each layer alone
    assert result.scores[IDENTITY] == pytest.approx(np.exp(result.extra["ppl"]["unpruned_loss"]), rel=1e-5)


def test_sleb_removes_the_identity_layer_first_and_orders_the_rest(adapter):
    loss = CalibrationLoss(adapter, _samples(), batch_size=6)
    scorer = SLEBScorer(num_samples=None, max_removed=0.5)
    result = scorer.score(None, ScoringContext(num_layers=4, removal_loss=loss))
    order = result.extra["sleb"]["order"]
    assert order[0] == IDENTITY and len(order) == 2  # 2 candidates (barriers: first and last remaining)
    assert int(np.argmax(result.redundancy)) == IDENTITY
    assert result.extra["sleb"]["cost"]["passes"] == 2 + 1  # step 1: layers 1, 2; step 2: one left
    assert np.isneginf(result.redundancy[[0, 3]]).all()  # the barriers go last


def test_bad_parameters_name_the_key():
    with pytest.raises(ValueError, match="num_samples=0"):
        PPLScorer(num_samples=0)
    with pytest.raises(ValueError, match="max_removed=1.5"):
        SLEBScorer(max_removed=1.5)
    with pytest.raises(ValueError, match="early_barrier=-1"):
        SLEBScorer(early_barrier=-1)


def test_through_the_harness_the_ranking_is_cached_with_its_cost(tmp_path):
    from tests.helpers import compose
    from topovlm.runner import run_job

    ov = ["debug=smoke", "scorer=ppl", "scorer.num_samples=4", f"cache_dir={tmp_path / 'cache'}"]
    first = run_job(compose([*ov, "sparsity=0.25"]), tmp_path / "a")
    assert first.extra["ppl"]["cost"]["passes"] == 13 and not first.scores_from_cache
    again = run_job(compose([*ov, "sparsity=0.5"]), tmp_path / "b")
    assert again.scores_from_cache
    np.testing.assert_array_equal(again.redundancy, first.redundancy)


# ------------------------------------------------------------------ the oracle

def _dev_task(tmp_path):
    """The calibration questions as a jsonl development split (the model was fitted to them)."""
    import json

    from omegaconf import OmegaConf

    root = tmp_path / "dev"
    root.mkdir()
    lines = []
    for s in _samples():
        s.image.save(root / f"{s.id}.png")
        lines.append(json.dumps({"id": s.id, "question": s.question, "answer": s.answer, "domain": s.domain,
                                 "category": s.category, "image": f"{s.id}.png"}))
    (root / "dev.jsonl").write_text("\n".join(lines) + "\n")
    return OmegaConf.create({"name": "dev", "evaluator": "vqa", "batch_size": 6, "limit": None, "max_new_tokens": 3,
                             "options": {}, "dataset": {"source": "jsonl", "path": str(root), "split": "dev",
                                                        "n": None, "seed": 0, "version": "v1", "options": {}}})


def test_the_oracle_measures_zero_damage_for_the_identity_layer_and_removes_it_first(adapter, tmp_path):
    from topovlm.oracle import OracleScorer, evaluations
    from topovlm.removal_loss import DevMetric

    dev = DevMetric(adapter, _dev_task(tmp_path), "accuracy")
    scorer = OracleScorer(dev_n=6, max_removed=0.5)
    result = scorer.score(None, ScoringContext(num_layers=4, dev_metric=dev))
    oracle = result.extra["oracle"]
    damage = np.array(oracle["loo_damage"])
    assert oracle["unpruned"] == 1.0  # the fitted model answers its development questions
    assert damage[IDENTITY] == 0.0 and oracle["loo_loss_increase"][IDENTITY] == pytest.approx(0.0, abs=1e-6)
    # equal accuracies are decided by the answers' loss: the identity layer costs none
    assert min(np.delete(oracle["loo_loss_increase"], [0, IDENTITY])) > 1e-4, oracle["loo_loss_increase"]
    assert oracle["order"][0] == IDENTITY and int(np.argmax(result.redundancy)) == IDENTITY
    assert result.redundancy[0] == -np.inf  # protected: measured, never removed
    assert result.arrays["loo_correct"].shape == (5, 6)
    assert oracle["cost"]["evaluations"] == evaluations(4, 1, 2) == 1 + 4 + 2  # unpruned, each alone, 2 left


def test_the_oracle_refuses_a_task_without_a_development_split():
    from tests.helpers import compose
    from topovlm.oracle import OracleScorer

    cfg = compose(["debug=smoke", "scorer=oracle", "task=text_ppl"])
    with pytest.raises(ValueError, match="needs a development split"):
        OracleScorer().check_config(cfg)


def test_a_sweep_with_the_oracle_gets_a_validity_section_csv_and_plot(tmp_path):
    from tests.helpers import compose
    from topovlm.runner import run_job
    from topovlm.summary import build_summary

    common = ["debug=smoke", f"cache_dir={tmp_path / 'cache'}", "task.options.multiple_choice=true"]
    sweep = tmp_path / "sweep"
    for i, (scorer, extra) in enumerate([("oracle", ["scorer.dev_n=4", "scorer.metric=accuracy_mc"]),
                                         ("ppl", ["scorer.num_samples=4"]), ("tail", [])]):
        for j, sparsity in enumerate((0.25, 0.5)):
            run_job(compose([*common, f"scorer={scorer}", f"sparsity={sparsity}", *extra]),
                    sweep / f"{2 * i + j}_{scorer}_s{sparsity}", sweep_dir=sweep)
    summary = build_summary([sweep])
    [v] = summary.validity
    assert v.metric == "accuracy_mc" and v.dev_n == 4 and len(v.damage) == 12
    assert {r["scorer"] for r in v.rows} == {"ppl", "tail"}
    assert {(g["scorer"], g["sparsity"]) for g in v.gaps} == {(s, p) for s in ("ppl", "tail") for p in (0.25, 0.5)}
    text = (sweep / "summary.md").read_text()
    assert "Does a scorer predict the damage?" in text and "Gap to the greedy oracle" in text
    assert (sweep / "validity.csv").is_file() and list((sweep / "plots").glob("validity_*.png"))
