"""Generation stops where the task's scoring stops: a row that never stops runs its batch to
the generation length and changes no other row's answer; task.max_new_tokens_cap bounds that
length, is validated before anything loads and is recorded; the presets document lmms-eval's
own settings, and their caps keep the scores of lmms-eval's scoring functions."""
from __future__ import annotations

import logging
import re

import pytest

from tests.helpers import CONF, ROOT, compose
from topovlm.adapters.families import CausalLMAdapter
from topovlm.adapters.tiny import tiny_llama
from topovlm.config import validate
from topovlm.data.types import VQASample
from topovlm.errors import ConfigError

CAP = 10
QUESTIONS = ["How many circles?", "What colour is the square?", "Is there a dog?", "Count the shapes.",
             "Name the object left of the cat.", "yes or no", "What is 2 + 3?", "Describe the image in detail."]


@pytest.fixture(scope="module")
def llama():
    model, tokenizer = tiny_llama(num_layers=4, seed=0)  # random weights: greedy answers differ by prompt
    return CausalLMAdapter(model, tokenizer, name="tiny-llama", source="tiny")


def _samples() -> list[VQASample]:
    return [VQASample(f"q{i}", None, q, "", "") for i, q in enumerate(QUESTIONS)]


def _steps(adapter, fn):
    """``fn()``'s result and the decoding steps it ran (one LM-head call per generated token)."""
    calls: list[int] = []
    handle = adapter.model.get_output_embeddings().register_forward_hook(lambda *a: calls.append(1))
    try:
        return fn(), len(calls)
    finally:
        handle.remove()


def _stop_and_rows(adapter) -> tuple[str, list[int], int]:
    """A stop string that at least two questions produce within their first tokens, and a
    question whose CAP greedy tokens never contain it (the rambling row)."""
    samples = _samples()
    tokens, texts = [], []
    for s in samples:
        inputs = adapter.build_inputs([s])
        out = adapter.model.generate(**inputs, max_new_tokens=CAP, do_sample=False,
                                     pad_token_id=adapter.tokenizer.pad_token_id)[0, inputs["input_ids"].shape[1]:]
        tokens.append([adapter.tokenizer.decode(out[k:k + 1]) for k in range(len(out))])
        texts.append(adapter.tokenizer.decode(out, skip_special_tokens=True))
    for toks in tokens:
        for stop in toks[:4]:
            if not (stop.strip() and stop.isprintable() and "\ufffd" not in stop):
                continue
            stoppers = [i for i, t in enumerate(tokens) if stop in "".join(t[:4])]
            ramblers = [i for i, text in enumerate(texts) if stop not in text]
            if len(stoppers) >= 2 and ramblers:
                return stop, stoppers[:2], ramblers[0]
    raise AssertionError(f"no stop string separates the tiny model's answers: {tokens}")


def test_a_rambling_row_runs_to_the_cap_and_changes_no_other_row(llama):
    stop, (a, b), rambler = _stop_and_rows(llama)
    samples = _samples()
    alone = {}
    for i in (a, b, rambler):
        (text,), steps = _steps(llama, lambda: llama.generate([samples[i]], max_new_tokens=CAP, stop_strings=[stop]))
        alone[i] = (text, steps, llama.last_ran_out)
    # alone, the stopping rows end early at the stop string; the rambler runs to the cap
    assert alone[a][1] < CAP and alone[b][1] < CAP and alone[a][2] == alone[b][2] == [False]
    assert alone[rambler][1] == CAP and alone[rambler][2] == [True]

    rows = [a, rambler, b]  # the rambler between the others, its prompt's padding among theirs
    texts, steps = _steps(llama, lambda: llama.generate([samples[i] for i in rows], max_new_tokens=CAP,
                                                        stop_strings=[stop]))
    assert steps == CAP  # the batch ends at the cap, held only by the row that never stops
    assert texts == [alone[i][0] for i in rows]  # every row answers as it does alone
    assert llama.last_ran_out == [False, True, False]

    # without the rambler the batch ends when its last row stops
    texts, steps = _steps(llama, lambda: llama.generate([samples[a], samples[b]], max_new_tokens=CAP,
                                                        stop_strings=[stop]))
    assert steps == max(alone[a][1], alone[b][1]) < CAP
    assert texts == [alone[a][0], alone[b][0]] and llama.last_ran_out == [False, False]


def _requests(samples, gen, task="pope"):
    from lmms_eval.api.instance import Instance

    return [Instance("generate_until", (s.question, dict(gen), None, k, task, "test"), idx=0,
                     metadata={"task": task, "doc_id": k, "repeats": 1}) for k, s in enumerate(samples)]


def test_the_cap_bounds_lmms_eval_s_length_and_is_recorded(llama, caplog):
    from topovlm.evaluation.lmms_model import AdapterLMM

    stop, (a, b), rambler = _stop_and_rows(llama)
    samples = [_samples()[i] for i in (a, rambler, b)]
    gen = {"max_new_tokens": 128, "until": [stop], "temperature": 0, "top_p": 1.0, "num_beams": 1, "do_sample": False}
    lm = AdapterLMM(llama, batch_size=4, max_new_tokens_cap={"pope": CAP})
    with caplog.at_level(logging.INFO, logger="topovlm.evaluation.lmms_model"):
        answers, steps = _steps(llama, lambda: lm.generate_until(_requests(samples, gen)))
    assert steps == CAP  # not 128: the rambling row stops at the cap
    assert answers == llama.generate(samples, max_new_tokens=CAP, stop_strings=[stop])
    assert lm.limits["pope"] == {"max_new_tokens": 128, "from": "lmms-eval", "cap": CAP, "used": CAP,
                                 "capped": True, "rows": 3, "rows_at_limit": 1}
    assert re.search(rf"pope: max_new_tokens 128 \(lmms-eval\) capped at {CAP}", caplog.text)
    assert re.search(rf"pope: 1 of 3 answers ran to the cap of {CAP} tokens", caplog.text)

    # a task the cap does not name keeps lmms-eval's length; a length below the cap is kept
    lm = AdapterLMM(llama, batch_size=4, max_new_tokens_cap={"pope": CAP})
    lm.generate_until(_requests(samples, {**gen, "max_new_tokens": CAP + 2}, task="gqa"))
    assert lm.limits["gqa"]["cap"] is None and lm.limits["gqa"]["used"] == CAP + 2
    lm = AdapterLMM(llama, batch_size=4, max_new_tokens_cap=CAP)  # an int bounds every task
    lm.generate_until(_requests(samples, {**gen, "max_new_tokens": 3}, task="gqa"))
    assert lm.limits["gqa"]["used"] == 3 and not lm.limits["gqa"]["capped"]


@pytest.mark.parametrize("override, key", [
    ("task.max_new_tokens_cap=0", "task.max_new_tokens_cap=0 must be >= 1"),
    ("task.max_new_tokens_cap={gqa: -1}", "task.max_new_tokens_cap.gqa=-1 must be >= 1"),
    ("task.max_new_tokens_cap=[8]", "task.max_new_tokens_cap=[8] must be an integer >= 1 or {task: integer}"),
    ("task.max_new_tokens_cap=eight", "task.max_new_tokens_cap='eight' must be an integer"),
    ("task.options.kv_cache_fraction=0", "task.options.kv_cache_fraction=0 must be in (0, 1]"),
    ("task.options.kv_cache_fraction=1.5", "task.options.kv_cache_fraction=1.5 must be in [0, 1]"),
])
def test_a_bad_cap_fails_validation_naming_the_key(override, key):
    cfg = compose(["task=gqa", "model=tiny_llava", override])  # gqa: no cap of its own to merge into
    with pytest.raises(ConfigError) as err:
        validate(cfg, inputs=False)
    assert key in str(err.value)


def test_the_cap_belongs_to_the_lmms_evaluator_and_names_real_tasks():
    from topovlm.evaluation.lmms import check_cap_tasks

    with pytest.raises(ConfigError, match=r"task.max_new_tokens_cap=4 applies to task.evaluator=lmms only"):
        validate(compose(["task=shapes", "model=tiny_llava", "task.max_new_tokens_cap=4"]), inputs=False)
    validate(compose(["task=pope", "model=tiny_llava"]), inputs=False)
    # a preset's cap stays valid when the task list changes; a misspelt name does not pass
    check_cap_tasks({"seedbench_lite": 8}, ["gqa_lite"])
    with pytest.raises(ConfigError, match=r"task.max_new_tokens_cap.popee: 'popee' is not an lmms-eval task"):
        check_cap_tasks({"popee": 8}, ["pope"])


# lmms-eval 0.7.3's effective generation settings of each preset's task (its TaskConfig adds
# until "\n\n" where a task sets none) and the presets' caps
EXPECTED = {
    "pope": ({"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
              "until": ["\n\n"]}, 8),
    "mme": ({"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
             "until": ["\n\n"]}, 8),
    "scienceqa_img": ({"max_new_tokens": 16, "temperature": 0.0, "do_sample": False, "until": ["\n\n"]}, 8),
    "seedbench": ({"until": ["ASSISTANT:"], "image_aspect_ratio": "original"}, 8),
    "seedbench_lite": ({"until": ["ASSISTANT:"], "image_aspect_ratio": "original"}, 8),
    "gqa": ({"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
             "until": ["\n\n"]}, None),
    "gqa_lite": ({"max_new_tokens": 16, "temperature": 0.0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
                  "until": ["\n\n"]}, None),
    "textvqa_val": ({"until": ["ASSISTANT:"]}, None),
    "textvqa_val_lite": ({"until": ["ASSISTANT:"]}, None),
    "mmmu_val": ({"max_new_tokens": 128, "until": ["\n\n"]}, None),
    "mathvista_testmini_format": ({"max_new_tokens": 16384, "until": ["\n\n"]}, None),
}
PRESETS = {"pope": "pope", "mme": "mme", "scienceqa_img": "scienceqa_img", "seedbench": "seedbench",
           "seedbench_lite": "seedbench_lite", "gqa": "gqa", "gqa_lite": "gqa_lite", "textvqa_val": "textvqa_val",
           "textvqa_val_lite": "textvqa_val_lite", "mmmu_val": "mmmu_val",
           "mathvista_testmini": "mathvista_testmini_format"}


def _effective_generation(task: str) -> dict:
    from lmms_eval.api.task import TaskConfig as LmmsTaskConfig

    from topovlm.evaluation.lmms import leaf_task_configs, task_manager

    raw = leaf_task_configs(task_manager([task], "llava_hf"), [task])[task]
    return LmmsTaskConfig(task=task, output_type=raw["output_type"],
                          generation_kwargs=dict(raw.get("generation_kwargs") or {})).generation_kwargs


@pytest.mark.parametrize("preset, task", sorted(PRESETS.items()))
def test_presets_document_lmms_eval_s_settings_and_cap_short_answers(preset, task):
    gen, cap = EXPECTED[task]
    assert _effective_generation(task) == gen  # the installed lmms-eval's, as the YAML documents them
    text = re.sub(r"\s*\n#\s*", " ", (CONF / "task" / f"{preset}.yaml").read_text())  # comments as one text
    length = f"max_new_tokens {gen['max_new_tokens']}" if "max_new_tokens" in gen else "no max_new_tokens"
    until = 'until "' + gen["until"][0].encode("unicode_escape").decode() + '"'
    assert length in text and until in text, f"conf/task/{preset}.yaml documents other settings"
    cfg = compose([f"task={preset}", "model=tiny_llava"])
    validate(cfg, inputs=False)
    configured = cfg.task.max_new_tokens_cap
    assert (dict(configured) if configured is not None else None) == (None if cap is None else {task: cap})
    if cap is not None:
        assert cap < gen.get("max_new_tokens", cfg.task.max_new_tokens)  # the cap binds


def test_lmms_lite_caps_only_its_short_answer_task():
    cfg = compose(["task=lmms_lite", "model=tiny_llava"]).task
    assert dict(cfg.max_new_tokens_cap) == {"seedbench_lite": EXPECTED["seedbench_lite"][1]}


# answers longer than the cap, as a pruned model may give them; each one's capped prefix holds
# enough visible characters for the scoring rule the preset's YAML quotes
LONG_ANSWERS = ["Yes, there is a dog sitting on the grass in the picture.", "No, I do not see any cat here at all.",
                "yes it is definitely there in the middle", "No. The image shows only a table and chairs.",
                "A. The magnet attracts the iron nail.", "B is the answer because the text says so.",
                "The answer is C, since the plant grows.", "D.\nBecause the weather is cold in winter.",
                "Maybe, it is hard to tell from the image.", "y e s and then some more words follow"]


def _capped(tokenizer, text: str, cap: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > cap  # the answer is still running at the cap
    return tokenizer.decode(ids[:cap])


def _scorers():
    from lmms_eval.tasks.mme.utils import mme_process_results
    from lmms_eval.tasks.pope.utils import pope_process_results
    from lmms_eval.tasks.scienceqa.utils import sqa_process_results
    from lmms_eval.tasks.seedbench.utils import seed_aggregation_result, seed_process_result

    def pope(answer, gt):
        pred = pope_process_results({"answer": gt, "question_id": 0}, [answer])["pope_accuracy"]["prediction"]
        return pred if pred in ("yes", "no") else "other"  # what accuracy, precision, recall read

    def mme(answer, gt):
        out = mme_process_results({"answer": gt, "category": "existence", "question_id": 0}, [answer])
        return out["mme_perception_score"]["score"]

    def sqa(answer, gt):
        return sqa_process_results({"choices": ["w", "x", "y", "z"], "answer": "ABCD".index(gt)}, [answer])

    def seed(answer, gt):
        out = seed_process_result({"answer": gt, "data_type": "image", "question_id": 0}, [answer])
        return seed_aggregation_result([out["seed_all"]])

    return {"pope": (pope, ("yes", "no"), 1), "mme": (mme, ("Yes", "No"), 4),
            "scienceqa_img": (sqa, tuple("ABCD"), 2), "seedbench": (seed, tuple("ABCD"), 1)}


@pytest.mark.parametrize("task", ["pope", "mme", "scienceqa_img", "seedbench"])
def test_a_capped_answer_scores_as_the_whole_answer(task):
    from topovlm.adapters.tiny import tiny_tokenizer

    tokenizer = tiny_tokenizer()  # a real byte-level BPE: short tokens, the tightest case for a cap
    score, targets, visible = _scorers()[task]
    cap = EXPECTED[task][1]
    for answer in LONG_ANSWERS:
        prefix = _capped(tokenizer, answer, cap)
        assert len(prefix.strip().replace(".", "")) >= visible, (answer, prefix)
        for gt in targets:
            assert score(prefix, gt) == score(answer, gt), (task, answer, prefix, gt)


def test_the_docs_list_every_preset_s_cap():
    text = (ROOT / "docs" / "gpu.md").read_text()
    section = text.split("## Generation settings per task", 1)[1].split("\n## ", 1)[0]
    for preset, task in PRESETS.items():
        gen, cap = EXPECTED[task]
        row = next((line for line in section.splitlines() if line.startswith(f"| {preset} ")), None)
        assert row is not None, f"docs/gpu.md: no row for {preset}"
        assert (str(cap) if cap else "none") in row.split("|")[4], row


def test_the_cap_through_lmms_eval_is_recorded_in_the_protocol(tiny_llava, tmp_path):
    from tests.helpers import lmms_task
    from topovlm.evaluation.lmms import LmmsEvalEvaluator

    def run(**kw):
        ev = LmmsEvalEvaluator(lmms_task("shapes_lmms", tmp_path, limit=3, batch_size=4, **kw))
        ev.evaluate(tiny_llava)
        return [ev.predictions[("shapes_lmms", i)] for i in range(3)], ev.protocol()

    capped, protocol = run(max_new_tokens=6, max_new_tokens_cap={"shapes_lmms": 2})
    assert capped == run(max_new_tokens=2)[0]  # generating 6 tokens capped at 2 is generating 2
    assert protocol["max_new_tokens_cap"] == {"shapes_lmms": 2}
    assert protocol["generation_kwargs"]["shapes_lmms"]["max_new_tokens"] == 6  # lmms-eval's own, as it ran
    limits = protocol["generation_limits"]["shapes_lmms"]
    assert {k: limits[k] for k in ("max_new_tokens", "cap", "used", "capped", "rows")} == \
        {"max_new_tokens": 6, "cap": 2, "used": 2, "capped": True, "rows": 3}
    assert protocol["kv_budget"]["applied"] is False and "cpu" in protocol["kv_budget"]["reason"]


def test_an_unset_cap_leaves_the_recorded_config_as_before():
    from topovlm.config import resolved_config

    # no cap: the job's identity is that of results recorded before the key existed
    assert "max_new_tokens_cap" not in resolved_config(compose(["task=gqa", "model=tiny_llava"]))["task"]
    assert resolved_config(compose(["task=pope", "model=tiny_llava"]))["task"]["max_new_tokens_cap"] == {"pope": 8}
