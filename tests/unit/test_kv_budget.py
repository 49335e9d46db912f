"""The KV-cache arithmetic behind the lmms batch size: bytes per token from the config, checked
by hand and against the cache a real forward pass fills; rows that fit a device's free memory."""
from __future__ import annotations

import pytest
import torch

from topovlm.evaluation.kv_budget import KVBudget, KVBudgetError, KVShape, layers_by_device, rows_that_fit


def _llama(**kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=50, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, **kw)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=64, n_head=4, n_layer=3, n_positions=64)).eval()


# hand-computed: 2 (keys, values) x layers x KV heads x head dim x dtype bytes
@pytest.mark.parametrize("build, dtype, expected", [
    (lambda: _llama(), torch.float16, 2 * 4 * 2 * 16 * 2),             # grouped-query: 2 KV heads of 64 / 4
    (lambda: _llama(head_dim=32), torch.float32, 2 * 4 * 2 * 32 * 4),  # head_dim set apart from hidden / heads
    (_gpt2, torch.bfloat16, 2 * 3 * 4 * 16 * 2),                       # no num_key_value_heads: one per head
])
def test_bytes_per_token_by_hand(build, dtype, expected):
    config = build().config
    shape = KVShape.from_config(config, dtype)
    assert shape.bytes_per_token(config.num_hidden_layers) == expected


@pytest.mark.parametrize("build", [lambda: _llama(), lambda: _llama(head_dim=32), _gpt2])
def test_bytes_per_token_is_what_a_real_cache_holds(build):
    model = build()
    batch, tokens = 3, 5
    with torch.inference_mode():
        out = model(input_ids=torch.randint(0, 50, (batch, tokens)), use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values  # transformers >= 5.24 names it cache
    held = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    shape = KVShape.from_config(model.config, model.dtype)
    assert held == batch * tokens * shape.bytes_per_token(model.config.num_hidden_layers)


def test_rows_that_fit_by_hand():
    shape = KVShape(num_kv_heads=2, head_dim=16, dtype_bytes=2)  # 128 bytes per token and layer
    # one device, 4 layers: 512 B/token x 100 tokens = 51,200 B per row; 0.8 x 1,000,000 = 800,000 B
    assert rows_that_fit(shape, {"cuda:0": 4}, {"cuda:0": 1_000_000}, 100, 0.8) == 15
    # layers spread over two devices: the tighter one decides (cuda:1: 80,000 // 12,800 = 6; cuda:0: 20)
    assert rows_that_fit(shape, {"cuda:0": 3, "cuda:1": 1}, {"cuda:0": 1_000_000, "cuda:1": 100_000}, 100, 0.8) == 6
    assert rows_that_fit(shape, {"cuda:0": 4}, {"cuda:0": 51_199}, 100, 1.0) == 0


def test_on_cpu_the_budget_leaves_the_batch_size_and_says_so(tiny_llava):
    budget = KVBudget(tiny_llava, 0.8)
    assert layers_by_device(tiny_llava) == {"cpu": tiny_llava.num_layers}
    assert not budget.applies and "cpu" in budget.reason
    assert budget.rows(16, 10**9, "task") == 16  # no memory query on CPU, even for an absurd length
    assert budget.record() == {"applied": False, "reason": budget.reason}


class _FreeMemory(KVBudget):
    """The budget as on a CUDA device with a given free memory (this machine has none): the
    device query is replaced, the arithmetic, the batch bound and the error are the real ones."""

    def __init__(self, adapter, fraction: float, free: int) -> None:
        super().__init__(adapter, fraction)
        self.layers = {"cuda:0": adapter.num_layers}
        self.applies, self._free = True, free

    def free(self) -> dict[str, int]:
        return {"cuda:0": self._free}


def test_the_budget_bounds_rows_or_fails_with_the_numbers(tiny_llava):
    per_token = KVShape.from_config(tiny_llava.text_config(), tiny_llava.model.dtype).bytes_per_token(
        tiny_llava.num_layers)
    budget = _FreeMemory(tiny_llava, 0.5, free=2 * 3 * 100 * per_token)  # half of it: 3 rows of 100 tokens
    assert budget.rows(16, 100, "task a") == 3
    assert budget.rows(2, 100, "task a") == 2  # never more than asked
    assert budget.record()["batch_size"] == {"task a": 3} and budget.record()["batches_shrunk"] == 1
    with pytest.raises(KVBudgetError) as err:
        budget.rows(1, 700, "lmms-eval task long")  # 700 tokens: more than the 600 that fit
    msg = str(err.value)
    assert "lmms-eval task long" in msg and "700 tokens" in msg and f"{per_token} bytes per token" in msg
    assert "task.max_new_tokens_cap" in msg and "kv_cache_fraction" in msg


def _requests(samples, gen, task="pope"):
    from lmms_eval.api.instance import Instance

    return [Instance("generate_until", (s.question, dict(gen), None, k, task, "test"), idx=0,
                     metadata={"task": task, "doc_id": k, "repeats": 1}) for k, s in enumerate(samples)]


def test_the_lmms_model_batches_what_fits_and_fails_before_generating(tiny_llava):
    from tests.helpers import make_samples
    from topovlm.evaluation.lmms_model import AdapterLMM

    samples = make_samples(5, with_image=False)
    gen = {"max_new_tokens": 4, "until": ["\n\n"], "do_sample": False}
    expected = AdapterLMM(tiny_llava, batch_size=4).generate_until(_requests(samples, gen))
    widths = [tiny_llava.build_inputs([s])["input_ids"].shape[1] for s in samples]
    per_token = KVShape.from_config(tiny_llava.text_config(), tiny_llava.model.dtype).bytes_per_token(
        tiny_llava.num_layers)
    rows_of = [max(widths) + 4, min(widths) + 4]  # tokens per row at the widest and narrowest batch
    assert 3 * rows_of[1] > 2 * rows_of[0]  # room for 2 rows of any batch, never 3

    lm = AdapterLMM(tiny_llava, batch_size=4)
    lm.kv_budget = _FreeMemory(tiny_llava, 0.5, free=2 * 2 * rows_of[0] * per_token)
    rows: list[int] = []
    handle = tiny_llava.model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        answers = lm.generate_until(_requests(samples, gen))
    finally:
        handle.remove()
    assert max(rows) == 2 and answers == expected  # batches of 2 (then 1), the same answers
    assert lm.kv_budget.record()["batch_size"] == {"lmms-eval task pope": 2}

    lm.kv_budget = _FreeMemory(tiny_llava, 0.5, free=per_token)  # not one row of prompt + 4 tokens
    rows.clear()
    handle = tiny_llava.model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[0]))
    try:
        with pytest.raises(KVBudgetError, match="lmms-eval task pope: one row's KV cache does not fit"):
            lm.generate_until(_requests(samples, gen))
    finally:
        handle.remove()
    assert rows == []  # before any generation
