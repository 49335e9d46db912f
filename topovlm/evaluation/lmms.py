"""Standard LVLM benchmarks through lmms-eval, on the (pruned) model in memory.

``task.evaluator=lmms`` runs ``lmms_eval.evaluator.simple_evaluate`` with a model
*object*: :class:`topovlm.evaluation.lmms_model.AdapterLMM` (its own module, imported only
when lmms-eval runs), an ``lmms_eval.api.model.lmms`` subclass over the harness's :class:`~topovlm.adapters.base.ModelAdapter`.

Why our own ``lmms`` subclass rather than lmms-eval's ``llava_hf`` / ``qwen2_vl``
wrappers with the pruned module swapped in:

* the wrappers build themselves from a ``pretrained`` path in ``__init__`` (loading
  weights, Accelerator set-up); swapping a pruned module in means bypassing
  ``__init__`` and setting private attributes, which changes between lmms-eval
  releases. The adapter already holds the pruned model and its processor;
* one class covers every family the harness drives (LLaVA, LLaVA-NeXT, Qwen2-VL /
  Qwen2.5-VL, text-only decoders, the tiny test models), where the wrappers exist per
  family and need extra packages (``llava_hf`` imports ``decord``; ``qwen2_vl``
  needs ``qwen_vl_utils``);
* ``llava_hf`` turns a generation error into an empty answer (a broken pruned model
  would silently score 0) and ignores ``until``; here errors propagate and ``until``
  is honoured;
* prompts are built by the adapter, exactly as the built-in ``vqa`` evaluator builds
  them, so the local ``shapes_lmms`` task reproduces the ``vqa`` evaluator's answers.

What the task shows the model (``doc_to_text`` with its pre/post prompts) still
follows the CLI: the ``TaskManager`` is created with ``model_name`` set to the
lmms-eval model the CLI would use for the family (``llava_hf``, ``qwen2_vl``;
``task.options.model_name`` overrides), which selects the task's
``lmms_eval_specific_kwargs``; the image is placed before the text as ``llava_hf``
does (or at ``<image>`` markers in the text) and the model's chat template applied.

Task options (``task.options``):

``tasks``            lmms-eval task/group names (default: ``[task.name]``); several run in one call
``metrics``          ``{task: [metric, ...]}`` to report (default: :data:`DEFAULT_METRICS`, else
                     every numeric metric)
``gen_kwargs``       overrides of every task's generation settings (dict or ``"k=v,k=v"``);
                     as lmms-eval's ``--gen_kwargs``
``model_name``       prompt variant (see above)
``check_datasets``   fail fast when a task's dataset is not available locally (default true)
``index``            ``fast`` (index only the task folders needed) or ``full`` (all lmms-eval tasks,
                     ~20 s); ``fast`` falls back to ``full`` when a name is not found by file name
``include_path``     extra task folders
``data_dir``         where local tasks' datasets are written (default: the harness cache)
``seeds``            ``{random, numpy, torch, fewshot}`` passed to ``simple_evaluate``
``kv_cache_fraction`` share of the free accelerator memory a batch's KV cache may take (CUDA
                     only: :mod:`topovlm.evaluation.kv_budget`); fewer rows per batch where
                     ``task.batch_size`` would exceed it, a failure before generating where one
                     row does

``task.limit`` is lmms-eval's ``limit`` (first N documents per task), ``task.batch_size``
the model's batch size (greedy answers do not depend on it: left-padded batches answer as
batch-1), ``task.max_new_tokens`` the length used only when a task sets none (as ``llava_hf``:
1024); for the local ``shapes_lmms`` task it is the generation length, as for the ``vqa``
evaluator. ``task.max_new_tokens_cap`` bounds the generation length on top of everything
(``min(max_new_tokens, cap)``): an int for every task, ``{task: int}`` per lmms-eval task
(a name that is no lmms-eval task is an error). Rows stop one by one at ``until`` or the end of
sequence and a batch ends when its last row has, so the cap bounds what one rambling row
costs its batch. results.json records, per task, lmms-eval's length, the cap, the length used
and how many answers ran to it without a stop (``protocol.generation_limits``).

Reported metrics: with one task, its metric names (``accuracy``, ``mme_perception_score``
...); with several, ``<task>/<metric>``; plus ``num_samples`` (``num_samples/<task>``).
"""
from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence


from topovlm.api import Evaluator
from topovlm.evaluation.lmms_tasks import LOCAL_TASKS, TASKS_DIR, export_shapes_dataset

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter

log = logging.getLogger(__name__)

#: metric keys reported by default, per lmms-eval task (others: every numeric metric)
DEFAULT_METRICS: dict[str, list[str]] = {
    "mme": ["mme_perception_score", "mme_cognition_score"],
    "pope": ["pope_accuracy", "pope_f1_score", "pope_precision", "pope_recall", "pope_yes_ratio"],
    "scienceqa_img": ["exact_match"],
    "gqa": ["exact_match"],
    "gqa_lite": ["exact_match"],
    "textvqa_val": ["exact_match"],
    "textvqa_val_lite": ["exact_match"],
    "mmmu_val": ["mmmu_acc"],
    "mathvista_testmini_format": ["llm_as_judge_eval"],
    "mathvista_testmini_cot": ["llm_as_judge_eval"],
    "mathvista_testmini_solution": ["llm_as_judge_eval"],
    "seedbench": ["seed_image", "seed_all"],
    "seedbench_lite": ["seed_image", "seed_all"],
    "shapes_lmms": ["accuracy", "accuracy_math", "accuracy_non_math", "accuracy_colour", "accuracy_shape",
                    "accuracy_spatial", "accuracy_count", "accuracy_arithmetic"],
}

#: adapter family -> the lmms-eval model whose prompts the CLI would use
PROMPT_VARIANT: dict[str, str] = {"llava": "llava_hf", "qwen2_vl": "qwen2_vl", "causal_lm": "llava_hf"}

#: lmms-eval's own defaults (``simple_evaluate``), recorded in the protocol
DEFAULT_SEEDS = {"random": 0, "numpy": 1234, "torch": 1234, "fewshot": 1234}

class LmmsEvalMissing(ImportError):
    """lmms-eval is not installed."""


class LmmsDatasetUnavailable(FileNotFoundError):
    """A task's dataset is not available locally (the message says how to pre-download it)."""


def import_lmms_eval() -> Any:
    try:
        import lmms_eval.evaluator
        from lmms_eval.api.model import lmms  # noqa: F401 - imported to check that lmms-eval's model API is importable
    except ImportError as err:
        raise LmmsEvalMissing(
            f"task.evaluator=lmms needs lmms-eval ({err}). GPU machines: pip install 'topovlm[lmms]'. "
            "CPU machines (keeps the CPU torch): pip install 'topovlm[lmms-deps]' && "
            "pip install --no-deps lmms-eval==0.7.3"
        ) from err
    import lmms_eval

    return lmms_eval


def lmms_eval_version() -> str:
    try:
        from importlib.metadata import version

        return version("lmms_eval")
    except Exception:  # noqa: BLE001 - any failure to read the version: recorded as unknown
        return "unknown"


# ---------------------------------------------------------------------------------------- model
def make_lmm(adapter: "ModelAdapter", batch_size: int = 1, default_max_new_tokens: int = 1024,
             max_new_tokens_cap: int | dict[str, int] | None = None, kv_cache_fraction: float | None = None) -> Any:
    """An ``lmms_eval.api.model.lmms`` instance over ``adapter`` (imports lmms-eval only now)."""
    import_lmms_eval()
    from topovlm.evaluation.lmms_model import DEFAULT_KV_FRACTION, AdapterLMM

    return AdapterLMM(adapter, batch_size=batch_size, default_max_new_tokens=default_max_new_tokens,
                      max_new_tokens_cap=max_new_tokens_cap,
                      kv_cache_fraction=DEFAULT_KV_FRACTION if kv_cache_fraction is None else kv_cache_fraction)


# ---------------------------------------------------------------------------------------- tasks
def _builtin_tasks_dir() -> Path:
    import lmms_eval

    return Path(lmms_eval.__file__).resolve().parent / "tasks"


def task_manager(names: Sequence[str], model_name: str | None, *, index: str = "fast",
                 include_path: Sequence[str] = ()) -> Any:
    """A ``TaskManager`` that knows ``names`` (and the local tasks), with the CLI's prompts for ``model_name``.

    ``fast`` indexes only the lmms-eval task folders holding ``<name>.yaml`` (a full index
    reads every task YAML: ~20 s); it falls back to ``full`` for names not found that way.
    """
    from lmms_eval.tasks import TaskManager

    extra = [str(TASKS_DIR), *map(str, include_path)]
    if index == "fast":
        root = _builtin_tasks_dir()
        dirs: list[str] = []
        for name in names:
            if name in LOCAL_TASKS:
                continue
            hits = glob.glob(str(root / "*" / f"{name}.yaml")) + glob.glob(str(root / "*" / "*" / f"{name}.yaml"))
            if not hits:
                dirs = []
                break
            dirs.extend(str(Path(h).parent) for h in hits)
        else:
            tm = TaskManager("WARNING", include_path=sorted(set(dirs)) + extra, include_defaults=False,
                             model_name=model_name)
            if all(n in tm.all_tasks for n in names):
                return tm
        log.info("lmms-eval: indexing all tasks (some of %s are not found by file name)", list(names))
    elif index != "full":
        raise ValueError(f"task.options.index={index!r}; allowed: fast, full")
    return TaskManager("WARNING", include_path=extra, model_name=model_name)


def leaf_task_configs(tm: Any, names: Sequence[str | dict]) -> dict[str, dict[str, Any]]:
    """Task name -> its YAML config, groups and tags expanded to their tasks."""
    out: dict[str, dict[str, Any]] = {}
    for item in names:
        override: dict[str, Any] = {}
        if isinstance(item, dict):
            override = {k: v for k, v in item.items() if k != "task"}
            item = item["task"]
        if tm._name_is_tag(item):
            out.update(leaf_task_configs(tm, tm._get_tasklist(item)))
        elif tm._name_is_group(item):
            sub = tm._get_config(item).get("task", [])
            out.update(leaf_task_configs(tm, [sub] if isinstance(sub, str) else sub))
        elif item in tm.all_tasks:
            out[item] = {**tm._get_config(item), **override}
        else:
            raise KeyError(f"lmms-eval task {item!r} is unknown (not in lmms-eval's tasks nor {TASKS_DIR})")
    return out


def _hub_cache_dirs() -> list[Path]:
    try:
        from huggingface_hub import constants

        hub = Path(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001 - huggingface_hub missing or misconfigured: its default location
        hub = Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub"
    return [hub]


def _datasets_cache_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("LMMS_EVAL_DATASETS_CACHE", "").strip():
        dirs.append(Path(os.environ["LMMS_EVAL_DATASETS_CACHE"]).expanduser())
    try:
        import datasets

        dirs.append(Path(datasets.config.HF_DATASETS_CACHE))
    except Exception:  # noqa: BLE001 - datasets missing or misconfigured: its cache is not searched
        pass
    dirs.append(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "datasets")
    return list(dict.fromkeys(dirs))


def dataset_location(path: str | None, name: str | None, kwargs: dict[str, Any] | None) -> tuple[str | None, list[str]]:
    """``(where it was found or None, places looked at)`` for one task's dataset."""
    kwargs = kwargs or {}
    if not path:
        return None, ["(no dataset_path in the task config)"]
    if kwargs.get("load_from_disk") or Path(path).expanduser().exists():
        p = Path(path).expanduser()
        return (str(p) if p.exists() else None), [str(p)]
    looked: list[str] = []
    repo = path.strip("/")
    for hub in _hub_cache_dirs():
        snap = hub / f"datasets--{repo.replace('/', '--')}" / "snapshots"
        looked.append(str(snap))
        if snap.is_dir() and any(snap.iterdir()):
            return str(snap), looked
    ns, _, base = repo.rpartition("/")
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", base).lower()
    candidates = {f"{ns}___{b}" if ns else b for b in (base, base.lower(), snake)}
    for root in _datasets_cache_dirs():
        for c in sorted(candidates):
            looked.append(str(root / c))
            if (root / c).is_dir():
                return str(root / c), looked
    return None, looked


def check_datasets(configs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Task -> where its dataset is; raises :class:`LmmsDatasetUnavailable` for the first missing one."""
    found = {}
    for task, cfg in configs.items():
        path, name = cfg.get("dataset_path"), cfg.get("dataset_name")
        where, looked = dataset_location(path, name, cfg.get("dataset_kwargs"))
        if where is None:
            split = cfg.get("test_split") or cfg.get("validation_split")
            name_arg = f", {name!r}" if name else ""
            token = " (a gated dataset: log in first with `hf auth login`)" if (cfg.get("dataset_kwargs") or {}).get("token") else ""
            raise LmmsDatasetUnavailable(
                f"lmms-eval task {task!r} needs the dataset {path!r}"
                f"{f' (config {name!r})' if name else ''}, which is not available locally "
                f"(looked in: {', '.join(looked)}).\n"
                f"Pre-download it on a machine with network access{token}, with the same HF_HOME:\n"
                f"    python -c \"import datasets; datasets.load_dataset({path!r}{name_arg}, split={split!r})\"\n"
                f"or  hf download --repo-type dataset {path}\n"
                "then copy the Hugging Face cache (HF_HOME) here and run with HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1.\n"
                "To let lmms-eval try the download itself: task.options.check_datasets=false."
            )
        found[task] = where
    return found


def _gen_kwargs_string(value: Any) -> str | None:
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        return value
    return ",".join(f"{k}={v}" for k, v in dict(value).items())


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _entries(results: dict[str, Any], wanted: dict[str, list[str]], prefix: bool,
             stderr: bool) -> Iterator[tuple[str, float]]:
    """(name, value) of lmms-eval's ``{task: {"metric,filter": value}}`` numeric entries that
    are (``stderr``) or are not ``<metric>_stderr`` ones, for the wanted metrics of each task."""
    for _, _, name, value in _named_entries(results, wanted, prefix, stderr):
        yield name, value


def _named_entries(results: dict[str, Any], wanted: dict[str, list[str]], prefix: bool,
                   stderr: bool) -> Iterator[tuple[str, str, str, float]]:
    """(task, lmms-eval metric, reported name, value) of the entries :func:`_entries` yields."""
    for task, values in results.get("results", {}).items():
        keep = wanted.get(task)
        for key, value in values.items():
            if "," not in key or not _numeric(value):
                continue
            metric, filt = key.split(",", 1)
            if metric.endswith("_stderr") != stderr:
                continue
            metric = metric.removesuffix("_stderr") if stderr else metric
            if keep is not None and metric not in keep:
                continue
            name = metric if filt == "none" else f"{metric}_{filt}"
            yield task, metric, (f"{task}/{name}" if prefix else name), float(value)


def extract_metrics(results: dict[str, Any], wanted: dict[str, list[str]], prefix: bool) -> dict[str, float]:
    """``results["results"]`` (``{task: {"metric,filter": value}}``) -> flat metrics."""
    out = dict(_entries(results, wanted, prefix, stderr=False))
    for task, n in results.get("n-samples", {}).items():
        count = n.get("effective") if isinstance(n, dict) else n
        if _numeric(count):
            out[f"num_samples/{task}" if prefix else "num_samples"] = float(count)
    return out


def extract_directions(results: dict[str, Any], wanted: dict[str, list[str]], prefix: bool) -> dict[str, bool]:
    """Reported metric name -> lmms-eval's ``higher_is_better`` for it (from the task's config;
    a metric whose direction lmms-eval leaves open, or mixes within a group, is left out)."""
    table = results.get("higher_is_better") or {}
    out: dict[str, bool] = {}
    for task, metric, name, _ in _named_entries(results, wanted, prefix, stderr=False):
        direction = (table.get(task) or {}).get(metric)
        if isinstance(direction, bool):
            out[name] = direction
    return out


def extract_stderrs(results: dict[str, Any], wanted: dict[str, list[str]], prefix: bool) -> dict[str, float]:
    """lmms-eval's ``<metric>_stderr,<filter>`` entries, named as :func:`extract_metrics` names the metric."""
    return dict(_entries(results, wanted, prefix, stderr=True))


_LOGGED_KEYS = {"doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "token_counts", "doc_hash",
                "input_media"}


def _first_text(resps: Any) -> Any:
    while isinstance(resps, (list, tuple)) and resps:
        resps = resps[0]
    return resps


def _prompt(arguments: Any) -> str | None:
    """The request's context string (the prompt the model saw) from a logged sample's
    ``arguments``: a tuple (context, gen_kwargs, ...) or, serialised, ``{"gen_args_0": {"arg_0": ...}}``."""
    first = arguments
    if isinstance(first, dict):
        first = next(iter(first.values()), None)
    if isinstance(first, dict):
        first = first.get("arg_0")
    elif isinstance(first, (list, tuple)) and first:
        first = first[0]
        if isinstance(first, (list, tuple)) and first:  # one request per document: [(context, ...)]
            first = first[0]
    return first if isinstance(first, str) else None


def logged_sample_records(results: dict[str, Any], wanted: dict[str, list[str]], prefix: bool) -> list[dict[str, Any]]:
    """Per-document records from ``results["samples"]`` (``simple_evaluate(log_samples=True)``)."""
    out: list[dict[str, Any]] = []
    for task, logged in (results.get("samples") or {}).items():
        first = (wanted.get(task) or [None])[0]
        for item in logged:
            doc = item.get("doc") or {}
            per_doc: dict[str, float] = {}
            for k, v in item.items():
                if k in _LOGGED_KEYS:
                    continue
                name = f"{task}/{k}" if prefix else k
                if _numeric(v):
                    per_doc[name] = float(v)
                elif isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], bool) and _numeric(v[1]):
                    if v[0]:  # (member, value): a per-group metric this document belongs to
                        per_doc[name] = float(v[1])
            rec: dict[str, Any] = {
                "id": str(item.get("doc_id")), "task": task, "domain": doc.get("domain", ""),
                "category": doc.get("category", ""), "prediction": _first_text(item.get("filtered_resps")),
                "target": item.get("target"), "metrics": per_doc,
            }
            if "id" in doc:
                rec["doc_key"] = str(doc["id"])
            if isinstance(doc.get("question"), str):  # what was asked, as lmms-eval's log_samples keeps it
                rec["question"] = doc["question"]
            prompt = _prompt(item.get("arguments"))
            if prompt is not None:
                rec["prompt"] = prompt
            head = per_doc.get(f"{task}/{first}" if prefix else first) if first else None
            if head is not None and head in (0.0, 1.0):
                rec["correct"] = bool(head)
            out.append(rec)
    return out


def max_new_tokens_cap(task_cfg: Any) -> int | dict[str, int] | None:
    """``task.max_new_tokens_cap`` as plain values: an int (every task), ``{task: int}`` or None."""
    from omegaconf import DictConfig, OmegaConf

    cap = getattr(task_cfg, "max_new_tokens_cap", None)
    if isinstance(cap, DictConfig):
        cap = OmegaConf.to_container(cap, resolve=True)
    return {str(k): int(v) for k, v in cap.items()} if isinstance(cap, dict) else cap


def check_cap_tasks(cap: int | dict[str, int] | None, leaves: Sequence[str]) -> None:
    """Every task ``task.max_new_tokens_cap`` names is evaluated in this run or is an lmms-eval task
    (a preset's cap stays when ``task.options.tasks`` changes); a name that is neither, a misspelt
    one that would leave its task uncapped, is an error."""
    from topovlm.errors import ConfigError

    if not isinstance(cap, dict):
        return
    root = _builtin_tasks_dir()
    for name in sorted(set(cap) - set(leaves)):
        if name in LOCAL_TASKS or glob.glob(str(root / "*" / f"{name}.yaml")) + \
                glob.glob(str(root / "*" / "*" / f"{name}.yaml")):
            log.info("task.max_new_tokens_cap.%s: %s is not evaluated in this run", name, name)
            continue
        raise ConfigError(f"task.max_new_tokens_cap.{name}: {name!r} is not an lmms-eval task (the tasks of "
                          f"this run: {', '.join(sorted(leaves))})")


# ---------------------------------------------------------------------------------------- evaluator
class LmmsEvalEvaluator(Evaluator):
    """``task.evaluator=lmms``: see the module docstring."""

    #: the default metrics' directions (as their lmms-eval task configs set them), for results
    #: recorded without ``metric_directions``; an evaluation uses lmms-eval's own
    HIGHER_IS_BETTER = {m: True for ms in DEFAULT_METRICS.values() for m in ms}

    def __init__(self, task_cfg: Any) -> None:
        super().__init__(task_cfg)
        opts = dict(task_cfg.options or {})
        self.options = opts
        tasks = opts.get("tasks") or [task_cfg.name]
        self.tasks: list[str] = [tasks] if isinstance(tasks, str) else [str(t) for t in tasks]
        self.seeds = {**DEFAULT_SEEDS, **dict(opts.get("seeds") or {})}
        self.gen_kwargs = _gen_kwargs_string(opts.get("gen_kwargs"))
        self.max_new_tokens_cap = max_new_tokens_cap(task_cfg)
        self.model_name: str | None = opts.get("model_name")
        self.lm: Any = None
        self.raw_results: dict[str, Any] | None = None
        #: lmms-eval's stderr iterations (``task.options.bootstrap_iters``): mean metrics get their
        #: analytic stderr, others a bootstrap of this many draws; 0 switches stderrs off
        self.bootstrap_iters = int(opts.get("bootstrap_iters", 1000))
        self.stderr: dict[str, float] = {}
        self.directions: dict[str, bool] = {}
        self.records: list[dict[str, Any]] = []
        self._run: dict[str, Any] = {}

    # ------------------------------------------------------------------ pieces
    def _data_dir(self) -> Path:
        if self.options.get("data_dir"):
            return Path(str(self.options["data_dir"])).expanduser()
        from topovlm.default_model import default_cache_dir

        return default_cache_dir()

    def task_specs(self) -> list[str | dict[str, Any]]:
        """What ``simple_evaluate`` gets: names, and local tasks with their exported dataset."""
        specs: list[str | dict[str, Any]] = []
        for name in self.tasks:
            if name == "shapes_lmms":  # generation length as in the built-in vqa evaluator: task.max_new_tokens
                path = export_shapes_dataset(self.cfg.dataset, self._data_dir())
                specs.append({"task": name, "dataset_path": str(path), "generation_kwargs": {
                    "max_new_tokens": int(self.cfg.max_new_tokens), "temperature": 0, "do_sample": False, "num_beams": 1}})
            else:
                specs.append(name)
        return specs

    def wanted_metrics(self, leaves: Sequence[str]) -> dict[str, list[str]]:
        custom = {k: list(v) for k, v in dict(self.options.get("metrics") or {}).items()}
        return {t: custom.get(t, DEFAULT_METRICS.get(t)) for t in leaves if t in custom or t in DEFAULT_METRICS}

    def prepare(self, family: str) -> tuple[Any, list[str | dict[str, Any]], dict[str, dict[str, Any]]]:
        """TaskManager, task specs and leaf configs; checks the datasets are local (before any model call)."""
        import_lmms_eval()
        model_name = self.model_name or PROMPT_VARIANT.get(family)
        tm = task_manager(self.tasks, model_name, index=str(self.options.get("index", "fast")),
                          include_path=list(self.options.get("include_path") or []))
        specs = self.task_specs()
        leaves = leaf_task_configs(tm, specs)
        check_cap_tasks(self.max_new_tokens_cap, leaves)
        locations = check_datasets(leaves) if self.options.get("check_datasets", True) else {}
        self._run = {"prompt_variant": model_name, "leaf_tasks": sorted(leaves), "datasets": {
            t: {"path": c.get("dataset_path"), "name": c.get("dataset_name"), "local": locations.get(t)}
            for t, c in leaves.items()}}
        from topovlm.evaluation.lmms_tasks.doc_cache import with_cached_docs  # GQA's documents: mapped once

        return tm, with_cached_docs(specs, leaves, self._data_dir()), leaves

    # ------------------------------------------------------------------ interface
    def evaluate(self, adapter: "ModelAdapter") -> dict[str, float]:
        import_lmms_eval()
        from lmms_eval.evaluator import simple_evaluate

        tm, specs, leaves = self.prepare(adapter.family)
        self.lm = make_lmm(adapter, batch_size=self.cfg.batch_size, default_max_new_tokens=self.cfg.max_new_tokens,
                           max_new_tokens_cap=self.max_new_tokens_cap,
                           kv_cache_fraction=self.options.get("kv_cache_fraction"))
        from topovlm.evaluation.protocol import configure  # task.protocol: harness | lmms_exact
        configure(self.lm, self.cfg.get("protocol", "harness"), self._run)
        results = simple_evaluate(
            model=self.lm, tasks=specs, task_manager=tm, limit=self.cfg.limit, batch_size=self.cfg.batch_size,
            bootstrap_iters=self.bootstrap_iters, log_samples=True, gen_kwargs=self.gen_kwargs, verbosity="WARNING",
            random_seed=self.seeds["random"], numpy_random_seed=self.seeds["numpy"],
            torch_random_seed=self.seeds["torch"], fewshot_random_seed=self.seeds["fewshot"],
            device=str(adapter.device),
        )
        if results is None:
            raise RuntimeError("lmms-eval returned no results (not the main process?)")
        self.raw_results = results
        self._run.update({
            "lmms_eval_build": results.get("lmms_eval_version"),
            "n_samples": results.get("n-samples", {}),
            "task_versions": results.get("versions", {}),
            "generation_kwargs": {t: (c or {}).get("generation_kwargs") for t, c in results.get("configs", {}).items()},
            # per task: lmms-eval's max_new_tokens, the cap, the length used, rows that ran to it
            "generation_limits": {t: dict(v) for t, v in self.lm.limits.items()},
            "kv_budget": self.lm.kv_budget.record(),
        })
        wanted = self.wanted_metrics(list(results.get("results", {})))
        prefix = len(results.get("results", {})) > 1
        metrics = extract_metrics(results, wanted, prefix=prefix)
        self.stderr = extract_stderrs(results, wanted, prefix=prefix)
        self.directions = extract_directions(results, wanted, prefix=prefix)
        self.records = logged_sample_records(results, wanted, prefix=prefix)
        if not metrics:
            raise RuntimeError(f"lmms-eval reported no numeric metrics for {self.tasks}: {results.get('results')}")
        return metrics

    def higher_is_better(self, metric: str) -> bool | None:
        """lmms-eval's ``higher_is_better`` of the last ``evaluate``, else the default metrics' own."""
        if metric in self.directions:
            return self.directions[metric]
        return None if metric.startswith("num_samples") else super().higher_is_better(metric)

    def sample_records(self) -> list[dict[str, Any]]:
        """lmms-eval's logged samples (``log_samples``) of the last ``evaluate``, one record per
        document: ``id`` = the document's index in the task (the same in every job with the same
        limit), ``task``, ``domain`` / ``category`` when the document has them, ``question`` (the
        document's) and ``prompt`` (the request's context, as the model saw it), ``prediction``
        (the filtered response), ``target``, ``correct`` when the task's first metric is 0/1 per
        document, and ``metrics``: every numeric per-document metric (named as in results.json)."""
        return list(self.records)

    @property
    def predictions(self) -> dict[tuple[str, int], str]:
        """(task, doc index) -> generated answer, from the last ``evaluate``."""
        return dict(self.lm.outputs) if self.lm is not None else {}

    def protocol(self) -> dict[str, Any]:
        return {
            "evaluator": "lmms",
            "lmms_eval_version": lmms_eval_version(),
            "tasks": self.tasks,
            "limit": self.cfg.limit,
            "batch_size": self.cfg.batch_size,
            "seeds": self.seeds,
            "gen_kwargs_override": self.gen_kwargs,
            "default_max_new_tokens": self.cfg.max_new_tokens,
            "max_new_tokens_cap": self.max_new_tokens_cap,
            "bootstrap_iters": self.bootstrap_iters,
            "stderr": dict(self.stderr),
            "model": "topovlm AdapterLMM (simple)",
            **self._run,
        }
