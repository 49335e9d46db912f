"""One model load per sweep process: jobs that use the same model reuse it.

Hydra's default launcher runs every job of a multirun in one process. :data:`POOL` keeps the
last loaded adapter, keyed by the job's resolved ``model`` config; when a job ends,
:meth:`ModelPool.release` undoes its pruning (the original decoder layers, their cache
indices and the per-layer config fields) and checks the weights against a fingerprint
taken at load: a job that edited weights (e.g. ``short_lvlm``'s subspace compensation)
leaves a model that is dropped, so the next job loads a fresh one. Launchers that run jobs
in separate processes (joblib, SLURM) load once per job, as before. ``reuse_model=false``
switches it off.
"""
from __future__ import annotations

import copy
import gc
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

_PER_LAYER_FIELDS = ("num_hidden_layers", "layer_types", "no_rope_layers", "max_window_layers")


@dataclass
class _Entry:
    key: str
    adapter: Any
    layers: list[Any]  # the original decoder layer modules, in order
    layer_idx: list[list[tuple[Any, int]]]  # per layer: (module, its layer_idx)
    config: dict[str, Any]
    fingerprint: str
    in_use: bool = False
    loads: int = field(default=1)


class ModelPool:
    def __init__(self) -> None:
        self._entry: _Entry | None = None
        self.loads = 0  # how many times a model was loaded (tests, benchmarks)
        self.reuses = 0

    @staticmethod
    def key(model_cfg: Any) -> str:
        from omegaconf import OmegaConf

        data = OmegaConf.to_container(model_cfg, resolve=True) if not isinstance(model_cfg, dict) else model_cfg
        return json.dumps(data, sort_keys=True, default=str)

    def acquire(self, model_cfg: Any, load: Callable[[Any], Any], reuse: bool = True) -> Any:
        """The adapter for ``model_cfg``: the pooled one (restored) or a fresh load."""
        from topovlm.capture import model_fingerprint

        key = self.key(model_cfg)
        entry = self._entry
        if reuse and entry is not None and entry.key == key and not entry.in_use:
            entry.in_use = True
            self.reuses += 1
            log.info("model reused from this process (loaded once, %d jobs so far)", self.reuses + 1)
            return entry.adapter
        self.clear()
        adapter = load(model_cfg)
        self.loads += 1
        if reuse:
            layers = list(adapter.decoder_layers())
            text_config = adapter.text_config()
            self._entry = _Entry(
                key=key, adapter=adapter, layers=layers,
                layer_idx=[[(m, m.layer_idx) for m in layer.modules() if hasattr(m, "layer_idx")] for layer in layers],
                config={f: copy.deepcopy(getattr(text_config, f)) for f in _PER_LAYER_FIELDS if hasattr(text_config, f)},
                fingerprint=model_fingerprint(adapter), in_use=True)
        return adapter

    def release(self, adapter: Any) -> None:
        """Undo the job's pruning; keep the model only if its weights are the loaded ones."""
        from torch import nn

        from topovlm.capture import model_fingerprint

        entry = self._entry
        if entry is None or entry.adapter is not adapter:
            return
        entry.in_use = False
        adapter.set_decoder_layers(nn.ModuleList(entry.layers))
        for per_layer in entry.layer_idx:
            for module, idx in per_layer:
                module.layer_idx = idx
        text_config = adapter.text_config()
        for f, value in entry.config.items():
            setattr(text_config, f, copy.deepcopy(value))
        adapter.kept_layers = list(range(len(entry.layers)))
        adapter.model.eval()
        if model_fingerprint(adapter) != entry.fingerprint:
            log.info("the job edited the model's weights: it is not reused (the next job loads it again)")
            self.clear()

    def clear(self) -> None:
        self._entry = None
        gc.collect()


POOL = ModelPool()
