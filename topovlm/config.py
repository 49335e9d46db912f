"""Typed config schema, registered in Hydra's ConfigStore, and start-up validation.

The schema makes a misspelt top-level key fail when Hydra composes the config;
:func:`validate` then checks values (names of scorers, policies, poolings, ranges) and
raises :class:`ConfigError` naming the key and the allowed values, before any model
is loaded.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from topovlm.errors import ConfigError
from topovlm.selection import POLICIES, SelectionConfig

if TYPE_CHECKING:
    from topovlm.api import LayerScorer

MODEL_SOURCES = ("pretrained", "embedded", "tiny")
DTYPES = ("float32", "float16", "bfloat16", "auto")
WANDB_MODES = ("offline", "online", "disabled")
# top-level keys outside the schema that the harness reads (documented: `+force=true`)
EXTRA_FLAGS = ("force",)
# numpy's legacy seeding (np.random.seed) takes integers in [0, 2**32 - 1]
SEED_RANGE = (0, 2**32 - 1)


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in results and cache keys
    family: str = "llava"  # adapter: llava | qwen2_vl | causal_lm
    source: str = "pretrained"  # pretrained (hub id / local path) | embedded | tiny
    path: Optional[str] = None  # hub id or local directory (source=pretrained)
    revision: Optional[str] = None
    dtype: str = "float32"
    device: str = "cpu"  # where inputs go; "cuda" on GPU machines
    device_map: Optional[str] = None  # "fit": one GPU when the weights fit it, else "auto" (spread over GPUs)
    attn_implementation: Optional[str] = None  # sdpa | eager | flash_attention_2
    trust_remote_code: bool = False
    tiny: dict[str, Any] = field(default_factory=dict)  # overrides for source=tiny configs
    # processor from_pretrained kwargs, e.g. Qwen's {max_pixels: 602112, min_pixels: 3136}
    processor: dict[str, Any] = field(default_factory=dict)


@dataclass
class DatasetConfig:
    source: str = "shapes"  # shapes | jsonl | text | lmms
    version: str = "v1"
    split: str = "test"
    n: Optional[int] = None  # None: the source's default size
    seed: int = 0
    path: Optional[str] = None  # jsonl / text sources
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    name: str = MISSING
    evaluator: str = "vqa"  # vqa | perplexity | lmms
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    limit: Optional[int] = None
    batch_size: int = 16
    max_new_tokens: int = 6
    # lmms evaluator: generation length min(lmms-eval's max_new_tokens, cap); an int (every task),
    # {lmms-eval task: int}, or None (lmms-eval's own lengths)
    max_new_tokens_cap: Any = None
    options: dict[str, Any] = field(default_factory=dict)  # evaluator-specific (e.g. lmms-eval task list)
    metric: str = "accuracy"  # the task's headline metric, as the evaluator reports it (optimized_metric's default)
    # lmms evaluator prompts: harness (chat template, batches) | lmms_exact (lmms-eval's own model
    # class, batch 1): topovlm/evaluation/protocol.py
    protocol: str = "harness"


@dataclass
class CalibrationConfig:
    dataset: DatasetConfig = field(default_factory=lambda: DatasetConfig(split="calibration"))
    n: int = 128
    seed: int = 0
    batch_size: int = 16


@dataclass
class WandbConfig:
    enabled: bool = True
    mode: str = "offline"
    project: str = "topovlm"
    entity: Optional[str] = None
    group: Optional[str] = None  # default: the sweep id
    tags: list[str] = field(default_factory=list)
    dir: Optional[str] = None  # default: the job's output dir
    init_timeout: float = 10.0  # seconds wandb.init may take online before the job logs offline
    report: bool = False  # online sweeps: also a W&B Report of the sweep at its end (topovlm wandb-report)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class EfficiencyConfig:
    """Latency / throughput / memory measurement per job (None: the default for the model kind)."""

    enabled: Optional[bool] = None
    prompt_words: Optional[int] = None  # question length of the fixed timing input
    new_tokens: Optional[int] = None  # tokens generated for the decode throughput
    warmup: Optional[int] = None
    repeats: Optional[int] = None  # the median over repeats is reported
    batch_size: Optional[int] = None
    cache: Optional[bool] = None  # cache the unpruned model's numbers per model and machine


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    # Scorer-specific keys, checked by the scorer's constructor. Open (not struct): a preset sets
    # only what differs from the constructor, so ``scorer.k=5`` must work without Hydra's ``+``.
    scorer: Any = field(default_factory=lambda: OmegaConf.create({"name": MISSING}, flags={"struct": False}))
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    sparsity: float = 0.0  # fraction of decoder layers removed: k = floor(sparsity * L + 0.5)
    # the metric app.main returns (what a Hydra sweeper such as Optuna optimises) and the summary's
    # headline metric; a metric the job does not report is an error
    optimized_metric: str = "${task.metric}"
    seed: int = 0  # seeds python, numpy, torch and the random scorer
    num_threads: Optional[int] = None  # torch CPU threads per job (e.g. 1 with parallel launchers)
    cache_dir: str = "${oc.env:TOPOVLM_CACHE,${oc.env:HOME}/.cache/topovlm}"
    save_model: bool = False  # save the pruned model next to the run
    reference: bool = True  # also evaluate the unpruned model once per model/task/seed (cached)
    reuse_model: bool = True  # jobs of one process that use the same model load it once (restored between jobs)
    # `+force=true` (not in the schema, as an extra flag: EXTRA_FLAGS) recomputes a job whose result exists


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def _allowed(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")


def _in_range(key: str, value: Any, kind: type, low: float | None, high: float | None) -> None:
    """``value`` (None: unset, allowed) is a ``kind`` (int or float; bool is neither) in [low, high]."""
    if value is None:
        return
    ok_type = not isinstance(value, bool) and (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
    if not ok_type:
        raise ConfigError(f"{key}={value!r} must be {'an integer' if kind is int else 'a number'}")
    if (low is not None and value < low) or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise ConfigError(f"{key}={value} must be {bound}")


# Numeric settings and their ranges (type, low, high; None: open), checked in one place. A value
# out of range would otherwise fail after the model load (max_new_tokens=0 at evaluate) or be
# silently clamped (efficiency.repeats=0 timed once).
RANGES: dict[str, tuple[type, float | None, float | None]] = {
    "task.max_new_tokens": (int, 1, None),
    "task.batch_size": (int, 1, None),
    "task.limit": (int, 1, None),
    "task.dataset.n": (int, 1, None),
    "calibration.n": (int, 1, None),
    "calibration.batch_size": (int, 1, None),
    "calibration.dataset.n": (int, 1, None),
    "num_threads": (int, 1, None),
    "selection.min_gap": (int, 1, None),
    "efficiency.prompt_words": (int, 1, None),
    "efficiency.new_tokens": (int, 2, None),  # the decode throughput times new_tokens - 1 steps
    "efficiency.warmup": (int, 0, None),
    "efficiency.repeats": (int, 1, None),
    "efficiency.batch_size": (int, 1, None),
    "logger.wandb.init_timeout": (float, 0, None),
}

# lmms-eval generation settings (task.options.gen_kwargs) as transformers' generate() takes them
GEN_RANGES: dict[str, tuple[type, float | None, float | None]] = {
    "max_new_tokens": (int, 1, None), "min_new_tokens": (int, 0, None), "num_beams": (int, 1, None),
    "temperature": (float, 0, None), "top_p": (float, 0, 1), "top_k": (int, 0, None),
    "repetition_penalty": (float, 0, None),
}


def _schema_fields(schema: type) -> dict[str, Any]:
    """Field name -> its type, for a dataclass schema node."""
    hints = typing.get_type_hints(schema)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(schema)}


def check_keys(cfg: DictConfig, schema: type = RunConfig, prefix: str = "", extras: tuple[str, ...] = EXTRA_FLAGS) -> None:
    """Every key of ``cfg`` is a field of ``schema``, at every typed level.

    Hydra's ``+key=value`` adds a key the schema does not have (the fix its own error message
    suggests for a typo): the job would run without the setting and record the result as if
    it had it (``+sparsty=0.3``: an unpruned model). Open nodes (``scorer``, ``*.options``,
    ``model.tiny``) are checked by their consumers.
    """
    fields = _schema_fields(schema)
    for key in cfg.keys():
        key = str(key)
        if key in fields or key in extras or (not prefix and key == "hydra"):  # Hydra's own node, when composed in
            continue
        path = f"{prefix}{key}"
        known = sorted(fields)
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {prefix}{close[0]}? " if close else ""
        flags = f"; extra flags: {', '.join('+' + e for e in extras)}" if extras else ""
        raise ConfigError(f"{path} is not a config key ({hint}keys of {prefix.rstrip('.') or 'the run config'}: "
                          f"{', '.join(known)}{flags})")
    for name, kind in fields.items():
        if dataclasses.is_dataclass(kind) and name in cfg and isinstance(cfg._get_node(name), DictConfig):
            check_keys(cfg[name], kind, f"{prefix}{name}.", ())


def _check_seeds(data: Any, path: str = "") -> None:
    """Every ``seed`` (and every entry of a ``seeds`` mapping), at any depth, is a valid numpy seed."""
    if isinstance(data, dict):
        for key, value in data.items():
            sub = f"{path}{key}"
            if key == "seed" or (path.endswith("seeds.") and not isinstance(value, (dict, list))):
                _in_range(sub, value, int, *SEED_RANGE)
            else:
                _check_seeds(value, sub + ".")


def _check_cap(cfg: DictConfig) -> None:
    """``task.max_new_tokens_cap`` (None, an integer >= 1 or {task: integer >= 1}; lmms evaluator
    only) and ``task.options.kv_cache_fraction`` (in (0, 1])."""
    options = cfg.task.options or {}
    fraction = options.get("kv_cache_fraction")
    _in_range("task.options.kv_cache_fraction", fraction, float, 0, 1)
    if fraction == 0:
        raise ConfigError("task.options.kv_cache_fraction=0 must be in (0, 1]")
    cap = cfg.task.get("max_new_tokens_cap")
    if cap is None:
        return
    if cfg.task.evaluator != "lmms":
        raise ConfigError(f"task.max_new_tokens_cap={cap} applies to task.evaluator=lmms only "
                          f"(task.evaluator={cfg.task.evaluator} generates task.max_new_tokens tokens)")
    if isinstance(cap, ListConfig):
        raise ConfigError(f"task.max_new_tokens_cap={cap} must be an integer >= 1 or {{task: integer}}")
    for key, value in (cap.items() if isinstance(cap, DictConfig) else [(None, cap)]):
        _in_range("task.max_new_tokens_cap" + (f".{key}" if key is not None else ""), value, int, 1, None)


def _check_generation(cfg: DictConfig) -> None:
    _check_cap(cfg)
    gen = (cfg.task.options or {}).get("gen_kwargs") if cfg.task.options else None
    if not gen:
        return
    if isinstance(gen, str):  # lmms-eval's "k=v,k=v"
        import ast

        items = {}
        for part in gen.split(","):
            k, sep, v = part.partition("=")
            if not sep:
                raise ConfigError(f"task.options.gen_kwargs={gen!r}: {part!r} is not key=value")
            try:
                items[k.strip()] = ast.literal_eval(v.strip())
            except (ValueError, SyntaxError):
                items[k.strip()] = v.strip()
        gen = items
    for k, v in dict(gen).items():
        if k in GEN_RANGES:
            _in_range(f"task.options.gen_kwargs.{k}", v, *GEN_RANGES[k])


def scorer_class(scorer_cfg: DictConfig | dict) -> tuple[type, dict[str, Any]]:
    """The scorer's class and its given parameters, from ``name`` (the registry) or ``_target_``
    (a class outside the scanned packages, by module path). With both, they must agree: the
    class ``_target_`` names must be registered under ``name`` (``scorer=cosine
    scorer.name=tail`` is an error, not a cosine scorer)."""
    from topovlm.api import LayerScorer
    from topovlm.registry import available_scorers, get_scorer_class

    params = OmegaConf.to_container(scorer_cfg, resolve=True) if isinstance(scorer_cfg, DictConfig) else dict(scorer_cfg)
    name = params.pop("name", None)
    target = params.pop("_target_", None)
    if not target:
        _allowed("scorer", name, available_scorers())
        return get_scorer_class(name), params
    import hydra.utils

    try:
        cls = hydra.utils.get_class(target)
    except Exception as err:  # noqa: BLE001 - ImportError, AttributeError, ValueError from _locate
        why = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())  # one line
        raise ConfigError(f"scorer._target_={target!r} cannot be imported ({why}); "
                          "is its package on PYTHONPATH?") from None
    if not (isinstance(cls, type) and issubclass(cls, LayerScorer)):
        raise ConfigError(f"scorer._target_={target!r} is not a LayerScorer subclass")
    if name and cls.name and cls.name != name:
        known = available_scorers()
        if name not in known:
            raise ConfigError(f"scorer={name!r} is not allowed; allowed values: {', '.join(known)} "
                              f"(scorer._target_={target!r} is registered as {cls.name!r})")
        raise ConfigError(f"scorer.name={name!r} does not match scorer._target_={target!r}, which is registered "
                          f"as {cls.name!r}; give the scorer's own name or drop one of the two")
    return cls, params


def _effective(cls: type, params: dict[str, Any]) -> dict[str, Any]:
    """The constructor's defaults with ``params`` merged in as Hydra merges a preset: a mapping
    merges key by key (``scorer.domains.math=[x]`` keeps ``non_math``), anything else replaces."""
    from topovlm.registry import parameters

    defaults = {k: v for k, v in parameters(cls).items() if v is not ...}
    merged = OmegaConf.merge(OmegaConf.create(defaults), OmegaConf.create(params))
    return OmegaConf.to_container(merged)  # plain values, as YAML holds them (tuples become lists)


def build_scorer(scorer_cfg: DictConfig | dict) -> "LayerScorer":
    """The scorer a config names: its class (:func:`scorer_class`), other keys = constructor
    parameters over its defaults. The one way a scorer is built (runs, validation,
    ``topovlm topo-score``)."""
    from topovlm.registry import parameters

    cls, params = scorer_class(scorer_cfg)
    given = OmegaConf.to_container(scorer_cfg, resolve=True) if isinstance(scorer_cfg, DictConfig) else dict(scorer_cfg)
    label = given.get("name") or cls.name or given.get("_target_")
    try:
        return cls(**_effective(cls, params))
    except TypeError as err:
        raise ConfigError(f"scorer={label}: {err}; its parameters are: {', '.join(parameters(cls)) or '(none)'}") from None
    except ValueError as err:
        raise ConfigError(f"scorer={label}: {err}") from None


def scorer_config(scorer_cfg: DictConfig | dict) -> dict[str, Any]:
    """The scorer's effective constructor parameters: its name, then every parameter, given or
    default (plugins too). results.json and the job's identity record this, so a preset that
    sets nothing and one that repeats every default are the same scorer (one summary row)."""
    cls, params = scorer_class(scorer_cfg)
    given = OmegaConf.to_container(scorer_cfg, resolve=True) if isinstance(scorer_cfg, DictConfig) else dict(scorer_cfg)
    out: dict[str, Any] = {"name": cls.name or given.get("name")}
    if given.get("_target_"):
        out["_target_"] = given["_target_"]
    return {**out, **_effective(cls, params)}


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The job's config as recorded (results.json, W&B, the job's identity): resolved, the scorer
    node as :func:`scorer_config` gives it."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data["scorer"] = scorer_config(cfg.scorer)
    if "max_new_tokens_cap" in data.get("task", {}) and data["task"]["max_new_tokens_cap"] is None:
        data["task"].pop("max_new_tokens_cap")  # unset: results recorded before the key existed keep their identity
    if data.get("task", {}).get("protocol") == "harness":  # the default: results recorded before the key existed
        data["task"].pop("protocol")                        # keep their identity
    return data


def config_num_layers(model: Any) -> int | None:
    """The decoder depth from the model's config alone (no weights), None when not cheaply known."""
    import inspect
    import json
    from pathlib import Path

    if model.source == "tiny":
        from topovlm.adapters.tiny import TINY_BUILDERS

        builder = TINY_BUILDERS.get(model.family)
        default = inspect.signature(builder).parameters["num_layers"].default if builder else None
        return int((model.tiny or {}).get("num_layers", default))
    file = None
    if model.source == "embedded":
        from topovlm.default_model import default_cache_dir
        from topovlm.default_model.build import model_dir_name

        file = default_cache_dir() / model_dir_name() / "config.json"
    elif model.path and (Path(model.path) / "config.json").is_file():
        file = Path(model.path) / "config.json"
    elif model.path:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(model.path, "config.json", revision=model.revision)
            file = Path(found) if isinstance(found, str) else None
        except Exception:  # noqa: BLE001 - not cached: known after loading
            file = None
    if file is None or not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    for section in (data.get("text_config") or {}, data):
        if isinstance(section, dict) and section.get("num_hidden_layers"):
            return int(section["num_hidden_layers"])
    return None


def _writable(key: str, value: Any) -> None:
    """``value`` is a directory this process can create or write into."""
    import os
    from pathlib import Path

    path = Path(str(value)).expanduser()
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={value}: {probe} is not a writable directory")


def _check_protocol(cfg: DictConfig) -> None:
    from topovlm.evaluation.protocol import EXACT_CLASSES, PROTOCOLS

    protocol = cfg.task.get("protocol", "harness")
    _allowed("task.protocol", protocol, PROTOCOLS)
    if protocol == "lmms_exact" and cfg.task.evaluator != "lmms":
        raise ConfigError(f"task.protocol=lmms_exact follows lmms-eval's own model classes: it needs task.evaluator=lmms "
                          f"(task={cfg.task.name} uses {cfg.task.evaluator}; the shapes benchmark through lmms-eval: "
                          "task=shapes_lmms)")
    if protocol == "lmms_exact" and cfg.model.family not in EXACT_CLASSES:
        raise ConfigError(f"task.protocol=lmms_exact follows lmms-eval's llava_hf / qwen2_vl classes; "
                          f"model.family={cfg.model.family} has none (allowed: {', '.join(EXACT_CLASSES)})")


def _check_values(cfg: DictConfig) -> None:
    from topovlm.adapters.families import ADAPTERS
    from topovlm.data.sources import SOURCES
    from topovlm.evaluation import EVALUATORS

    check_keys(cfg)
    for key, (kind, low, high) in RANGES.items():
        _in_range(key, OmegaConf.select(cfg, key), kind, low, high)
    _check_seeds({k: OmegaConf.to_container(v, resolve=True) if isinstance(v, (DictConfig, ListConfig)) else v
                  for k, v in cfg.items() if k != "hydra"})  # hydra's node resolves only inside a job
    _check_generation(cfg)
    if not 0.0 <= float(cfg.sparsity) < 1.0:
        raise ConfigError(f"sparsity={cfg.sparsity} must be in [0, 1)")
    _allowed("model.family", cfg.model.family, sorted(ADAPTERS))
    _allowed("model.source", cfg.model.source, MODEL_SOURCES)
    _allowed("model.dtype", cfg.model.dtype, DTYPES)
    if cfg.model.source == "pretrained" and not cfg.model.path:
        raise ConfigError("model.path must name a hub id or local directory when model.source=pretrained")
    _allowed("task.evaluator", cfg.task.evaluator, sorted(EVALUATORS))
    _check_protocol(cfg)
    for key in ("task.dataset", "calibration.dataset"):
        ds = OmegaConf.select(cfg, key)
        _allowed(f"{key}.source", ds.source, sorted(SOURCES))
        if ds.source == "shapes":
            from topovlm.data.shapes import SPLITS, VERSIONS

            _allowed(f"{key}.split", ds.split, SPLITS)
            _allowed(f"{key}.version", ds.version, sorted(VERSIONS))
    _allowed("selection.policy", cfg.selection.policy, POLICIES)
    if not 0.0 < float(cfg.selection.eps) <= 1.0:
        raise ConfigError(f"selection.eps={cfg.selection.eps} must be in (0, 1]")
    _allowed("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)


def _check_scorer(cfg: DictConfig) -> "LayerScorer":
    scorer = build_scorer(cfg.scorer)
    try:
        scorer.check_config(cfg)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"scorer={scorer.name}: {err}") from None
    return scorer


def _check_budget(cfg: DictConfig, scorer: "LayerScorer") -> None:
    from topovlm.selection import SelectionError, check_budget, no_decision, resolve_policy

    selection = SelectionConfig(**OmegaConf.to_container(cfg.selection, resolve=True))
    if resolve_policy(selection, float(cfg.sparsity), scorer.default_policy) == "adaptive" and not scorer.makes_decision:
        raise ConfigError(no_decision(f"scorer={scorer.name}"))

    num_layers = config_num_layers(cfg.model)
    if num_layers is None:
        return  # checked again once the model is loaded, before anything is computed
    try:
        check_budget(float(cfg.sparsity), num_layers, selection, scorer.default_policy)
    except SelectionError as err:
        raise ConfigError(f"sparsity={cfg.sparsity:g}, selection.policy={cfg.selection.policy} "
                          f"(scorer {scorer.name}: {scorer.default_policy}) on {cfg.model.name} "
                          f"({num_layers} layers): {err}") from None


def validate(cfg: DictConfig, inputs: bool = True) -> "LayerScorer":
    """Every check the config alone allows, before anything expensive happens; the sweep
    runs it for every job at its start (``topovlm.callbacks.SweepGuard``). Raises
    :class:`ConfigError` naming the key and what is allowed. ``inputs``: also check that
    the model and the datasets the job reads are available (:mod:`topovlm.preflight`).
    Returns the job's scorer, built and checked against the config (``check_config`` may
    adopt run settings: topo takes selection.eps)."""
    _check_values(cfg)
    scorer = _check_scorer(cfg)
    _check_budget(cfg, scorer)
    _writable("cache_dir", cfg.cache_dir)
    if inputs:
        from topovlm.preflight import check_inputs

        check_inputs(cfg)  # model path, data files, datasets: before any model loads
    return scorer
