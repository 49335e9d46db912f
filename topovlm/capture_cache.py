"""The on-disk cache of calibration captures, keyed by the model's fingerprint.

:class:`CaptureCache` stores each capture under ``<root>/<key>/`` (pooled states, one file
per statistic, meta.json, passes.json) and runs :func:`topovlm.capture.run_capture` only for
what is missing; :func:`model_fingerprint` identifies a model's weights and architecture.

One pass per sweep: at sweep start ``topovlm.callbacks.SweepGuard`` writes
``<sweep dir>/capture_plan.json``, every swept scorer's :class:`CaptureSpec` per model and
calibration set (:func:`capture_plan`). The first job that needs a pass records the union of
those specs (:func:`planned_union`); every other scorer's capture is then read from that entry,
holding exactly the fields it asked for (extra hooks change no number of the forward). Passes
with eager attention (a statistic reading attention maps) are kept apart: their states differ
from the default attention's in the last bits. The plan only decides what a pass records,
never what a capture holds: without it (a single run, another sweeper) each scorer records
its own fields.

:class:`CalibrationSamples`: the calibration set decoded once per process, keyed by its config
and the bytes of its files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
import torch

from topovlm.api import POOLINGS, CaptureSpec, StatRequest
import topovlm.capture as capture_module  # run_capture through the module: tests patch it there
from topovlm.capture import Capture, needs_attention
from topovlm.identity import digest, samples_digest
from topovlm.storage import atomic_write, atomic_write_text, discard, entry_lock, read_json, remove_stale_tmp
from topovlm.token_stats import STATISTICS

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from topovlm.adapters.base import ModelAdapter
    from topovlm.api import LayerScorer
    from topovlm.data.types import VQASample

log = logging.getLogger(__name__)


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


def _stat_file(folder: Path, request: StatRequest) -> Path:
    return folder / f"stat-{digest(request.key)}.npy"


#: an entry's index: which pass recorded which fields, for which scorers. For reading and for
#: the log line of a hit; a lookup trusts the array files themselves.
PASSES_FILE = "passes.json"


class CaptureCache:
    """On-disk cache of captures: ``<root>/<key>/pooled.npz`` + ``meta.json`` + one ``.npy``
    per statistic (+ ``norms.npz``) + ``passes.json``.

    ``key`` identifies everything a capture depends on (see :meth:`key`); statistics missing
    from the cache are computed together in one forward pass and added. One process at a
    time fills an entry (a lock next to it); an unreadable or inconsistent file is logged
    with its path, discarded and recomputed; temporary files of killed writers are removed.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.forward_passes = 0  # how many calibration passes this cache object triggered
        self.last_hit = False  # whether the last get() ran no forward pass
        #: after a hit whose every field a union pass recorded: the scorers that pass recorded for
        self.last_union: list[str] | None = None

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
            f = _stat_file(folder, r)
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
        *,
        record: CaptureSpec | None = None,
        recorded_for: Sequence[str] = (),
    ) -> Capture:
        """The capture ``spec`` asks for. A pass runs only when a field of ``spec`` is missing;
        it then also records what ``record`` (the sweep's union: :func:`planned_union`) adds
        and the entry lacks, so that the sweep's other scorers need no pass. ``recorded_for``:
        the scorers the pass records for (``passes.json``). The capture returned holds exactly
        ``spec``'s fields, whatever the entry holds: what the scorer's own pass gives."""
        folder = self.root / key
        wanted = spec | record if record is not None else spec
        with entry_lock(folder, "capture"):
            remove_stale_tmp(folder)
            cached, missing, need_norms = self._load(folder, spec)
            self.last_hit = cached is not None and not missing and not need_norms
            self.last_union = None
            if cached is not None and self.last_hit:
                self.last_union = _union_source(folder, spec)
                return cached
            if cached is None:
                todo = wanted
            else:  # what the scorer lacks, and what the union adds that the entry does not hold yet
                extra = [r for r in wanted.stats if r not in spec.stats and not _stat_file(folder, r).is_file()]
                todo = CaptureSpec(tuple(missing + extra),
                                   norms=need_norms or (wanted.norms and not (folder / "norms.npz").is_file()))
            self.forward_passes += 1
            fresh = capture_module.run_capture(adapter_fn(), samples_fn(), todo, batch_size)
            fresh.pooled = _as_stored(fresh.pooled)
            folder.mkdir(parents=True, exist_ok=True)
            for r in todo.stats:
                atomic_write(_stat_file(folder, r), lambda p, a=fresh.stats[r.key]: _save_npy(p, a))
            if fresh.norms:  # its own file: an older entry without it needs a pass for just that
                atomic_write(folder / "norms.npz", lambda p: _save_npz(p, fresh.norms))
            _add_pass(folder, todo, pooled=cached is None, recorded_for=recorded_for)
            if cached is None:
                atomic_write(folder / "pooled.npz",
                             lambda p: _save_npz(p, {k: v.astype(POOLED_STORAGE) for k, v in fresh.pooled.items()}))
                meta = {"num_layers": fresh.num_layers, "sample_ids": fresh.sample_ids,
                        "domains": fresh.domains, "meta": fresh.meta}
                atomic_write(folder / "meta.json", lambda p: p.write_text(json.dumps(meta)))  # last: the entry exists
                return Capture(fresh.num_layers, fresh.sample_ids, fresh.domains, fresh.pooled,
                               {r.key: fresh.stats[r.key] for r in spec.stats}, fresh.meta,
                               norms=fresh.norms if spec.norms else {})
            cached.stats.update({r.key: fresh.stats[r.key] for r in missing})
            if need_norms:
                cached.norms = fresh.norms
            return cached


def _read_passes(folder: Path) -> list[dict[str, Any]]:
    data = read_json(folder / PASSES_FILE, required=("passes",))  # a corrupt index is logged and removed
    passes = data.get("passes") if data is not None else None
    return passes if isinstance(passes, list) else []


def _add_pass(folder: Path, todo: CaptureSpec, *, pooled: bool, recorded_for: Sequence[str]) -> None:
    """Adds to the entry's index what one pass recorded, and for which scorers (under the entry's lock)."""
    fields = (["pooled"] if pooled else []) + [r.key for r in todo.stats] + (["norms"] if todo.norms else [])
    passes = [] if pooled else _read_passes(folder)  # a new entry starts a new index
    passes.append({"recorded": fields, "for": list(recorded_for)})
    atomic_write_text(folder / PASSES_FILE, json.dumps({"passes": passes}, indent=1))


def _union_source(folder: Path, spec: CaptureSpec) -> list[str] | None:
    """The scorers of the union pass(es) that recorded every field ``spec`` reads; None when a
    field was recorded for one scorer alone, or the entry has no index (made by older code)."""
    recorded_by: dict[str, dict[str, Any]] = {}
    for p in _read_passes(folder):  # a later pass replaces a field (a corrupt file recomputed)
        for name in p.get("recorded", []):
            recorded_by[name] = p
    sources = [recorded_by.get(f) for f in ("pooled", *(r.key for r in spec.stats), *(("norms",) if spec.norms else ()))]
    if any(s is None or len(s.get("for", [])) < 2 for s in sources):
        return None
    return sorted({name for s in sources if s is not None for name in s["for"]})


# ---------------------------------------------------------------- the sweep's union pass

#: in the sweep dir: every swept scorer's capture spec per model and calibration set
PLAN_FILE = "capture_plan.json"


def spec_json(spec: CaptureSpec) -> dict[str, Any]:
    return {"stats": [{"name": r.name, "params": dict(r.params)} for r in spec.stats], "norms": spec.norms}


def _frozen(value: Any) -> Any:
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def spec_from_json(data: dict[str, Any]) -> CaptureSpec:
    stats = tuple(StatRequest.make(r["name"], **{k: _frozen(v) for k, v in r["params"].items()})
                  for r in data["stats"])
    return CaptureSpec(stats, norms=bool(data["norms"]))


def capture_group(cfg: "DictConfig") -> str | None:
    """What says before any model loads that two jobs read one capture entry: the model config,
    the calibration config and the cache dir (None when they do not resolve)."""
    from omegaconf import OmegaConf

    try:
        return digest({"model": OmegaConf.to_container(cfg.model, resolve=True),
                       "calibration": OmegaConf.to_container(cfg.calibration, resolve=True),
                       "cache_dir": str(cfg.cache_dir)})
    except Exception:  # noqa: BLE001 - an interpolation that does not resolve here: no shared pass for it
        return None


def capture_plan(jobs: Iterable[tuple["DictConfig", "LayerScorer"]]) -> dict[str, Any]:
    """Every swept scorer's capture spec, per group of jobs that read one capture entry
    (:func:`capture_group`): what ``capture_plan.json`` holds."""
    from topovlm.data.sources import dataset_id

    groups: dict[str, dict[str, Any]] = {}
    for cfg, scorer in jobs:
        group, spec = capture_group(cfg), scorer.capture_spec()
        # a spec that would not read back the same (a parameter JSON cannot hold) stays out: its
        # job records its own fields
        if group is None or spec_from_json(json.loads(json.dumps(spec_json(spec), default=str))) != spec:
            continue
        cal = cfg.calibration
        entry = groups.setdefault(group, {"model": str(cfg.model.name),
                                          "calibration": dataset_id(cal.dataset, cal.n, cal.seed),
                                          "cache_dir": str(cfg.cache_dir), "scorers": []})
        planned = {"scorer": scorer.name, "spec": spec_json(spec), "eager_attention": needs_attention(spec)}
        if planned not in entry["scorers"]:
            entry["scorers"].append(planned)
    return {"groups": groups}


def write_capture_plan(sweep_dir: str | Path, plan: dict[str, Any]) -> Path:
    return atomic_write_text(Path(sweep_dir) / PLAN_FILE, json.dumps(plan, indent=1))


def planned_union(sweep_dir: str | Path | None, cfg: "DictConfig", own: CaptureSpec,
                  scorer: str) -> tuple[CaptureSpec, list[str]] | None:
    """What a pass of this job records: its scorer's ``own`` spec and every spec the sweep's plan
    lists for the same model and calibration set with the same attention (eager or not), and
    the scorers they are for; None without a plan for this job."""
    if sweep_dir is None:
        return None
    path = Path(sweep_dir) / PLAN_FILE
    plan = read_json(path, required=("groups",))
    group = capture_group(cfg)
    entry = plan["groups"].get(group) if plan is not None and group is not None else None
    if not entry:
        return None
    union, names, eager = own, [], needs_attention(own)
    try:
        for planned in entry["scorers"]:
            spec = spec_from_json(planned["spec"])
            # a statistic this process does not know (its scorer's module registers it) stays its own job's
            if any(r.name not in STATISTICS for r in spec.stats) or needs_attention(spec) != eager:
                continue
            union, names = union | spec, names + [str(planned["scorer"])]
    except (KeyError, TypeError, AttributeError) as err:
        log.warning("%s: unreadable plan entry (%s: %s); this job records its own capture only",
                    path, type(err).__name__, err)
        return None
    return union, list(dict.fromkeys(names + [scorer]))


# ---------------------------------------------------------------- calibration samples, decoded once per process


class SampleList(list):
    """Samples with the digest of what a model sees of them (:func:`topovlm.identity.samples_digest`)."""

    digest: str = ""

    def copy(self) -> "SampleList":
        out = SampleList(self)
        out.digest = self.digest
        return out


def content_digest(samples: Sequence[Any]) -> str:
    """The samples' content digest: the one a :class:`SampleList` carries, else computed."""
    if isinstance(samples, SampleList) and samples.digest:
        return samples.digest
    return samples_digest(samples)


def source_files_digest(ds: Any) -> str | None:
    """Digest of the names and bytes of every file under a local ``dataset.path`` (a file or a
    folder, hidden files such as locks left out); None when the source has no local files
    (generated data, a hub id, a task's documents)."""
    if not ds.path:
        return None
    root = Path(str(ds.path)).expanduser()
    if not root.exists():
        return None
    files = [root] if root.is_file() else sorted(
        f for f in root.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(root).parts))
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root) if f != root else f.name}\0".encode())
        with open(f, "rb") as handle:
            h.update(hashlib.file_digest(handle, "sha256").digest())
    return h.hexdigest()[:16]


class CalibrationSamples:
    """The calibration sets this process decoded (the last ``keep``), so a sweep's jobs decode
    and hash their set once. Keyed by the dataset config (source, version, split, path, options,
    n, seed) and the bytes of its files (:func:`source_files_digest`): an edited file is read
    again. Each call returns a list of its own (the samples themselves are shared)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.loads = 0  # how many sets this memo decoded
        self._sets: OrderedDict[str, SampleList] = OrderedDict()

    def get(self, ds: Any, n: int | None, seed: int) -> SampleList:
        from topovlm.data.sources import dataset_id, load_samples

        identity = {"dataset": dataset_id(ds, n, seed), "files": source_files_digest(ds)}
        key = digest(identity)
        held = self._sets.get(key)
        if held is not None:
            self._sets.move_to_end(key)
            # the process's memo, not the cache dir: said apart from the disk cache's "cache hit" lines
            log.debug("calibration samples reused, decoded earlier in this process (keyed on dataset=%s, "
                      "files=%s; content %s)", identity["dataset"], identity["files"], held.digest)
            return held.copy()
        self.loads += 1
        samples = SampleList(load_samples(ds, n=n, seed=seed))
        samples.digest = samples_digest(samples)
        self._sets[key] = samples
        while len(self._sets) > self.keep:
            self._sets.popitem(last=False)
        return samples.copy()

    def clear(self) -> None:
        self._sets.clear()


#: the process's memo, read by ``topovlm.runner.calibration_samples``
CALIBRATION_SAMPLES = CalibrationSamples()
