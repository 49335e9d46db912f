"""Short-LVLM (ACM MM 2025, arXiv 2507.23362): Token Importance Scores + Subspace-Compensated Pruning.

No public code; this follows the reconstruction in the project's method notes.

**Token Importance Scores (TIS).** Each decoder layer's own attention map (eager
attention during the calibration pass), averaged over heads, is split by query and key
modality into vision->vision, text->text and the two cross-modal blocks. The attention a
key token receives from the vision queries and from the text queries (the mean of its
column inside each block) are its within- and cross-modality importances; their mean is
its score. ``column_mean`` fixes what the column mean divides by: ``visible`` (default)
counts only the block's queries that the causal mask lets see the key (queries at or
after it), ``block`` counts every query of the block (masked entries as zeros, which
favours early tokens). A block without queries is left out of the mean. The top
``top_p_vision`` of a sample's vision tokens and the top ``top_p_text`` of its text tokens
(at least one of each modality present) are its important tokens at that layer, and the
layer's statistic for the sample is the mean of cos(h_in, h_out) over them. The layers are
ranked like ShortGPT restricted to those tokens: the most similar are pruned first. With
both fractions at 1 every token is important and the ranking is ShortGPT's.

**Subspace-Compensated Pruning (SCP)**, ``compensation: scp``. For each removed layer p the
retained layer r that now receives its input is the next kept layer (for removed layers at
the end of the decoder, which have none, the last kept layer, whose output now takes
their place). Removed layers that share r are compensated together. The features ``X``
are residual-stream states at r's input: ``X_p`` is what r received in the unpruned model
(its calibration capture) and ``X_r`` what it receives in the pruned model (a calibration
pass through the pruned model), so ``H = X_p - X_r`` is exactly the contribution the
removed layers no longer add, upstream removals and edits included. Rows of ``H`` are the
pooled calibration states the capture keeps (``scp_poolings``: the last token and the
text / vision token means of every sample), not every token, because the unpruned model's
token-level states are no longer available after pruning. The top-``rank`` right singular
vectors ``V`` of ``H`` give the edit ``W <- (I + scale * V V^T) W`` (bias alike) of r's
output projection (``projection``: ``down_proj``, ``o_proj`` or a dotted path inside the
layer). Retained layers are edited in order from the first one, each gap measured after the
edits above it. ``rank: 0`` leaves the weights unchanged. The edit keeps every module's
shape, so the model saves and reloads as any pruned model.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from topovlm.capture import run_capture
from topovlm.token_stats import LayerCall, masked_mean, register_statistic, row_cosine
from topovlm.registry import register_scorer
from topovlm.api import POOLINGS, CaptureLike, CaptureSpec, LayerScorer, ScoreResult, ScoringContext, StatRequest

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.data.types import VQASample

STAT = "tis_cos"
COLUMN_MEANS = ("visible", "block")
COMPENSATIONS = ("none", "scp")
PROJECTIONS = {"down_proj": "mlp.down_proj", "o_proj": "self_attn.o_proj"}


# ---------------------------------------------------------------- token importance


def _received(attn: torch.Tensor, queries: torch.Tensor, column_mean: str) -> torch.Tensor:
    """``(B, T)``: mean attention each key receives from the ``queries`` block; NaN where none can see it."""
    q = queries.to(attn.dtype)
    total = torch.einsum("bi,bij->bj", q, attn)
    if column_mean == "visible":  # queries at positions >= key (causal attention)
        count = q.flip(1).cumsum(1).flip(1)
    else:
        count = q.sum(dim=1, keepdim=True).expand_as(total)
    return torch.where(count > 0, total / count.clamp_min(1.0), torch.full_like(total, float("nan")))


def token_importance(call: LayerCall, column_mean: str = "visible") -> torch.Tensor:
    """``(B, T)`` importance of every real token (NaN for padding): the mean of the attention it
    receives from vision queries and from text queries, averaged over heads."""
    if call.attention is None:
        raise RuntimeError("token importance needs the layer's attention map")
    attn = call.attention.float().mean(dim=1)  # (B, T, T): queries x keys
    m = call.masks
    blocks = torch.stack([_received(attn, m.vision, column_mean), _received(attn, m.text, column_mean)])
    seen = torch.isfinite(blocks)
    score = torch.where(seen, blocks, torch.zeros_like(blocks)).sum(0) / seen.sum(0).clamp_min(1)
    score = torch.where(seen.any(0), score, torch.zeros_like(score))  # no block sees it: least important
    return torch.where(m.valid, score, torch.full_like(score, float("nan")))


def _top_fraction(score: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    """Boolean ``(B, T)``: per row, the ceil(p * n) highest-scoring positions of ``mask`` (n = its count)."""
    n = mask.sum(dim=1)
    k = torch.where(n > 0, torch.ceil(n.double() * p).long().clamp(min=1), torch.zeros_like(n))
    k = torch.minimum(k, n)
    masked = torch.where(mask, torch.nan_to_num(score, nan=-1.0), torch.full_like(score, -math.inf))
    order = torch.argsort(masked, dim=1, descending=True, stable=True)  # ties: earlier position first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return mask & (rank < k.unsqueeze(1))


def important_tokens(call: LayerCall, top_p_vision: float, top_p_text: float, column_mean: str) -> torch.Tensor:
    """Boolean ``(B, T)`` mask of the important tokens of every sample at this layer."""
    if top_p_vision >= 1.0 and top_p_text >= 1.0:
        return call.masks.valid  # every token: no attention needed
    score = token_importance(call, column_mean)
    m = call.masks
    return _top_fraction(score, m.vision, top_p_vision) | _top_fraction(score, m.text, top_p_text)


def tis_cos(call: LayerCall, top_p_vision: float = 0.5, top_p_text: float = 0.5,
            column_mean: str = "visible") -> torch.Tensor:
    """Per sample: mean of cos(h_in, h_out) over the layer's important tokens."""
    keep = important_tokens(call, top_p_vision, top_p_text, column_mean)
    return masked_mean(row_cosine(call.h_in, call.h_out), keep)


register_statistic(STAT, tis_cos, needs_attention=True,
                   description="mean cos(h_in, h_out) over the top-p attention-important vision and text tokens")


# ---------------------------------------------------------------- subspace compensation


def scp_plan(removed: list[int], kept: list[int]) -> list[dict[str, Any]]:
    """Group removed layers (original indices) by the retained layer that compensates them.

    Each group: ``layer`` (original index of the edited layer), ``position`` (its index in
    the pruned decoder), ``boundary`` (index into the unpruned states: r's input, or L for
    the decoder's output), ``pruned_boundary`` (the same point in the pruned model) and
    ``removed``. Sorted from the first layer on.
    """
    if not kept:
        raise ValueError("no layer is left to compensate")
    groups: dict[int, dict[str, Any]] = {}
    for p in sorted(removed):
        after = [k for k in kept if k > p]
        if after:
            r = after[0]
            pos = kept.index(r)
            g = groups.setdefault(r, {"layer": r, "position": pos, "boundary": r, "pruned_boundary": pos,
                                      "removed": []})
        else:  # nothing after p: the last kept layer now writes the decoder's output
            r = kept[-1]
            num_layers = max(max(kept), max(removed)) + 1
            g = groups.setdefault(-1, {"layer": r, "position": len(kept) - 1, "boundary": num_layers,
                                       "pruned_boundary": len(kept), "removed": []})
        g["removed"].append(p)
    return sorted(groups.values(), key=lambda g: g["boundary"])


def gap_matrix(reference: dict[str, np.ndarray], current: dict[str, np.ndarray], boundary: int,
               pruned_boundary: int, poolings: list[str]) -> np.ndarray:
    """Rows: ``X_p - X_r`` for every sample and pooling (rows with NaN, e.g. no vision tokens, dropped)."""
    rows = [reference[p][boundary].astype(np.float64) - current[p][pruned_boundary].astype(np.float64)
            for p in poolings]
    h = np.concatenate(rows, axis=0)
    return h[np.isfinite(h).all(axis=1)]


def top_right_singular(h: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """``(d, k)`` top-k right singular vectors of ``h`` and all its singular values."""
    if h.size == 0:
        return np.zeros((h.shape[1], 0)), np.zeros(0)
    _, s, vh = np.linalg.svd(h, full_matrices=False)
    k = min(rank, int(np.sum(s > s[0] * 1e-10)) if s.size and s[0] > 0 else 0)
    return vh[:k].T, s


def resolve_module(layer: torch.nn.Module, projection: str) -> tuple[str, torch.nn.Linear]:
    path = PROJECTIONS.get(projection, projection)
    module: Any = layer
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            raise AttributeError(f"projection={projection!r}: the decoder layer has no {path!r}")
    if not isinstance(module, torch.nn.Linear):
        raise TypeError(f"projection={projection!r}: {path!r} is a {type(module).__name__}, not a Linear layer")
    return path, module


@torch.no_grad()
def apply_subspace_edit(linear: torch.nn.Linear, v: np.ndarray, scale: float = 1.0) -> float:
    """``W <- (I + scale * V V^T) W`` on the output side (and the bias); returns ||dW||_F / ||W||_F."""
    if v.shape[1] == 0:
        return 0.0
    w = linear.weight
    vt = torch.as_tensor(v, dtype=torch.float64, device=w.device)
    w64 = w.double()
    delta = scale * vt @ (vt.T @ w64)
    w.copy_((w64 + delta).to(w.dtype))
    if linear.bias is not None:
        b64 = linear.bias.double()
        linear.bias.copy_((b64 + scale * vt @ (vt.T @ b64)).to(linear.bias.dtype))
    return float(delta.norm() / w64.norm().clamp_min(1e-30))


def relative_gap(reference: np.ndarray, current: np.ndarray) -> float:
    """Mean over samples of ||ref - cur|| / ||ref|| (rows with NaN ignored)."""
    num = np.linalg.norm(reference.astype(np.float64) - current.astype(np.float64), axis=-1)
    den = np.maximum(np.linalg.norm(reference.astype(np.float64), axis=-1), 1e-12)
    return float(np.nanmean(num / den))


# ---------------------------------------------------------------- the scorer


@register_scorer("short_lvlm")
class ShortLVLMScorer(LayerScorer):
    """Layers ranked by cos(h_in, h_out) over attention-important tokens; optional SCP after pruning."""

    def __init__(
        self,
        top_p_vision: float = 0.5,  # fraction of each sample's vision tokens kept as important, (0, 1]
        top_p_text: float = 0.5,  # fraction of each sample's text tokens kept as important, (0, 1]
        # visible: a key's column mean over the queries the causal mask lets see it
        # block: over every query of the block (masked entries count as 0)
        column_mean: str = "visible",
        # Subspace-Compensated Pruning after the layers are removed: none (TIS alone) | scp.
        # For each retained layer r that now receives a removed layer's input: H = X_p - X_r, the
        # unpruned minus the pruned residual state at r's input (rows: each calibration sample's
        # pooled states, see scp_poolings), V = top-`rank` right singular vectors of H, and
        # W <- (I + scale * V V^T) W on r's output projection. Removed layers at the end of the
        # decoder are compensated on the last kept layer. The edits go to results.json (after_pruning).
        compensation: str = "none",
        # down_proj (MLP output) | o_proj (attention output) | a dotted path in the layer
        # (down_proj, rank 4: on SmolLM2-135M in the default architecture, vision tower untrained,
        # 3 of 30 layers removed by TIS, the next-token KL to the unpruned model on calibration
        # prompts went 0.295 -> 0.197; o_proj rank 4: -> 0.260)
        projection: str = "down_proj",
        rank: int = 4,  # k, number of singular directions (0: identity)
        scale: float = 1.0,  # 1.0 is the paper's I + V V^T
        scp_poolings: list[str] | tuple[str, ...] = POOLINGS,  # rows of H per sample
        batch_size: int = 16,  # calibration batch size of the passes SCP runs on the pruned model
    ) -> None:
        for name, p in (("top_p_vision", top_p_vision), ("top_p_text", top_p_text)):
            if not 0.0 < float(p) <= 1.0:
                raise ValueError(f"{name}={p} must be in (0, 1]")
        if column_mean not in COLUMN_MEANS:
            raise ValueError(f"column_mean={column_mean!r}; allowed: {', '.join(COLUMN_MEANS)}")
        if compensation not in COMPENSATIONS:
            raise ValueError(f"compensation={compensation!r}; allowed: {', '.join(COMPENSATIONS)}")
        if int(rank) < 0:
            raise ValueError(f"rank={rank} must be >= 0")
        poolings = list(scp_poolings)
        bad = [p for p in poolings if p not in POOLINGS]
        if bad or not poolings:
            raise ValueError(f"scp_poolings={poolings}; allowed: {', '.join(POOLINGS)}")
        self.top_p_vision = float(top_p_vision)
        self.top_p_text = float(top_p_text)
        self.column_mean = column_mean
        self.compensation = compensation
        self.projection = projection
        self.rank = int(rank)
        self.scale = float(scale)
        self.scp_poolings = poolings
        self.batch_size = int(batch_size)
        self._reference: dict[str, Any] | None = None  # unpruned states for SCP, set by score()

    @property  # type: ignore[override]
    def cacheable(self) -> bool:
        # SCP needs the unpruned model's calibration states, which only score() receives
        return self.compensation == "none"

    def request(self) -> StatRequest:
        return StatRequest.make(STAT, top_p_vision=self.top_p_vision, top_p_text=self.top_p_text,
                                column_mean=self.column_mean)

    def capture_spec(self) -> CaptureSpec:
        return CaptureSpec((self.request(),))

    def score(self, capture: CaptureLike, ctx: ScoringContext) -> ScoreResult:
        cos = capture.stat(self.request())
        mean = np.nanmean(cos, axis=1)
        if self.compensation == "scp":
            self._reference = {"sample_ids": list(capture.sample_ids),
                               "pooled": {p: capture.pooled[p] for p in POOLINGS}}
        return ScoreResult(scores=mean, redundancy=mean,
                           extra={"short_lvlm": {"tis_cos_by_layer": mean.tolist()}})

    # ------------------------------------------------------------ SCP
    def after_pruning(self, adapter: "ModelAdapter", removed: list[int], calibration: "list[VQASample]",
                      ctx: ScoringContext) -> dict[str, Any]:
        if self.compensation == "none" or not removed:
            return {}
        ref = self._reference
        if ref is None:
            raise RuntimeError("compensation=scp needs the unpruned model's calibration capture: "
                               "call score() before after_pruning()")
        if [s.id for s in calibration] != ref["sample_ids"]:
            raise ValueError("the calibration samples given to after_pruning() are not the ones scored")
        return subspace_compensate(adapter, removed, calibration, ref["pooled"], projection=self.projection,
                                   rank=self.rank, scale=self.scale, poolings=self.scp_poolings,
                                   batch_size=self.batch_size)


def pruned_states(adapter: "ModelAdapter", samples: "list[VQASample]", batch_size: int) -> dict[str, np.ndarray]:
    """Pooled residual states of the (pruned) model at each of its layer boundaries."""
    return run_capture(adapter, samples, CaptureSpec(), batch_size).pooled


def subspace_compensate(adapter: "ModelAdapter", removed: list[int], calibration: "list[VQASample]",
                        reference: dict[str, np.ndarray], *, projection: str = "down_proj", rank: int = 4,
                        scale: float = 1.0, poolings: list[str] | tuple[str, ...] = POOLINGS,
                        batch_size: int = 16) -> dict[str, Any]:
    """Apply SCP to a pruned adapter; ``reference[pooling]``: the unpruned ``(L+1, N, d)`` states.

    Returns the JSON record of the edits, with the relative gap between the pruned and the
    unpruned decoder output (last token, before the final norm) before and after them.
    """
    poolings = list(poolings)
    kept = list(adapter.kept_layers)
    plan = scp_plan(removed, kept)
    layers = adapter.decoder_layers()
    final = next(iter(reference.values())).shape[0] - 1  # L: the unpruned decoder's output
    edits: list[dict[str, Any]] = []
    current = pruned_states(adapter, calibration, batch_size)
    measure = "last" in reference
    gap_before = relative_gap(reference["last"][final], current["last"][-1]) if measure else None
    for i, g in enumerate(plan):
        if i > 0:  # the edits above change what this layer receives
            current = pruned_states(adapter, calibration, batch_size)
        h = gap_matrix(reference, current, g["boundary"], g["pruned_boundary"], poolings)
        v, s = top_right_singular(h, rank)
        path, linear = resolve_module(layers[g["position"]], projection)
        change = apply_subspace_edit(linear, v, scale)
        energy = float(np.sum(s[: v.shape[1]] ** 2) / np.sum(s ** 2)) if s.size and np.sum(s ** 2) > 0 else 0.0
        ref_rows = np.concatenate([reference[p][g["boundary"]] for p in poolings], axis=0)
        ref_norm = float(np.nanmean(np.linalg.norm(ref_rows.astype(np.float64), axis=-1)))
        edits.append({
            "layer": g["layer"],
            "position": g["position"],
            "module": path,
            "removed_layers": g["removed"],
            "at": "input" if g["boundary"] < final else "decoder_output",
            "rows": int(h.shape[0]),
            "rank": int(v.shape[1]),
            "singular_values": [float(x) for x in s[: max(v.shape[1], 1)]],
            "energy_captured": energy,
            "gap_rms_over_state_norm": float(np.sqrt(np.mean(np.sum(h ** 2, axis=1))) / max(ref_norm, 1e-12))
            if h.size else 0.0,
            "weight_rel_change": change,
        })
    record: dict[str, Any] = {"method": "scp", "projection": projection, "rank": int(rank), "scale": float(scale),
                              "poolings": poolings, "edits": edits}
    if measure:
        after = pruned_states(adapter, calibration, batch_size)
        record["output_gap_last_token"] = {"before": gap_before,
                                           "after": relative_gap(reference["last"][final], after["last"][-1])}
    return record
