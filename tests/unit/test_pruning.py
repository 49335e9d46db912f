"""Layer removal keeps caching, generation and save/load correct; results use original indices."""
from __future__ import annotations

import pytest
import torch

from tests.helpers import assert_cache_consistent, make_samples
from topovlm.adapters.families import CausalLMAdapter
from topovlm.adapters.tiny import tiny_llama, tiny_tokenizer
from topovlm.pruning import remove_layers


def test_pruned_llava_generation_matches_full_recompute(fresh_tiny_llava):
    adapter = fresh_tiny_llava
    kept = remove_layers(adapter, [1, 4, 5])
    assert kept == [0, 2, 3, 6, 7]
    assert adapter.num_layers == 5 and adapter.text_config().num_hidden_layers == 5
    assert [layer.self_attn.layer_idx for layer in adapter.decoder_layers()] == list(range(5))
    assert_cache_consistent(adapter, adapter.build_inputs(make_samples(3)))


def test_second_pruning_uses_original_indices(fresh_tiny_llava):
    remove_layers(fresh_tiny_llava, [2])
    kept = remove_layers(fresh_tiny_llava, [3, 7])  # original indices, not positions
    assert kept == [0, 1, 4, 5, 6]
    with pytest.raises(ValueError, match="not in the model"):
        remove_layers(fresh_tiny_llava, [2])


def test_mixed_attention_layer_types_are_trimmed():
    """Gemma-3 style sliding/full mixes: without trimming layer_types, cached decoding is wrong."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = tiny_tokenizer()
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=6,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
                              max_position_embeddings=256, pad_token_id=1, bos_token_id=2, eos_token_id=3,
                              layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2)
    torch.manual_seed(0)
    adapter = CausalLMAdapter(Gemma3ForCausalLM(config).eval(), tok, name="tiny-gemma3")
    remove_layers(adapter, [1, 2])
    assert adapter.text_config().layer_types == ["sliding_attention", "sliding_attention", "sliding_attention",
                                                 "full_attention"]
    inputs = adapter.build_inputs(make_samples(2, with_image=False))
    assert_cache_consistent(adapter, inputs)


def test_save_and_reload_gives_same_logits(fresh_tiny_llava, tmp_path):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    adapter = fresh_tiny_llava
    remove_layers(adapter, [3, 6])
    inputs = adapter.build_inputs(make_samples(2))
    with torch.no_grad():
        before = adapter.model(**inputs).logits
    adapter.save_pretrained(tmp_path)
    reloaded = LlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert reloaded.config.text_config.num_hidden_layers == 6
    AutoProcessor.from_pretrained(tmp_path)  # the processor travels with it
    with torch.no_grad():
        after = reloaded(**inputs).logits
    torch.testing.assert_close(before, after)


def test_causal_lm_pruning_and_generation():
    model, tok = tiny_llama(num_layers=6)
    adapter = CausalLMAdapter(model, tok, name="tiny-llama")
    remove_layers(adapter, [0, 5])
    assert_cache_consistent(adapter, adapter.build_inputs(make_samples(2, with_image=False)))


def test_refuses_to_remove_everything(fresh_tiny_llava):
    with pytest.raises(ValueError):
        remove_layers(fresh_tiny_llava, range(8))
