"""How the lmms-eval evaluator prompts the model: ``task.protocol``.

``harness`` (the default)
    :class:`~topovlm.evaluation.lmms_model.AdapterLMM` builds each prompt with the adapter
    (the processor's chat template, the image as a content item before the text, as the
    built-in ``vqa`` evaluator does) and generates for left-padded batches of
    ``task.batch_size`` documents; ``until`` stops each row, answers are stripped.

``lmms_exact``
    The prompt, model inputs, generation settings and answer decoding of lmms-eval 0.7.3's own
    model class for the family, one document at a time (those classes' batch size, 1), on the
    harness's (pruned) model: ``llava_hf`` for LLaVA-1.5 / LLaVA-NeXT, ``qwen2_vl`` for Qwen2-VL /
    Qwen2.5-VL (the variant :data:`topovlm.evaluation.lmms.PROMPT_VARIANT` names). For headline
    tables that compare with numbers published from lmms-eval. Each step below cites the line of
    ``lmms_eval/models/simple/<class>.py`` (lmms-eval 0.7.3) it follows; constants (the Vicuna
    template, the Qwen system prompt and pixel bounds) are read from lmms-eval itself.

Where ``lmms_exact`` departs from the classes, on purpose:

* a generation error propagates (``llava_hf`` answers ``""``, which scores a broken model 0);
* a ``llava_hf`` prompt whose chat template drops the question (a template written for list
  content, given lmms-eval's string content, renders ``USER: ASSISTANT:``) is an error, not a
  silently empty prompt;
* ``llava_hf`` text-only documents: lmms-eval never builds their inputs (llava_hf.py:347-350) and
  answers ``""`` through its error handler; the same ``""`` here, with a warning;
* log-likelihood requests (loglikelihood / multiple_choice tasks) are refused: qwen2_vl has none and
  llava_hf's fails on image documents with transformers 5 (:func:`loglikelihood`);
* ``qwen2_vl`` reads images with ``qwen_vl_utils.process_vision_info``; where that package is not
  installed, :func:`fetch_image` does what its ``fetch_image`` does for lmms-eval's data URLs
  (decode, RGB, ``smart_resize`` to multiples of 28 within the pixel bounds, PIL's default resize).

:func:`lmms_eval_model` wraps the adapter's loaded model in lmms-eval's own class (its
``__init__`` only loads weights and a processor; the attributes it sets are set here), so its
``generate_until`` runs unchanged; :func:`compare` puts the harness, ``lmms_exact`` and that
class side by side (``bench/gpu_smoke.py --parity``, ``bench/gpu_validate.py``, the tests).
"""
from __future__ import annotations

import base64
import copy
import io
import logging
import math
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter

log = logging.getLogger(__name__)

PROTOCOLS = ("harness", "lmms_exact")
#: adapter family -> the lmms-eval 0.7.3 model class whose protocol ``lmms_exact`` follows
EXACT_CLASSES = {"llava": "llava_hf", "qwen2_vl": "qwen2_vl"}
IMAGE_TOKEN = "<image>"  # llava_hf.py:27; qwen2_vl removes it from the text (qwen2_vl.py:246)
#: the POPE task's instruction after each question (lmms_eval/tasks/pope/pope.yaml, default post_prompt)
POPE_POST_PROMPT = "\nAnswer the question using a single word or phrase."
#: POPE's generation settings as lmms-eval hands them to a model (pope.yaml, plus the task's default
#: ``until``: the few-shot delimiter, lmms_eval/api/task.py:186-187)
POPE_GEN_KWARGS = {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0, "num_beams": 1, "do_sample": False,
                   "until": ["\n\n"]}


class ProtocolError(ValueError):
    """``lmms_exact`` cannot reproduce lmms-eval's class for this model or document."""


def exact_class(family: str) -> str:
    if family not in EXACT_CLASSES:
        raise ProtocolError(f"task.protocol=lmms_exact follows lmms-eval's llava_hf / qwen2_vl model classes: "
                            f"model.family={family} has none (allowed families: {', '.join(EXACT_CLASSES)})")
    return EXACT_CLASSES[family]


def check_available(family: str) -> None:
    """lmms-eval's class module for ``family`` imports (before any model loads)."""
    try:
        _class_module(exact_class(family))
    except ImportError as err:
        raise ProtocolError(f"task.protocol=lmms_exact needs lmms-eval's {exact_class(family)} model class, which "
                            f"does not import here ({err}); install lmms-eval with its model dependencies "
                            "(pip install 'topovlm[lmms]')") from None


def _class_module(name: str) -> Any:
    import importlib

    return importlib.import_module(f"lmms_eval.models.simple.{name}")


# ---------------------------------------------------------------------------------- the hook
def configure(lm: Any, protocol: str, record: dict[str, Any] | None = None) -> None:
    """Put ``lm`` (an ``AdapterLMM``) on ``protocol``; ``record`` (the evaluator's protocol
    record) gets the protocol and the batch size that ran."""
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"task.protocol={protocol!r} is not allowed; allowed values: {', '.join(PROTOCOLS)}")
    lm.prompt_protocol = protocol
    if protocol == "lmms_exact":
        lm.batch_size = 1  # llava_hf.py:313 asserts it; qwen2_vl's default (qwen2_vl.py:38)
    if record is not None:
        record.update(prompt_protocol=protocol, batch_size=int(lm.batch_size))
        if protocol == "lmms_exact":
            record["exact_model_class"] = exact_class(lm.adapter.family)
            if record["exact_model_class"] == "qwen2_vl":
                record["vision_reader"] = qwen_vl_utils_route()


def is_exact(lm: Any) -> bool:
    return getattr(lm, "prompt_protocol", "harness") == "lmms_exact"


def generate_until(lm: Any, requests: Sequence[Any]) -> list[str]:
    """``AdapterLMM.generate_until`` under ``lmms_exact``: one document at a time."""
    from topovlm.progress import bar

    out: list[str] = []
    pbar = bar(total=len(requests), default="lmms-eval generate (lmms_exact)", leave=False, disable=lm.rank != 0)
    for request in requests:
        context, gen, doc_to_visual, doc_id, task, split = request.args
        images = lm._visuals(doc_to_visual, task, split, doc_id)
        cap = lm.cap_for(task) if hasattr(lm, "cap_for") else None  # task.max_new_tokens_cap, when set
        text = exact_generate(lm.adapter, context, images, dict(gen), cap)
        lm.outputs[(task, doc_id)] = text
        lm.cache_hook.add_partial("generate_until", (context, gen), text)
        out.append(text)
        pbar.update(1)
    pbar.close()
    return out


def loglikelihood(lm: Any, requests: Sequence[Any]) -> list[tuple[float, bool]]:
    """``AdapterLMM.loglikelihood`` under ``lmms_exact``: refused, as lmms-eval's classes cannot score
    image documents either (qwen2_vl has no loglikelihood, qwen2_vl.py:162-163; llava_hf tokenises the
    context through the processor without its images, llava_hf.py:228, which transformers 5 refuses)."""
    raise NotImplementedError(
        f"task.protocol=lmms_exact: lmms-eval's {exact_class(lm.adapter.family)} cannot score log-likelihood "
        "requests of image documents with this transformers (llava_hf.py:228; qwen2_vl.py:162-163); "
        "run loglikelihood / multiple_choice tasks with task.protocol=harness")


# ---------------------------------------------------------------------------------- llava_hf
def vicuna_template() -> str:
    return _class_module("llava_hf").VICUNA_CHAT_TEMPLATE  # llava_hf.py:31


def _template(tokenizer: Any) -> str:
    # llava_hf.py:327-334: the tokenizer's own template, else the Vicuna one (lmms-eval assigns it to
    # the tokenizer; passed per call here, so the shared tokenizer is left as it is)
    return tokenizer.chat_template if tokenizer.chat_template is not None else vicuna_template()


def llava_hf_prompt(tokenizer: Any, context: str, n_images: int) -> str:
    """The prompt text llava_hf's ``generate_until`` builds (llava_hf.py:316-334)."""
    if IMAGE_TOKEN not in context and n_images:
        context = f"{' '.join([IMAGE_TOKEN] * n_images)}\n{context}"  # llava_hf.py:318-321
    messages = [{"role": "user", "content": context}]  # llava_hf.py:326: string content
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                           chat_template=_template(tokenizer))
    question = context.replace(IMAGE_TOKEN, "").strip()
    if question and question.splitlines()[0].strip() not in prompt:
        raise ProtocolError(
            f"lmms-eval's llava_hf prompt for this checkpoint drops the question: the tokenizer's chat template "
            f"renders lmms-eval's string content as {prompt!r} (it expects list content). lmms-eval's own "
            "llava_hf fails or answers from an empty prompt on this checkpoint; use task.protocol=harness, "
            "which prompts through the processor's template")
    return prompt


def llava_hf_inputs(adapter: "ModelAdapter", context: str, images: list[Any]) -> tuple[str, dict[str, Any]]:
    text = llava_hf_prompt(adapter.tokenizer, context, len(images))
    adapter.tokenizer.padding_side = "left"  # llava_hf.py:102
    if not images:
        return text, {}
    # llava_hf.py:348: floating inputs cast to the model's dtype
    batch = adapter.processor(images=images, text=text, return_tensors="pt").to(adapter.device, adapter.model.dtype)
    return text, dict(batch)


def llava_hf_generate(adapter: "ModelAdapter", context: str, images: list[Any], gen: dict[str, Any],
                      cap: int | None = None) -> str:
    text, inputs = llava_hf_inputs(adapter, context, images)
    if not inputs:  # llava_hf.py:347-350 builds no inputs for a text-only document; its error handler answers ""
        log.warning("lmms_exact: a text-only document gets lmms-eval llava_hf's answer, '' (llava_hf.py:375-377)")
        return ""
    gen = dict(gen)
    gen.pop("until", None)  # read (llava_hf.py:307-312), never applied
    gen.setdefault("max_new_tokens", 1024)  # llava_hf.py:353-360
    gen.setdefault("temperature", 0)
    gen.setdefault("top_p", None)
    gen.setdefault("num_beams", 1)
    if cap is not None:
        gen["max_new_tokens"] = min(int(gen["max_new_tokens"]), cap)
    do_sample = gen["temperature"] > 0
    eot = adapter.tokenizer.eos_token_id
    cont = adapter.model.generate(**inputs, do_sample=do_sample, temperature=gen["temperature"] if do_sample else None,
                                  top_p=gen["top_p"], num_beams=gen["num_beams"], max_new_tokens=gen["max_new_tokens"],
                                  use_cache=True, pad_token_id=eot, eos_token_id=eot)  # llava_hf.py:363-373
    cont = cont[:, inputs["input_ids"].shape[-1]:]
    return adapter.tokenizer.batch_decode(cont, skip_special_tokens=True)[0]  # llava_hf.py:378, not stripped


# ---------------------------------------------------------------------------------- qwen2_vl
def qwen2_vl_defaults() -> dict[str, Any]:
    """System prompt and pixel bounds: the defaults of lmms-eval's ``Qwen2_VL.__init__`` (qwen2_vl.py:42-45)."""
    import inspect

    params = inspect.signature(_class_module("qwen2_vl").Qwen2_VL.__init__).parameters
    return {k: params[k].default for k in ("system_prompt", "max_pixels", "min_pixels")}


def encode_image(image: Any) -> str:
    """The JPEG (quality 85) data URL qwen2_vl sends each image as (qwen2_vl.py:173-180), by lmms-eval's own encoder."""
    from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url

    return encode_image_to_data_url(image, image_format="JPEG", mime_type="image/jpeg", convert_rgb=True, quality=85)


def qwen2_vl_messages(context: str, images: list[Any]) -> list[dict[str, Any]]:
    """One document's messages as qwen2_vl builds them (qwen2_vl.py:246-310, interleave_visuals off)."""
    d = qwen2_vl_defaults()
    content = [{"type": "image", "image": encode_image(v), "max_pixels": d["max_pixels"], "min_pixels": d["min_pixels"]}
               for v in images]
    return [{"role": "system", "content": d["system_prompt"]},
            {"role": "user", "content": [*content, {"type": "text", "text": context.replace(IMAGE_TOKEN, "")}]}]


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' target size: each side rounded to a multiple of ``factor`` (at least one), then
    both scaled by one ratio (down: floored, up: ceiled to multiples) into [min_pixels, max_pixels]."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / scale / factor) * factor, math.floor(width / scale / factor) * factor
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def fetch_image(element: dict[str, Any], factor: int = 28) -> Any:
    """What qwen-vl-utils' ``fetch_image`` makes of one of qwen2_vl's data-URL images: decoded,
    RGB, resized (PIL's default filter) to the ``smart_resize`` size: sides multiples of ``factor``
    (its 28: Qwen2-VL's 14-pixel patches merged 2 x 2), pixels within the element's bounds."""
    from PIL import Image

    data = element["image"]
    if not isinstance(data, Image.Image):
        data = Image.open(io.BytesIO(base64.b64decode(str(data).split("base64,", 1)[1])))
    image = data.convert("RGB")
    height, width = smart_resize(image.height, image.width, factor=factor, min_pixels=element["min_pixels"],
                                 max_pixels=element["max_pixels"])
    return image.resize((width, height))


def process_vision_info(messages: list[Any]) -> tuple[list[Any] | None, None]:
    """qwen-vl-utils' ``process_vision_info`` when installed, else :func:`fetch_image` per image."""
    try:
        from qwen_vl_utils import process_vision_info as upstream
    except ImportError:
        upstream = None
    if upstream is not None:
        return upstream(messages)
    conversations = messages if messages and isinstance(messages[0], list) else [messages]
    images = [fetch_image(c) for conv in conversations for m in conv if isinstance(m["content"], list)
              for c in m["content"] if c.get("type") == "image"]
    return (images or None), None


def qwen_vl_utils_route() -> str:
    try:
        import qwen_vl_utils  # noqa: F401 - only whether it imports
        return "qwen_vl_utils"
    except ImportError:
        return "topovlm.evaluation.protocol.fetch_image (qwen_vl_utils not installed)"


def qwen2_vl_inputs(adapter: "ModelAdapter", context: str, images: list[Any]) -> tuple[str, dict[str, Any]]:
    messages = qwen2_vl_messages(context, images)
    text = adapter.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)  # :345
    image_inputs, _ = process_vision_info([messages])  # qwen2_vl.py:347
    kwargs: dict[str, Any] = {"text": [text], "padding": True, "return_tensors": "pt"}  # qwen2_vl.py:386-392
    if image_inputs:
        kwargs["images"] = image_inputs
    batch = adapter.processor(**kwargs).to(adapter.device)  # qwen2_vl.py:394-397: no dtype cast
    return text, dict(batch)


def qwen2_vl_generate(adapter: "ModelAdapter", context: str, images: list[Any], gen: dict[str, Any],
                      cap: int | None = None) -> str:
    tok = adapter.tokenizer
    _, inputs = qwen2_vl_inputs(adapter, context, images)
    gen = dict(gen)
    until = gen.pop("until", None) or [tok.decode(tok.eos_token_id)]  # qwen2_vl.py:230-240
    until = [until] if isinstance(until, str) else list(until)
    kw = {"max_new_tokens": 128, "temperature": 0.0, "top_p": None, "num_beams": 1, **gen}  # qwen2_vl.py:400-409
    if cap is not None:
        kw["max_new_tokens"] = min(int(kw["max_new_tokens"]), cap)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    cont = adapter.model.generate(**inputs, eos_token_id=tok.eos_token_id, pad_token_id=pad,
                                  do_sample=kw["temperature"] > 0, temperature=kw["temperature"], top_p=kw["top_p"],
                                  num_beams=kw["num_beams"], max_new_tokens=kw["max_new_tokens"],
                                  use_cache=True)  # qwen2_vl.py:413-423
    new = cont[0, inputs["input_ids"].shape[1]:]
    eos = (new == tok.eos_token_id).nonzero(as_tuple=True)[0]  # qwen2_vl.py:426-437: cut at the first eos
    if len(eos):
        new = new[:eos[0]]
    answer = adapter.processor.batch_decode([new], skip_special_tokens=True, clean_up_tokenization_spaces=False)[0]
    stop = min([answer.index(t) for t in until if t and t in answer], default=len(answer))  # qwen2_vl.py:446-451
    return answer[:stop].strip()


# ---------------------------------------------------------------------------------- either class
def exact_inputs(adapter: "ModelAdapter", context: str, images: list[Any]) -> tuple[str, dict[str, Any]]:
    """(prompt text, model inputs) of one document as lmms-eval's class for the family builds them."""
    if exact_class(adapter.family) == "llava_hf":
        return llava_hf_inputs(adapter, context, images)
    return qwen2_vl_inputs(adapter, context, images)


@torch.inference_mode()
def exact_generate(adapter: "ModelAdapter", context: str, images: list[Any], gen: dict[str, Any],
                   cap: int | None = None) -> str:
    """One document's answer as lmms-eval's class for the family gives it (``cap``: an upper bound
    on its generation length, ``task.max_new_tokens_cap``; None: the class's own length)."""
    if exact_class(adapter.family) == "llava_hf":
        return llava_hf_generate(adapter, context, images, gen, cap)
    return qwen2_vl_generate(adapter, context, images, gen, cap)


# ---------------------------------------------------------------------------------- lmms-eval's own class
class _Recording:
    """A processor that records the text and the input ids of every call (and is otherwise the processor)."""

    def __init__(self, inner: Any) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "calls", [])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self._inner(*args, **kwargs)
        text = kwargs.get("text")
        self.calls.append((text[0] if isinstance(text, list) else text, out["input_ids"][0].tolist()))
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._inner, name, value)


def lmms_eval_model(adapter: "ModelAdapter") -> Any:
    """lmms-eval's own model class for the family around the adapter's loaded model and a copy of
    its processor (lmms-eval changes the tokenizer it holds). ``__init__`` is skipped: it loads
    weights from a path and sets the attributes set here (llava_hf.py:64-138, qwen2_vl.py:33-111);
    ``generate_until`` is lmms-eval's, unchanged. ``.processor_calls``: (prompt, ids) per call."""
    from lmms_eval.api.model import lmms

    name = exact_class(adapter.family)
    module = _class_module(name)
    processor = copy.deepcopy(adapter.processor)
    recording = _Recording(processor)
    device = adapter.device
    if name == "llava_hf":
        from accelerate import Accelerator

        lm = module.LlavaHf.__new__(module.LlavaHf)
        lmms.__init__(lm)
        processor.tokenizer.padding_side = "left"
        lm.__dict__.update(_model=adapter.model, _image_processor=recording, _tokenizer=processor.tokenizer,
                           _config=adapter.model.config, batch_size_per_gpu=1, chat_template=None, use_cache=True,
                           max_frames_num=32, _device=device, device_map="", _rank=0, _world_size=1,
                           accelerator=Accelerator(), pretrained=adapter.name)
    else:
        d = qwen2_vl_defaults()
        lm = module.Qwen2_VL.__new__(module.Qwen2_VL)
        lmms.__init__(lm)
        lm.__dict__.update(_model=adapter.model, processor=recording, _tokenizer=copy.deepcopy(adapter.tokenizer),
                           _config=adapter.model.config, _max_length=2048, batch_size_per_gpu=1, use_cache=True,
                           max_pixels=d["max_pixels"], min_pixels=d["min_pixels"], max_num_frames=32,
                           reasoning_prompt=None, system_prompt=d["system_prompt"], interleave_visuals=False,
                           _device=device, device_map=str(device), _rank=0, _world_size=1)
    lm.processor_calls = recording.calls
    return lm


@contextmanager
def _vision_reader(lm: Any) -> Iterator[None]:
    """qwen2_vl's module-level ``process_vision_info`` (None without qwen_vl_utils): this module's for the call."""
    module = _class_module("qwen2_vl")
    if type(lm).__name__ != "Qwen2_VL" or module.process_vision_info is not None:
        yield
        return
    module.process_vision_info = process_vision_info
    try:
        yield
    finally:
        module.process_vision_info = None
