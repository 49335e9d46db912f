"""Typed config schema, registered in Hydra's ConfigStore, and start-up validation.

The schema makes a misspelt top-level key fail when Hydra composes the config;
:func:`validate` then checks values (names of scorers, policies, poolings, ranges) and
raises :class:`ConfigError` naming the key and the allowed values, before any model
is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from topovlm.selection import POLICIES, SelectionConfig

MODEL_SOURCES = ("pretrained", "embedded", "tiny")
DTYPES = ("float32", "float16", "bfloat16", "auto")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A config value is invalid; the message names the key and what is allowed."""


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in results and cache keys
    family: str = "llava"  # adapter: llava | qwen2_vl | causal_lm
    source: str = "pretrained"  # pretrained (hub id / local path) | embedded | tiny
    path: Optional[str] = None  # hub id or local directory (source=pretrained)
    revision: Optional[str] = None
    dtype: str = "float32"
    device: str = "cpu"  # where inputs go; "cuda" on GPU machines
    device_map: Optional[str] = None  # e.g. "auto" to spread a large model over GPUs
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
    options: dict[str, Any] = field(default_factory=dict)  # evaluator-specific (e.g. lmms-eval task list)


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
    scorer: Any = MISSING  # scorer-specific keys; checked by the scorer's constructor
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    efficiency: EfficiencyConfig = field(default_factory=EfficiencyConfig)
    sparsity: float = 0.0
    seed: int = 0
    num_threads: Optional[int] = None  # torch CPU threads per job (e.g. 1 with parallel launchers)
    cache_dir: str = "${oc.env:TOPOVLM_CACHE,${oc.env:HOME}/.cache/topovlm}"
    save_model: bool = False  # save the pruned model next to the run
    reference: bool = True  # also evaluate the unpruned model once per model/task/seed (cached)
    # `+force=true` (not in the schema, as an extra flag) recomputes a job whose result exists


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)


def _allowed(key: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")


def validate(cfg: DictConfig, inputs: bool = True) -> None:
    """Check values before anything expensive happens; ``inputs``: also that the model and
    the datasets the job reads are available (:mod:`topovlm.preflight`)."""
    from topovlm.adapters.families import ADAPTERS
    from topovlm.data.sources import SOURCES
    from topovlm.evaluation import EVALUATORS
    from topovlm.registry import available_scorers

    if not 0.0 <= float(cfg.sparsity) < 1.0:
        raise ConfigError(f"sparsity={cfg.sparsity} must be in [0, 1)")
    _allowed("model.family", cfg.model.family, sorted(ADAPTERS))
    _allowed("model.source", cfg.model.source, MODEL_SOURCES)
    _allowed("model.dtype", cfg.model.dtype, DTYPES)
    if cfg.model.source == "pretrained" and not cfg.model.path:
        raise ConfigError("model.path must name a hub id or local directory when model.source=pretrained")
    _allowed("task.evaluator", cfg.task.evaluator, sorted(EVALUATORS))
    _allowed("task.dataset.source", cfg.task.dataset.source, sorted(SOURCES))
    _allowed("calibration.dataset.source", cfg.calibration.dataset.source, sorted(SOURCES))
    if cfg.calibration.n < 1:
        raise ConfigError(f"calibration.n={cfg.calibration.n} must be >= 1")
    _allowed("selection.policy", cfg.selection.policy, POLICIES)
    if not 0.0 < float(cfg.selection.eps) <= 1.0:
        raise ConfigError(f"selection.eps={cfg.selection.eps} must be in (0, 1]")
    if cfg.selection.min_gap < 1:
        raise ConfigError(f"selection.min_gap={cfg.selection.min_gap} must be >= 1")
    scorer_name = OmegaConf.select(cfg, "scorer.name")
    _allowed("scorer", scorer_name, available_scorers())
    _allowed("logger.wandb.mode", cfg.logger.wandb.mode, WANDB_MODES)
    if inputs:
        from topovlm.preflight import check_inputs

        check_inputs(cfg)  # model path, data files, datasets: before any model loads
