"""The on-disk cache of calibration captures, keyed by the model's fingerprint.

:class:`CaptureCache` stores each capture under ``<root>/<key>/`` (pooled states, one file
per statistic, meta.json) and runs :func:`topovlm.capture.run_capture` only for what is
missing; :func:`model_fingerprint` identifies a model's weights and architecture.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from topovlm.api import POOLINGS, CaptureSpec, StatRequest
import topovlm.capture as capture_module  # run_capture through the module: tests patch it there
from topovlm.capture import Capture
from topovlm.identity import digest
from topovlm.storage import atomic_write, discard, entry_lock, remove_stale_tmp

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.data.types import VQASample


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
            fresh = capture_module.run_capture(adapter_fn(), samples_fn(), todo, batch_size)
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
