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
Results are cached on disk per (model, calibration set, N, seed) and per statistic, so a
second scorer needing the same statistics runs no forward pass at all.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from topovlm.registry import Registry
from topovlm.identity import digest
from topovlm.api import POOLINGS, CaptureSpec, StatRequest
from topovlm.storage import atomic_write, discard, entry_lock, remove_stale_tmp

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.data.types import VQASample


@dataclass
class TokenMasks:
    """Boolean ``(B, T)`` masks of one batch: real tokens, vision tokens, text tokens.

    With ``device_map="auto"`` the decoder layers sit on several GPUs while the masks are
    built where the inputs are: hooks ask for ``masks.on(h.device)``, which moves them
    once per batch and device.
    """

    valid: torch.Tensor
    vision: torch.Tensor
    _copies: dict[str, "TokenMasks"] = field(default_factory=dict, repr=False, compare=False)

    def on(self, device: torch.device | str) -> "TokenMasks":
        """These masks on ``device`` (memoised per batch)."""
        key = str(device)
        if key not in self._copies:
            self._copies[key] = TokenMasks(self.valid.to(device), self.vision.to(device))
        return self._copies[key]

    @property
    def text(self) -> torch.Tensor:
        return self.valid & ~self.vision

    @property
    def last_index(self) -> torch.Tensor:
        """Position of the last real token of every row (works for left or right padding)."""
        t = self.valid.shape[1]
        positions = torch.arange(t, device=self.valid.device).expand_as(self.valid)
        return torch.where(self.valid, positions, -1).max(dim=1).values


@dataclass
class LayerCall:
    """What a statistic sees for one decoder layer on one batch."""

    layer: int
    h_in: torch.Tensor  # (B, T, d)
    h_out: torch.Tensor  # (B, T, d)
    masks: TokenMasks
    attention: torch.Tensor | None = None  # (B, heads, T, T) when a statistic asked for it


# ---------------------------------------------------------------- token statistics
# A statistic maps one LayerCall to a per-sample tensor of shape (B,) or (B, k).
# Register new ones in STATISTICS; ``needs_attention`` ones make the capture return
# attention maps for the decoder layers (eager attention during the calibration pass).


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    denom = mask.sum(dim=1).clamp_min(1.0)
    out = (values * mask).sum(dim=1) / denom
    return torch.where(mask.sum(dim=1) > 0, out, torch.full_like(out, float("nan")))


def row_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine in float32; a zero vector gives cosine 1 with itself, 0 otherwise."""
    a = a.float()
    b = b.float()
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def token_cos(call: LayerCall, tokens: str = "all") -> torch.Tensor:
    """Mean over tokens of cos(h_in, h_out); ``tokens`` in {all, text, vision}."""
    mask = {"all": call.masks.valid, "text": call.masks.text, "vision": call.masks.vision}[tokens]
    return _masked_mean(row_cosine(call.h_in, call.h_out), mask)


@dataclass(frozen=True)
class Statistic:
    fn: Callable[..., torch.Tensor]
    needs_attention: bool = False
    description: str = ""


STATISTICS: Registry = Registry("statistic")
STATISTICS.register("token_cos", Statistic(token_cos, description="mean over tokens of cos(h_in, h_out)"))


def register_statistic(name: str, fn: Callable[..., torch.Tensor], needs_attention: bool = False,
                       description: str = "") -> None:
    STATISTICS.register(name, Statistic(fn, needs_attention, description))


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
            for start in tqdm(range(0, len(samples), batch_size), desc="calibration", leave=False):
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


# ---------------------------------------------------------------- disk cache

# config fields that say where a model was read from, not what it is
_LOCATION_KEYS = ("_name_or_path", "_commit_hash", "transformers_version")


def _without_location(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _without_location(v) for k, v in d.items() if k not in _LOCATION_KEYS}
    if isinstance(d, list):
        return [_without_location(v) for v in d]
    return d


def model_fingerprint(adapter: "ModelAdapter") -> str:
    """Identity of the weights and architecture, cheap even for 7B models (strided samples).

    The config enters without the fields that name where it was loaded from
    (``_name_or_path`` etc.), so one model read from two mount points has one fingerprint.
    """
    h = hashlib.sha256()
    h.update(type(adapter.model).__name__.encode())
    config = _without_location(adapter.model.config.to_dict())
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in adapter.model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 256)
            h.update(name.encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _digest(obj: Any) -> str:
    return digest(obj)


def _atomic_save(path: Path, save: Callable[[Path], None]) -> None:
    atomic_write(path, save)


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


#: pooled residual states are stored in half precision: no built-in scorer's ranking changes
#: (bench/results/capture_precision_*.md). Norm outputs (topo's point clouds) stay float32:
#: k-NN graphs are sensitive to ties, and rounding moved topo_llm's scores by up to 8e-3.
POOLED_STORAGE = np.float16


def _as_stored(pooled: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What a fresh capture holds once stored, so a cache hit gives exactly the same numbers."""
    return {k: v.astype(POOLED_STORAGE).astype(np.float32) for k, v in pooled.items()}


class CaptureCache:
    """On-disk cache of captures: ``<root>/<key>/pooled.npz`` + ``meta.json`` + one ``.npy``
    per statistic.

    ``key`` identifies everything a capture depends on (see :meth:`key`); statistics missing
    from the cache are computed together in one forward pass and added. One process at a
    time fills an entry (a lock next to it); an unreadable or inconsistent file is logged
    with its path, discarded and recomputed; temporary files of killed writers are removed.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.forward_passes = 0  # how many calibration passes this cache object triggered
        self.last_hit = False  # whether the last get() ran no forward pass

    @staticmethod
    def key(model_id: str, calibration_id: str, **identity: Any) -> str:
        """``identity``: anything else the arrays depend on (batch size, code, versions)."""
        return digest({"model": model_id, "calibration": calibration_id, **identity})

    def _load(self, folder: Path, spec: CaptureSpec) -> tuple[Capture | None, list[StatRequest], bool]:
        """What the entry holds (None if its base is missing or corrupt), the missing statistics
        and whether the norm outputs are asked for but missing."""
        meta_file, pooled_file = folder / "meta.json", folder / "pooled.npz"
        if not (meta_file.is_file() and pooled_file.is_file()):
            if folder.is_dir() and any(folder.iterdir()):  # statistics without their base are unusable
                shutil.rmtree(folder, ignore_errors=True)
            return None, list(spec.stats), spec.norms
        try:
            meta = json.loads(meta_file.read_text())
            n_layers, n = int(meta["num_layers"]), len(meta["sample_ids"])
            with np.load(pooled_file, allow_pickle=False) as z:
                pooled = {k: z[k].astype(np.float32) for k in z.files}
            bad = [p for p in POOLINGS if p not in pooled or pooled[p].shape[:2] != (n_layers + 1, n)]
            if bad:
                raise ValueError(f"pooled arrays {bad} missing or not ({n_layers + 1}, {n}, d)")
        except Exception as err:  # noqa: BLE001 - JSONDecodeError, BadZipFile, EOFError, KeyError, ...
            discard(folder, f"{type(err).__name__}: {err} (in {meta_file.name} / {pooled_file.name})")
            return None, list(spec.stats), spec.norms
        stats, missing = {}, []
        for r in spec.stats:
            f = folder / f"stat-{digest(r.key)}.npy"
            if not f.is_file():
                missing.append(r)
                continue
            try:
                arr = np.load(f, allow_pickle=False)
                if arr.shape[:2] != (n_layers, n):
                    raise ValueError(f"shape {arr.shape}, expected ({n_layers}, {n}, ...)")
                stats[r.key] = arr
            except Exception as err:  # noqa: BLE001 - an unreadable or malformed cache file is discarded and recomputed
                discard(f, err)
                missing.append(r)
        norms: dict[str, np.ndarray] = {}
        need_norms = False
        norms_file = folder / "norms.npz"
        if spec.norms and not norms_file.is_file():
            need_norms = True
        elif spec.norms:
            try:
                with np.load(norms_file, allow_pickle=False) as z:
                    norms = {k: z[k] for k in z.files}
                if any(v.shape[:2] != (n_layers + 1, n) for v in norms.values()):
                    raise ValueError(f"norm arrays not ({n_layers + 1}, {n}, d)")
            except Exception as err:  # noqa: BLE001 - an unreadable or malformed cache file is discarded and recomputed
                discard(norms_file, err)
                norms, need_norms = {}, True
        capture = Capture(n_layers, meta["sample_ids"], meta["domains"], pooled, stats, meta["meta"], norms=norms)
        return capture, missing, need_norms

    def get(
        self,
        key: str,
        adapter_fn: Callable[[], "ModelAdapter"],
        samples_fn: "Callable[[], list[VQASample]]",
        spec: CaptureSpec,
        batch_size: int = 16,
    ) -> Capture:
        folder = self.root / key
        with entry_lock(folder, "capture"):
            remove_stale_tmp(folder)
            cached, missing, need_norms = self._load(folder, spec)
            self.last_hit = cached is not None and not missing and not need_norms
            if self.last_hit:
                return cached
            todo = CaptureSpec(tuple(missing), norms=need_norms) if cached is not None else spec
            self.forward_passes += 1
            fresh = run_capture(adapter_fn(), samples_fn(), todo, batch_size)
            fresh.pooled = _as_stored(fresh.pooled)
            folder.mkdir(parents=True, exist_ok=True)
            for r in todo.stats:
                atomic_write(folder / f"stat-{digest(r.key)}.npy", lambda p, a=fresh.stats[r.key]: _save_npy(p, a))
            if fresh.norms:  # its own file: an older entry without it needs a pass for just that
                atomic_write(folder / "norms.npz", lambda p: _save_npz(p, fresh.norms))
            if cached is None:
                atomic_write(folder / "pooled.npz",
                             lambda p: _save_npz(p, {k: v.astype(POOLED_STORAGE) for k, v in fresh.pooled.items()}))
                meta = {"num_layers": fresh.num_layers, "sample_ids": fresh.sample_ids,
                        "domains": fresh.domains, "meta": fresh.meta}
                atomic_write(folder / "meta.json", lambda p: p.write_text(json.dumps(meta)))  # last: the entry exists
                return Capture(fresh.num_layers, fresh.sample_ids, fresh.domains, fresh.pooled,
                               {r.key: fresh.stats[r.key] for r in spec.stats}, fresh.meta, norms=fresh.norms)
            cached.stats.update(fresh.stats)
            if fresh.norms:
                cached.norms = fresh.norms
            return cached
