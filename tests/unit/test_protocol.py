"""task.protocol: the harness's prompts and batches (harness) against lmms-eval's own model
classes (lmms_exact), on saved tiny LLaVA and Qwen2-VL replicas. lmms-eval's classes run their
own generate_until around the same loaded model (topovlm.evaluation.protocol.lmms_eval_model)."""
from __future__ import annotations

import pytest

from tests.helpers import compose, lmms_task, make_samples, tiny_overrides
from topovlm.errors import ConfigError
from topovlm.evaluation import protocol
from topovlm.evaluation import parity

# lmms-eval is part of the test environment (make setup): a broken install must fail here, not skip
import lmms_eval.models.simple.llava_hf  # noqa: F401 - imported for the failure, see above

GEN = dict(protocol.POPE_GEN_KWARGS, max_new_tokens=4)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> directory of a saved tiny replica (save_pretrained of model and processor)."""
    from topovlm.adapters.tiny import tiny_llava, tiny_qwen2_vl

    out = {}
    for family, build in (("llava", tiny_llava), ("qwen2_vl", tiny_qwen2_vl)):
        model, processor = build(num_layers=4)
        path = tmp_path_factory.mktemp(family)
        model.save_pretrained(path)
        processor.save_pretrained(path)
        out[family] = path
    return out


def _load(saved, family):
    from topovlm.adapters.loading import load_adapter

    preset = {"llava": "llava-1.5-7b", "qwen2_vl": "qwen2-vl-7b"}[family]
    cfg = compose([f"model={preset}", f"model.path={saved[family]}", "model.device=cpu", "model.device_map=null",
                   "model.dtype=float32", "model.attn_implementation=null"])
    return load_adapter(cfg.model)


def _docs(n=3):
    return parity.pope_docs(make_samples(n))


# ------------------------------------------------------------------------------ config
def test_protocol_values_are_checked_before_anything_loads(tmp_path):
    from topovlm.config import validate

    with pytest.raises(ConfigError, match="task.protocol='batched' is not allowed; allowed values: harness, lmms_exact"):
        validate(compose(tiny_overrides(tmp_path, "task=shapes_lmms", "task.protocol=batched")), inputs=False)
    # lmms-eval's classes exist only behind its evaluator
    with pytest.raises(ConfigError, match="needs task.evaluator=lmms"):
        validate(compose(tiny_overrides(tmp_path, "task.protocol=lmms_exact")), inputs=False)
    with pytest.raises(ConfigError, match="model.family=causal_lm has none"):
        validate(compose(tiny_overrides(tmp_path, "task=shapes_lmms", "model=tiny_llama", "task.protocol=lmms_exact")),
                 inputs=False)
    validate(compose(tiny_overrides(tmp_path, "task=shapes_lmms", "task.protocol=lmms_exact")), inputs=False)


def test_default_protocol_leaves_recorded_configs_as_they_were(tmp_path):
    from topovlm.config import resolved_config

    # results recorded before task.protocol existed keep their identity; lmms_exact jobs are other jobs
    assert "protocol" not in resolved_config(compose(tiny_overrides(tmp_path, "task=shapes_lmms")))["task"]
    exact = resolved_config(compose(tiny_overrides(tmp_path, "task=shapes_lmms", "task.protocol=lmms_exact")))
    assert exact["task"]["protocol"] == "lmms_exact"


# ------------------------------------------------------------------------------ lmms_exact = lmms-eval's classes
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_lmms_exact_is_lmms_evals_own_class(saved, family):
    adapter = _load(saved, family)
    c = parity.compare(adapter, _docs(), GEN, batch_size=3)
    assert c.lmms is not None and c.exact_mismatches == []
    assert c.exact_prompts == c.lmms_prompts and c.exact_ids == c.lmms_ids and c.exact == c.lmms
    # the harness prompts through the processor's template, with the image as a content item
    assert c.harness_prompt == adapter.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": c.docs[0].context}]}],
        add_generation_prompt=True, tokenize=False)
    if family == "qwen2_vl":  # lmms-eval's qwen2_vl adds its system message, the replica's template none
        assert c.exact_prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
        assert c.harness_prompt != c.exact_prompt
    else:  # the replica's tokenizer carries the processor's ChatML template: the same text
        assert c.harness_prompt == c.exact_prompt


def test_llava_tokenizer_without_template_gets_lmms_evals_vicuna_prompt(saved):
    adapter = _load(saved, "llava")
    adapter.tokenizer.chat_template = None  # a checkpoint whose template is the processor's only
    c = parity.compare(adapter, _docs(2), GEN, batch_size=2)
    assert c.exact_prompt.startswith("A chat between a curious user and an artificial intelligence assistant.")
    assert c.exact_prompt.endswith("USER: <image>\n" + c.docs[0].context + " ASSISTANT:")
    assert c.exact_mismatches == [] and c.exact_prompt == c.lmms_prompt
    assert c.harness_prompt.startswith("<|im_start|>user\n<image>\n")
    assert adapter.tokenizer.chat_template is None  # lmms_exact leaves the shared tokenizer as it was


def test_a_template_that_drops_the_question_is_an_error(saved):
    adapter = _load(saved, "llava")
    # a template for list content only: lmms-eval's string content renders as "USER: ASSISTANT:"
    adapter.tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'].upper() + ': ' }}"
        "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] + ' ' }}{% endfor %}"
        "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    with pytest.raises(protocol.ProtocolError, match="drops the question.*'USER: ASSISTANT:'"):
        protocol.llava_hf_prompt(adapter.tokenizer, "Is there a dog?", 1)


def test_qwen_images_are_read_as_lmms_evals_jpeg_data_urls(saved):
    from PIL import Image

    adapter = _load(saved, "qwen2_vl")
    image = make_samples(1)[0].image
    messages = protocol.qwen2_vl_messages("Is there a circle?", [image])
    element = messages[1]["content"][0]
    assert element["image"].startswith("data:image/jpeg;base64,")
    assert (element["max_pixels"], element["min_pixels"]) == (602112, 3136)  # Qwen2_VL.__init__'s defaults
    fetched = protocol.fetch_image(element)
    # 32 x 32 is below min_pixels: scaled up to a multiple of 28 (56 x 56), JPEG-decoded, not the original pixels
    assert fetched.size == (56, 56)
    assert fetched.tobytes() != image.resize((56, 56), Image.BICUBIC).tobytes()
    assert protocol.exact_inputs(adapter, "Is there a circle?", [image])[1]["pixel_values"].shape[0] > 0


# ------------------------------------------------------------------------------ the evaluator's hook
def _recording(adapter):
    """The texts the processor gets and the batch size of every generate call."""
    texts, batches = [], []
    processor, generate = adapter.processor, adapter.model.generate

    class Recording:
        def __call__(self, *args, **kwargs):
            text = kwargs.get("text")
            texts.extend(text if isinstance(text, list) else [text])
            return processor(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(processor, name)

    def counting(*args, **kwargs):
        batches.append(int(kwargs["input_ids"].shape[0]))
        return generate(*args, **kwargs)

    adapter.processor = Recording()
    adapter.model.generate = counting
    return texts, batches


@pytest.mark.parametrize("name", ["harness", "lmms_exact"])
def test_evaluator_runs_each_protocol(saved, tmp_path, name):
    from topovlm.data.types import VQASample
    from topovlm.evaluation.lmms import LmmsEvalEvaluator

    adapter = _load(saved, "llava")
    adapter.tokenizer.chat_template = None  # the two protocols' prompts differ (Vicuna vs ChatML)
    texts, batches = _recording(adapter)
    ev = LmmsEvalEvaluator(lmms_task("shapes_lmms", tmp_path, n=8, limit=4, batch_size=4, max_new_tokens=3,
                                     protocol=name))
    metrics = ev.evaluate(adapter)
    assert metrics["num_samples"] == 4
    record = ev.protocol()
    assert record["prompt_protocol"] == name
    contexts = [r["prompt"] for r in ev.sample_records()]
    if name == "lmms_exact":
        assert batches == [1, 1, 1, 1] and record["batch_size"] == 1 and record["exact_model_class"] == "llava_hf"
        assert sorted(texts) == sorted(protocol.llava_hf_prompt(adapter.tokenizer, c, 1) for c in contexts)
        assert all(t.startswith("A chat between a curious user") for t in texts)
    else:
        assert batches == [4] and record["batch_size"] == 4
        assert sorted(texts) == sorted(adapter.prompt(VQASample("x", object(), c, "", "")) for c in contexts)


def test_batch_one_and_batched_answers_agree_in_float32(saved):
    adapter = _load(saved, "qwen2_vl")
    c = parity.compare(adapter, _docs(4), GEN, batch_size=4, reference=False)
    assert c.harness_batched == c.harness_single and c.batching_differs == 0


def test_lmms_exact_refuses_loglikelihood_as_llava_hf_cannot_score_it(saved):
    from lmms_eval.api.instance import Instance

    adapter = _load(saved, "llava")
    docs = _docs(1)
    reqs = [Instance(request_type="loglikelihood", arguments=(docs[0].context, "yes", lambda doc: doc["images"], 0, "t",
                                                              "test"), idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})]
    ours, theirs = parity.harness_model(adapter, "lmms_exact"), protocol.lmms_eval_model(adapter)
    ours.task_dict = theirs.task_dict = {"t": {"test": [{"images": d.images} for d in docs]}}
    # lmms-eval's llava_hf tokenises the context without its image: transformers refuses
    with pytest.raises(ValueError, match="no images were passed"):
        theirs.loglikelihood(reqs)
    with pytest.raises(NotImplementedError, match="task.protocol=harness"):
        ours.loglikelihood(reqs)
    harness = parity.harness_model(adapter, "harness")
    harness.task_dict = ours.task_dict
    assert len(harness.loglikelihood(reqs)) == 1  # the harness scores it
