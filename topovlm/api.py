"""The harness's interfaces, in one module that imports nothing of the project.

* :class:`LayerScorer` and what it declares (:class:`CaptureSpec`, :class:`StatRequest`),
  receives (a :class:`CaptureLike` capture, :class:`ScoringContext`) and returns
  (:class:`ScoreResult`);
* :class:`Evaluator`, the evaluation interface (with the direction of each metric:
  :meth:`Evaluator.higher_is_better`).

A scorer turns calibration statistics into one number per decoder layer. It never touches
the model: the capture step runs the model once, and selection policies
(``topovlm.selection``) turn scores into removed layers.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.capture import Capture
    from topovlm.data.types import VQASample

POOLINGS = ("last", "text_mean", "vision_mean")


@dataclass(frozen=True)
class StatRequest:
    """A token-level statistic a scorer needs from the calibration pass.

    ``name`` is a key of ``topovlm.capture.STATISTICS``; ``params`` (sorted key/value
    pairs) are passed to it and are part of the capture cache key.
    """

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, name: str, **params: Any) -> "StatRequest":
        return cls(name, tuple(sorted(params.items())))

    @property
    def key(self) -> str:
        if not self.params:
            return self.name
        return self.name + "(" + ",".join(f"{k}={v}" for k, v in self.params) + ")"


@dataclass(frozen=True)
class CaptureSpec:
    """What the calibration pass must record for a scorer.

    Pooled residual-stream states (all poolings in ``POOLINGS``) are always captured;
    ``stats`` adds token-level statistics reduced per sample inside the hooks;
    ``norms`` adds the pooled outputs of every decoder layer's post-attention norm and of
    the final norm (``Capture.norm_out``), recorded in the same pass.
    """

    stats: tuple[StatRequest, ...] = ()
    norms: bool = False

    def __or__(self, other: "CaptureSpec") -> "CaptureSpec":
        return CaptureSpec(tuple(dict.fromkeys(self.stats + other.stats)), self.norms or other.norms)


@dataclass
class ScoreResult:
    """One scorer's verdict on the decoder layers (original indices 0..L-1).

    ``scores``: the scorer's native per-layer values (NaN where it has none), reported
    as is. ``redundancy``: the value selection policies rank by; higher = remove first.
    ``block_cost``: optional ``(L+1, L)`` array, ``block_cost[n, l]`` = cost of removing
    the contiguous block ``l..l+n-1`` (NaN where the block leaves the decoder); the
    contiguous-block policy minimises it and otherwise falls back to ``redundancy``.
    ``extra``: JSON-serialisable details for results.json (e.g. a ``topology`` section).
    ``arrays``: numpy arrays saved next to the run (``<name>.npz``).
    """

    scores: np.ndarray
    redundancy: np.ndarray
    block_cost: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the method's own choice of layers to remove (original indices), for methods whose paper
    #: prunes by a rule of its own; ``selection.policy=adaptive`` applies it
    decision: list[int] | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.redundancy = np.asarray(self.redundancy, dtype=np.float64)
        if self.scores.shape != self.redundancy.shape or self.scores.ndim != 1:
            raise ValueError(
                f"scores {self.scores.shape} and redundancy {self.redundancy.shape} must be 1-D and equal"
            )


@dataclass
class ScoringContext:
    """Run-level facts a scorer may use besides the capture."""

    seed: int = 0
    num_layers: int = 0
    out_dir: Path | None = None  # where diagnostics go (None: write nothing)
    #: for scorers with ``needs_removal_loss``: ``removal_loss(layers)`` is the calibration loss
    #: (mean NLL per answer or caption token) of the model with those layers (original indices)
    #: removed. The harness removes them, runs the calibration set and restores the model;
    #: the scorer never touches the model. ``removal_loss.passes`` counts the passes so far.
    removal_loss: "RemovalLossFn | None" = None
    #: for scorers with ``needs_dev_metric`` (the oracle): ``dev_metric(layers)`` is (the task
    #: metric, each question's 0/1 result) on the development split with those layers removed
    dev_metric: "Any | None" = None


class RemovalLossFn(Protocol):
    passes: int

    def __call__(self, removed: Sequence[int]) -> float: ...


class LayerScorer(abc.ABC):
    """Base class of every scorer. Subclasses are registered with ``@register_scorer``.

    Constructor keyword arguments are the scorer's hyperparameters (its YAML keys).
    """

    name: ClassVar[str] = ""
    #: selection policy used when ``selection.policy=auto``
    default_policy: ClassVar[str] = "topk"
    #: scores can be cached and reused across sparsities (False for e.g. stateful scorers)
    cacheable: ClassVar[bool] = True
    #: whether ``score`` fills ``ScoreResult.decision`` (``selection.policy=adaptive``)
    makes_decision: ClassVar[bool] = False
    #: data-driven scorers (``ppl``, ``sleb``): ``score`` gets ``ctx.removal_loss``
    needs_removal_loss: ClassVar[bool] = False
    #: the oracle: ``score`` gets ``ctx.dev_metric``, built from ``dev_task(cfg.task)``
    needs_dev_metric: ClassVar[bool] = False


    def capture_spec(self) -> CaptureSpec:
        """Token-level statistics this scorer needs beyond the pooled states."""
        return CaptureSpec()

    def check_config(self, cfg: Any) -> None:
        """Config-only checks of a whole job that involve this scorer (e.g. a parameter
        against ``calibration.n``). ``topovlm.config.validate`` calls it for every job at
        sweep start, before any model loads; raise ``ValueError`` naming the keys and
        the allowed values. ``cfg`` is the job's full resolved config (``cfg.scorer`` its
        own keys). Checks of one parameter alone belong in ``__init__``."""

    @abc.abstractmethod
    def score(self, capture: "Capture", ctx: ScoringContext) -> ScoreResult:
        """Score every decoder layer from calibration statistics."""

    def removal_loss_samples(self, samples: Sequence[Any]) -> Sequence[Any]:
        """The calibration samples ``ctx.removal_loss`` runs on (``needs_removal_loss``): all by
        default; a scorer whose method calibrates on a subset returns it."""
        return samples

    def params(self) -> dict[str, Any]:
        """Hyperparameters that identify this scorer's ranking (part of cache keys)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def after_pruning(
        self,
        adapter: "ModelAdapter",
        removed: list[int],
        calibration: "list[VQASample]",
        ctx: ScoringContext,
    ) -> dict[str, Any]:
        """Optional model edit after layers are removed (e.g. compensation).

        Returns a JSON-serialisable record of what was changed ({} = nothing).
        """
        return {}

    def write_diagnostics(self, result: ScoreResult, out_dir: Path, removed: Sequence[int] = ()) -> list[Path]:
        """Write plots or files next to the run; return the image paths to log.

        ``removed``: the layers this job removed (original indices), so that the figures of
        one ranking show each sparsity's own removals.
        """
        return []


class CaptureLike(Protocol):
    """What a scorer reads from a calibration capture (``topovlm.capture.Capture``)."""

    num_layers: int
    sample_ids: list[str]
    domains: list[str]
    pooled: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]

    def h_in(self, pooling: str = "last") -> np.ndarray: ...

    def h_out(self, pooling: str = "last") -> np.ndarray: ...

    def norm_out(self, pooling: str = "last") -> np.ndarray: ...  # with CaptureSpec(norms=True)

    def stat(self, request: "StatRequest | str") -> np.ndarray: ...


def direction_in(table: "Mapping[str, bool | None]", metric: str) -> bool | None:
    """Whether a higher ``metric`` is better according to ``table``: its own entry, else the
    entry of its family (``accuracy`` for ``accuracy/<domain>``), else of its last part
    (``exact_match`` for ``<task>/exact_match``); None when the table says nothing."""
    for key in (metric, metric.split("/", 1)[0], metric.rsplit("/", 1)[-1]):
        if key in table:
            return table[key]
    return None


class Evaluator(abc.ABC):
    """Evaluates a (possibly pruned) model, through its adapter, on one task config."""

    #: metric (or family: ``accuracy`` covers ``accuracy/<domain>``) -> whether a higher value
    #: is better; what :meth:`higher_is_better` answers when the evaluation itself says nothing.
    #: Counts (``num_samples``) have no direction and are left out.
    HIGHER_IS_BETTER: ClassVar["Mapping[str, bool]"] = {}

    def __init__(self, task_cfg: Any) -> None:
        self.cfg = task_cfg

    def higher_is_better(self, metric: str) -> bool | None:
        """Whether a higher value of ``metric`` (a name :meth:`evaluate` returns) is better;
        None when it has no direction. The runner records it per metric in results.json
        (``metric_directions``); summaries rank scorers by it."""
        return direction_in(type(self).HIGHER_IS_BETTER, metric)

    @abc.abstractmethod
    def evaluate(self, adapter: "ModelAdapter") -> dict[str, float]:
        """Metric name -> value. The headline metric is ``accuracy`` or ``perplexity``."""

    def protocol(self) -> dict[str, Any]:
        """How the numbers were obtained (written to results.json)."""
        return {"evaluator": self.cfg.evaluator, "limit": self.cfg.limit, "batch_size": self.cfg.batch_size}

    def sample_records(self) -> "Sequence[dict[str, Any]] | None":
        """Per-sample records of the last ``evaluate`` (None: the evaluator keeps none)."""
        return None
