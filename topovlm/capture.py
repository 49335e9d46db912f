"""Calibration capture: one forward pass that records what every scorer needs.

Forward hooks on the decoder layers see each layer's input ``h_in[l]`` and output
``h_out[l] = h_in[l+1]``. Inside the hook we reduce immediately, per sample:

* pooled residual states (``last`` token, ``text_mean``, ``vision_mean``) at every
  layer boundary, stored as ``(L+1, N, d)`` arrays, index ``l`` = input of layer ``l``;
* token-level statistics requested by scorers (``STATISTICS``), e.g. the mean over
  tokens of ``cos(h_in, h_out)``, stored as ``(L, N)`` arrays;
* on request (``CaptureSpec.norms``), the same poolings of each layer's post-attention
  norm output and of the final norm's output, ``(L+1, N, d)``: hooks on the norms.

Nothing token-sized outlives a hook call, so memory is O(L * N * d), not O(L * N * T * d).
Extra hooks change no number of the forward: a pass that records more than a scorer asked
for gives that scorer exactly what its own pass would (the sweep's union pass relies on it).
A statistic that reads attention maps switches the pass to eager attention, which does change
the states in the last bits (:func:`needs_attention`): such passes are kept apart.
The statistics themselves: :mod:`topovlm.token_stats`; the on-disk cache of captures (a
second scorer needing the same statistics runs no forward pass at all):
:mod:`topovlm.capture_cache`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
from topovlm.progress import bar

from topovlm.api import POOLINGS, CaptureSpec, StatRequest
from topovlm.token_stats import STATISTICS, LayerCall, TokenMasks

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.data.types import VQASample


# ---------------------------------------------------------------- the capture object


@dataclass
class Capture:
    """Calibration statistics of one model on one calibration set.

    ``pooled[p]``: ``(L+1, N, d)`` float32, index ``l`` = input of layer ``l`` and
    ``L`` = output of the last layer, for each pooling ``p`` in ``POOLINGS``
    (``vision_mean`` is NaN for samples without vision tokens).
    ``stats[key]``: ``(L, N)`` or ``(L, N, k)`` arrays keyed by ``StatRequest.key``.
    ``norms[p]``: ``(L+1, N, d)`` when requested, index ``l < L`` = output of layer ``l``'s
    post-attention norm, ``L`` = output of the final norm.
    """

    num_layers: int
    sample_ids: list[str]
    domains: list[str]
    pooled: dict[str, np.ndarray]
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    norms: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return len(self.sample_ids)

    def h_in(self, pooling: str = "last") -> np.ndarray:
        """``(L, N, d)``: pooled input of every layer."""
        return self._pool(pooling)[:-1]

    def h_out(self, pooling: str = "last") -> np.ndarray:
        """``(L, N, d)``: pooled output of every layer."""
        return self._pool(pooling)[1:]

    def norm_out(self, pooling: str = "last") -> np.ndarray:
        """``(L+1, N, d)``: pooled post-attention-norm outputs of every layer, then the final norm's."""
        if not self.norms:
            raise KeyError("norm outputs were not captured (CaptureSpec(norms=True) records them)")
        if pooling not in self.norms:
            raise KeyError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
        return self.norms[pooling]

    def stat(self, request: StatRequest | str) -> np.ndarray:
        key = request if isinstance(request, str) else request.key
        try:
            return self.stats[key]
        except KeyError:
            raise KeyError(f"statistic {key!r} was not captured; captured: {sorted(self.stats)}") from None

    def _pool(self, pooling: str) -> np.ndarray:
        if pooling not in self.pooled:
            raise KeyError(f"unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}")
        return self.pooled[pooling]

    def subset(self, indices: list[int] | np.ndarray) -> "Capture":
        """The same capture restricted to some samples (e.g. one domain)."""
        idx = np.asarray(indices, dtype=int)
        return Capture(
            num_layers=self.num_layers,
            sample_ids=[self.sample_ids[i] for i in idx],
            domains=[self.domains[i] for i in idx],
            pooled={k: v[:, idx] for k, v in self.pooled.items()},
            stats={k: v[:, idx] for k, v in self.stats.items()},
            meta=dict(self.meta),
            norms={k: v[:, idx] for k, v in self.norms.items()},
        )


# ---------------------------------------------------------------- the forward pass


def needs_attention(spec: CaptureSpec) -> bool:
    """Whether the pass recording ``spec`` runs eager attention (a statistic reads attention maps).

    Eager and the default (sdpa) attention give states that differ in the last bits, so such a
    pass has its own cache entry and records only with other passes that need attention."""
    return any(r.name in STATISTICS and STATISTICS[r.name].needs_attention for r in spec.stats)


def pool_states(h: torch.Tensor, masks: TokenMasks) -> dict[str, torch.Tensor]:
    """Every pooling of ``h`` (B, T, d) as float32 CPU tensors (B, d), with ``masks`` on
    ``h``'s device (which may differ from the inputs' under a device map: ``masks.on``)."""
    h = h.float()
    rows = torch.arange(h.shape[0], device=h.device)
    out = {"last": h[rows, masks.last_index].cpu()}
    for name, mask in (("text_mean", masks.text), ("vision_mean", masks.vision)):
        w = mask.to(h.dtype).unsqueeze(-1)
        count = w.sum(dim=1)
        mean = (h * w).sum(dim=1) / count.clamp_min(1.0)
        out[name] = torch.where(count > 0, mean, torch.full_like(mean, float("nan"))).cpu()
    return out


class _Recorder:
    """Forward hooks that reduce each layer's input/output on the fly."""

    def __init__(self, adapter: "ModelAdapter", requests: list[StatRequest], norms: bool = False) -> None:
        self.adapter = adapter
        self.requests = requests
        self.record_norms = norms
        self.needs_attention = any(STATISTICS[r.name].needs_attention for r in requests)
        n = adapter.num_layers
        self.pooled: dict[str, list[list[torch.Tensor]]] = {p: [[] for _ in range(n + 1)] for p in POOLINGS}
        self.stats: dict[str, list[list[torch.Tensor]]] = {r.key: [[] for _ in range(n)] for r in requests}
        self.norms: dict[str, list[list[torch.Tensor]]] = {p: [[] for _ in range(n + 1)] for p in POOLINGS} if norms else {}
        self.masks: TokenMasks | None = None
        self._attention: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _pool(self, boundary: int, h: torch.Tensor) -> None:
        assert self.masks is not None
        for name, value in pool_states(h, self.masks.on(h.device)).items():  # the layer's device
            self.pooled[name][boundary].append(value)

    def _norm_hook(self, index: int) -> Callable[..., None]:
        """Pools a norm's output into ``norms[.][index]`` (index L: the final norm)."""
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            assert self.masks is not None
            h = output[0] if isinstance(output, (tuple, list)) else output
            for name, value in pool_states(h, self.masks.on(h.device)).items():
                self.norms[name][index].append(value)

        return hook

    def _layer_hook(self, index: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            # accelerate moves a layer's input to its device inside forward: the hook may see
            # the previous layer's device for h_in
            h_in = h_in.to(h_out.device)
            if index == 0:
                self._pool(0, h_in)
            self._pool(index + 1, h_out)
            if self.requests:
                assert self.masks is not None
                attention = self._attention.pop(index, None)
                if self.needs_attention and attention is None:
                    raise RuntimeError(
                        f"decoder layer {index}: self_attn returned no attention weights although a "
                        "statistic needs them (the attention implementation must be eager)"
                    )
                call = LayerCall(index, h_in, h_out, self.masks.on(h_out.device), attention)
                for r in self.requests:
                    value = STATISTICS[r.name].fn(call, **dict(r.params))
                    self.stats[r.key][index].append(value.float().cpu())

        return hook

    def _attention_hook(self, index: int) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if isinstance(output, (tuple, list)) and len(output) > 1 and output[1] is not None:
                self._attention[index] = output[1]

        return hook

    def __enter__(self) -> "_Recorder":
        for i, layer in enumerate(self.adapter.decoder_layers()):
            self._handles.append(layer.register_forward_hook(self._layer_hook(i), with_kwargs=True))
            if self.needs_attention:
                attn = getattr(layer, "self_attn", None)
                if attn is None:
                    raise AttributeError(f"decoder layer {i} has no self_attn module to read attention from")
                self._handles.append(attn.register_forward_hook(self._attention_hook(i)))
        if self.record_norms:
            norms = self.adapter.post_attention_norms() + [self.adapter.final_norm()]
            for i, module in enumerate(norms):
                self._handles.append(module.register_forward_hook(self._norm_hook(i)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def run_capture(
    adapter: "ModelAdapter",
    samples: "list[VQASample]",
    spec: CaptureSpec = CaptureSpec(),
    batch_size: int = 16,
    attention_budget_bytes: int | None = None,
    lean: bool = True,
) -> Capture:
    """One forward pass over the calibration samples (prompts only, no answers).

    With an attention statistic, a batch whose attention maps would exceed
    ``attention_budget_bytes`` (default :data:`ATTENTION_BUDGET_BYTES`) runs in smaller
    chunks (see :func:`attention_chunk_size`); results do not depend on the chunking.
    ``lean=False`` computes full-vocabulary logits as a plain forward would (for benchmarks).
    """
    requests = list(spec.stats)
    for r in requests:
        if r.name not in STATISTICS:
            raise KeyError(f"unknown statistic {r.name!r}; available: {', '.join(sorted(STATISTICS))}")
    recorder = _Recorder(adapter, requests, norms=spec.norms)
    # the hooks read the decoder's hidden states: the LM head runs on one position only,
    # not on every token (full-vocabulary logits of a batch were GBs at LLaVA-NeXT lengths)
    forward_kwargs: dict[str, Any] = {"logits_to_keep": 1} if lean else {}
    restore_attn = None
    if recorder.needs_attention:
        # Eager attention modules return their weights as output[1], where the hook on
        # ``self_attn`` reads them; ``output_attentions`` is not passed, so the model does
        # not also collect every layer's (B, heads, T, T) map until the forward ends.
        restore_attn = _use_eager_attention(adapter)
    try:
        with recorder:
            for start in bar(range(0, len(samples), batch_size), "calibration", leave=False):
                for batch, inputs in _batches(adapter, samples[start:start + batch_size], recorder.needs_attention,
                                              attention_budget_bytes):
                    valid = inputs["attention_mask"].bool()
                    recorder.masks = TokenMasks(valid=valid, vision=adapter.vision_mask(inputs["input_ids"]) & valid)
                    adapter.forward(inputs, **forward_kwargs)
    finally:
        if restore_attn is not None:
            restore_attn()
    pooled = {p: np.stack([torch.cat(b).numpy() for b in recorder.pooled[p]]) for p in POOLINGS}
    stats = {k: np.stack([torch.cat(b).numpy() for b in v]) for k, v in recorder.stats.items()}
    norms = {p: np.stack([torch.cat(b).numpy() for b in v]) for p, v in recorder.norms.items()}
    return Capture(
        num_layers=adapter.num_layers,
        sample_ids=[s.id for s in samples],
        domains=[s.domain for s in samples],
        pooled=pooled,
        stats=stats,
        meta={"model": adapter.name, "has_vision": bool(np.isfinite(pooled["vision_mean"]).any())},
        norms=norms,
    )


#: bound on one layer's attention maps of a calibration chunk, (B, heads, T, T) in float32:
#: eager attention holds about this much (weights and their softmax input) per layer at once
ATTENTION_BUDGET_BYTES = 1 << 30


def attention_chunk_size(batch: int, heads: int, tokens: int, budget_bytes: int) -> int:
    """The largest chunk of ``batch`` rows whose (rows, heads, T, T) float32 maps fit the budget (>= 1)."""
    per_row = heads * tokens * tokens * 4
    return max(1, min(batch, budget_bytes // max(per_row, 1)))


def _batches(adapter: "ModelAdapter", batch: "list[VQASample]", needs_attention: bool,
             budget_bytes: int | None) -> "Iterator[tuple[list[VQASample], dict[str, Any]]]":
    """``batch`` as one set of inputs, or in chunks when its attention maps would not fit."""
    inputs = adapter.build_inputs(batch)
    if not needs_attention:
        yield batch, inputs
        return
    heads = int(getattr(adapter.text_config(), "num_attention_heads", 1))
    size = attention_chunk_size(len(batch), heads, inputs["input_ids"].shape[1],
                                ATTENTION_BUDGET_BYTES if budget_bytes is None else budget_bytes)
    if size >= len(batch):
        yield batch, inputs
        return
    del inputs
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        yield chunk, adapter.build_inputs(chunk)


def _use_eager_attention(adapter: "ModelAdapter") -> Callable[[], None]:
    """Switch the language model (only it) to eager attention, the one that returns weights.

    A multimodal model keeps its vision tower's implementation: only the sub-config that
    is the adapter's text config is switched. Returns a function restoring what was set.
    """
    model = adapter.model
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None:
        raise RuntimeError("this transformers version cannot switch attention implementations at run time")
    text_config = adapter.text_config()
    previous = getattr(text_config, "_attn_implementation", None) or "eager"
    sub_key = next((k for k in getattr(model.config, "sub_configs", {})
                    if getattr(model.config, k, None) is text_config), None)
    if sub_key is None:  # a text-only model: its own config is the text config
        setter("eager")
        return lambda: setter(previous)
    setter({sub_key: "eager"})
    return lambda: setter({sub_key: previous})
