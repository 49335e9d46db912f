"""Short-LVLM: the attention capture path, Token Importance Scores and Subspace-Compensated Pruning."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import compose, make_samples, tiny_overrides
from topovlm.capture import run_capture
from topovlm.token_stats import STATISTICS, LayerCall, TokenMasks, register_statistic
from topovlm.pruning import remove_layers
from topovlm.api import CaptureSpec, ScoringContext, StatRequest

from baselines.short_lvlm import (
    ShortLVLMScorer, _top_fraction, important_tokens, scp_plan, token_importance,
)
from baselines.shortgpt import ShortGPTScorer

SEEN: dict[int, torch.Tensor] = {}


def _record_attention(call: LayerCall) -> torch.Tensor:
    SEEN[call.layer] = call.attention.detach().clone()
    return torch.zeros(call.h_in.shape[0])


register_statistic("test_attention_probe", _record_attention, needs_attention=True)


def _logits(adapter, samples) -> torch.Tensor:
    with torch.no_grad():
        return adapter.forward(adapter.build_inputs(samples)).logits[:, -1].float()


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """KL(reference || other) of the next-token distributions, mean over samples."""
    return float(torch.nn.functional.kl_div(q_logits.log_softmax(-1), p_logits.log_softmax(-1),
                                            log_target=True, reduction="batchmean"))


# ---------------------------------------------------------------- attention capture


def test_attention_capture_gives_causal_maps_and_restores_the_model(fresh_tiny_llava) -> None:
    adapter = fresh_tiny_llava
    config = adapter.model.config
    before = (config.text_config._attn_implementation, config.vision_config._attn_implementation)
    SEEN.clear()
    samples = make_samples(4)
    capture = run_capture(adapter, samples, CaptureSpec((StatRequest.make("test_attention_probe"),)), batch_size=4)
    assert sorted(SEEN) == list(range(adapter.num_layers))
    inputs = adapter.build_inputs(samples)
    valid = inputs["attention_mask"].bool()
    b, t = inputs["input_ids"].shape
    heads = adapter.text_config().num_attention_heads
    for a in SEEN.values():
        assert a.shape == (b, heads, t, t)
        rows = a.sum(-1)[valid.unsqueeze(1).expand(b, heads, t)]
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-4)  # softmax rows of real queries
        assert float(a.triu(diagonal=1).abs().max()) == 0.0  # causal
    # only the language model was switched, and it is switched back
    assert (config.text_config._attn_implementation, config.vision_config._attn_implementation) == before
    assert capture.stats["test_attention_probe"].shape == (adapter.num_layers, 4)


def test_attention_capture_on_a_text_only_model() -> None:
    from topovlm.adapters.families import CausalLMAdapter
    from topovlm.adapters.tiny import tiny_llama

    model, tok = tiny_llama(num_layers=2)
    adapter = CausalLMAdapter(model, tok)
    SEEN.clear()
    run_capture(adapter, make_samples(2, with_image=False), CaptureSpec((StatRequest.make("test_attention_probe"),)))
    assert len(SEEN) == 2 and model.config._attn_implementation == "sdpa"


# ---------------------------------------------------------------- token importance


def _call(attn: torch.Tensor, vision: list[bool]) -> LayerCall:
    t = attn.shape[-1]
    h = torch.randn(1, t, 4)
    masks = TokenMasks(valid=torch.ones(1, t, dtype=torch.bool), vision=torch.tensor([vision]))
    return LayerCall(0, h, h + 0.1 * torch.randn(1, t, 4), masks, attn)


def test_token_importance_is_the_mean_of_within_and_cross_modal_attention() -> None:
    # tokens: text, vision, vision, text, text (one head); rows = queries
    a = torch.tensor([[1.0, 0, 0, 0, 0],
                      [0.5, 0.5, 0, 0, 0],
                      [0.2, 0.3, 0.5, 0, 0],
                      [0.1, 0.6, 0.2, 0.1, 0],
                      [0.1, 0.1, 0.4, 0.2, 0.2]]).view(1, 1, 5, 5)
    vision = [False, True, True, False, False]
    call = _call(a, vision)
    got = token_importance(call, "block")[0]
    # key 1 (vision): from vision queries (1, 2) mean(0.5, 0.3); from text queries (0, 3, 4) mean(0, 0.6, 0.1)
    assert float(got[1]) == pytest.approx(((0.5 + 0.3) / 2 + (0 + 0.6 + 0.1) / 3) / 2)
    # key 3 (text): text queries mean(0, 0.1, 0.2); vision queries mean(0, 0)
    assert float(got[3]) == pytest.approx(((0 + 0.1 + 0.2) / 3 + 0.0) / 2)
    vis = token_importance(call, "visible")[0]
    # visible: key 3 is seen by text queries 3, 4 only and by no vision query -> text block alone
    assert float(vis[3]) == pytest.approx((0.1 + 0.2) / 2)
    assert float(vis[1]) == pytest.approx(((0.5 + 0.3) / 2 + (0.6 + 0.1) / 2) / 2)


def test_top_fraction_keeps_ceil_p_of_each_modality() -> None:
    score = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7, 0.2]])
    vision = torch.tensor([[False, True, True, True, False, False]])
    text = ~vision
    assert _top_fraction(score, vision, 0.5).tolist() == [[False, False, True, True, False, False]]
    assert _top_fraction(score, text, 0.1).tolist() == [[True, False, False, False, False, False]]
    call = _call(torch.softmax(torch.randn(1, 2, 6, 6), -1).tril(), vision[0].tolist())
    assert important_tokens(call, 1.0, 1.0, "visible").all()
    assert int(important_tokens(call, 0.3, 0.3, "visible").sum()) == 2


def test_tis_over_all_tokens_is_shortgpt(tiny_llava) -> None:
    full = ShortLVLMScorer(top_p_vision=1.0, top_p_text=1.0)
    part = ShortLVLMScorer(top_p_vision=0.25, top_p_text=0.5)
    gpt = ShortGPTScorer(tokens="all")
    spec = full.capture_spec() | part.capture_spec() | gpt.capture_spec()
    capture = run_capture(tiny_llava, make_samples(8), spec, batch_size=4)
    ctx = ScoringContext()
    a, b, c = full.score(capture, ctx), gpt.score(capture, ctx), part.score(capture, ctx)
    np.testing.assert_allclose(a.scores, 1.0 - b.scores, atol=1e-6)
    assert np.argsort(-a.redundancy, kind="stable").tolist() == np.argsort(-b.redundancy, kind="stable").tolist()
    assert not np.allclose(c.scores, a.scores)  # restricting the tokens changes the statistic


def test_scorer_config_and_validation(tmp_path) -> None:
    from topovlm.config import ConfigError
    from topovlm.config import build_scorer

    cfg = compose(tiny_overrides(tmp_path, "scorer=short_lvlm", "scorer.compensation=scp"))
    scorer = build_scorer(cfg.scorer)
    assert isinstance(scorer, ShortLVLMScorer) and scorer.compensation == "scp" and not scorer.cacheable
    assert ShortLVLMScorer().cacheable and "_reference" not in ShortLVLMScorer().params()
    for bad in ({"top_p_text": 0.0}, {"compensation": "x"}, {"rank": -1}, {"column_mean": "x"},
                {"scp_poolings": ["mean"]}):
        with pytest.raises(ConfigError):
            build_scorer({"name": "short_lvlm", **bad})
    with pytest.raises(RuntimeError, match="score"):
        ShortLVLMScorer(compensation="scp").after_pruning(None, [1], [], ScoringContext())


# ---------------------------------------------------------------- subspace compensation


def test_scp_plan_maps_removed_layers_to_the_layer_receiving_their_input() -> None:
    plan = scp_plan([2, 3, 5, 7], [0, 1, 4, 6])
    assert [(g["layer"], g["position"], g["boundary"], g["pruned_boundary"], g["removed"]) for g in plan] == [
        (4, 2, 4, 2, [2, 3]), (6, 3, 6, 3, [5]), (6, 3, 8, 4, [7])]


def _scored(adapter, samples, **kw) -> ShortLVLMScorer:
    scorer = ShortLVLMScorer(compensation="scp", **kw)
    scorer.score(run_capture(adapter, samples, scorer.capture_spec(), batch_size=8), ScoringContext())
    return scorer


@pytest.mark.parametrize("projection", ["o_proj", "down_proj"])
def test_scp_edits_only_the_named_projection(fresh_tiny_llava, projection: str) -> None:
    adapter, samples = fresh_tiny_llava, make_samples(8)
    scorer = _scored(adapter, samples, projection=projection, rank=2)
    remove_layers(adapter, [2, 5])
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    record = scorer.after_pruning(adapter, [2, 5], samples, ScoringContext())
    changed = sorted(k for k, v in adapter.model.state_dict().items() if not torch.equal(v, before[k]))
    path = {"o_proj": "self_attn.o_proj", "down_proj": "mlp.down_proj"}[projection]
    # layers 3 and 6 receive the inputs of 2 and 5; they sit at positions 2 and 4 of the pruned decoder
    assert changed == [f"model.language_model.layers.{p}.{path}.weight" for p in (2, 4)]
    assert [(e["layer"], e["position"], e["removed_layers"], e["rank"]) for e in record["edits"]] == [
        (3, 2, [2], 2), (6, 4, [5], 2)]
    json.dumps(record)


def test_scp_rank_zero_is_the_identity(fresh_tiny_llava) -> None:
    adapter, samples = fresh_tiny_llava, make_samples(8)
    scorer = _scored(adapter, samples, rank=0)
    remove_layers(adapter, [3])
    before = {k: v.clone() for k, v in adapter.model.state_dict().items()}
    record = scorer.after_pruning(adapter, [3], samples, ScoringContext())
    assert all(torch.equal(v, before[k]) for k, v in adapter.model.state_dict().items())
    assert record["edits"][0]["rank"] == 0
    assert record["output_gap_last_token"]["before"] == record["output_gap_last_token"]["after"]


def test_scp_moves_the_pruned_model_toward_the_unpruned_one(fresh_tiny_llava, tmp_path) -> None:
    """Measured on calibration data, on a tiny model where the method's premise holds.

    SCP assumes a removed layer's contribution lies where its retained neighbour's output
    already points. Here layers 4 and 6 are copies of the removed 3 and 5. (On the plain
    random tiny model, whose neighbouring layers are unrelated, the same edit moves the
    outputs away instead: there is no such premise to exploit.)
    """
    adapter, samples = fresh_tiny_llava, make_samples(16)
    layers = adapter.decoder_layers()
    layers[4].load_state_dict(layers[3].state_dict())
    layers[6].load_state_dict(layers[5].state_dict())
    scorer = _scored(adapter, samples, projection="o_proj", rank=4)
    reference = _logits(adapter, samples)
    remove_layers(adapter, [3, 5])
    pruned = _logits(adapter, samples)
    record = scorer.after_pruning(adapter, [3, 5], samples, ScoringContext())
    compensated = _logits(adapter, samples)
    kl_pruned, kl_comp = _kl(reference, pruned), _kl(reference, compensated)
    dist = lambda x: float(((x - reference).norm(dim=-1) / reference.norm(dim=-1)).mean())  # noqa: E731 - a one-line local helper
    print(f"\nSCP o_proj rank 4: KL to unpruned {kl_pruned:.5f} -> {kl_comp:.5f}, "
          f"relative logit distance {dist(pruned):.4f} -> {dist(compensated):.4f}, "
          f"decoder-output gap {record['output_gap_last_token']}")
    assert kl_comp < 0.8 * kl_pruned
    assert dist(compensated) < dist(pruned)
    gap = record["output_gap_last_token"]
    assert gap["after"] < gap["before"]

    # the compensated model saves and reloads with the same logits
    from transformers import LlavaForConditionalGeneration

    adapter.save_pretrained(tmp_path / "m")
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    inputs = adapter.build_inputs(samples[:4])
    with torch.no_grad():
        again = reloaded(**inputs, use_cache=False).logits[:, -1]
    torch.testing.assert_close(again, compensated[:4], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_short_lvlm_job_records_the_edit(tmp_path) -> None:
    from topovlm.runner import run_job

    cfg = compose(tiny_overrides(tmp_path, "scorer=short_lvlm", "scorer.compensation=scp", "sparsity=0.25",
                                 "task.dataset.n=8"))
    results = run_job(cfg, tmp_path / "out")
    edit = results["after_pruning"]
    assert edit["method"] == "scp" and edit["edits"]
    assert sorted(r for e in edit["edits"] for r in e["removed_layers"]) == results["removed_layers"]
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["after_pruning"]["edits"] == json.loads(json.dumps(edit["edits"]))
    assert "test_attention_probe" in STATISTICS  # the probe statistic stays registered for other tests
