"""Evaluations of pruned models, cached by what determines them.

Two jobs that prune the same model to the same weights evaluate the same network: a scorer whose
removals do not move between calibration draws, ``tail`` in every draw, two scorers that pick the
same layers. The second one reads the first one's metrics and per-question records instead of
evaluating again (logged as a cache hit and recorded in results.json, ``extra.evaluation_reused``).

The key is the unpruned model's reference key (model fingerprint, task config, seed, evaluator code,
library versions) plus what makes the pruned network: the removed layers, a checksum of every
element of the pruned model's weights (it covers compensation such as Short-LVLM's SCP) and the
scorer's ``after_pruning`` record (an edit that changes no weight, e.g. a hook, still changes the key).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from topovlm import samples as job_samples
from topovlm.identity import digest
from topovlm.results import write_json_atomic
from topovlm.storage import entry_lock, inside, read_json, remove_stale_tmp, safe_name

log = logging.getLogger(__name__)

FOLDER = "pruned_eval"


class CachedEvaluation:
    """The task's evaluator, its last evaluation read from the cache: the stored records are what
    ``sample_records`` returns; everything else (directions, protocol) is the evaluator's own."""

    def __init__(self, evaluator: Any, records: list[dict[str, Any]]) -> None:
        self._evaluator = evaluator
        self._records = records

    def sample_records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._records]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._evaluator, name)


def entry(cache: Path, model_name: str, reference_id: dict[str, Any], removed: list[int],
          weights: str, edit: dict[str, Any], scorer: str) -> tuple[Path, dict[str, Any]]:
    """The cache file of one pruned model's evaluation and the identity it is keyed on."""
    key = {**reference_id, "removed": sorted(int(i) for i in removed), "weights": weights,
           "after_pruning": edit, "edited_by": scorer if edit else None}
    root = cache / FOLDER
    return inside(root, root / f"{safe_name(model_name)}-{digest(key)}.json"), key


def evaluate(path: Path, key: dict[str, Any], evaluator: Any, adapter: Any, task: str, *,
             force: bool = False) -> tuple[dict[str, Any], Any, bool]:
    """``(metrics, evaluator, reused)``: the cached evaluation when one exists with its records,
    else ``evaluator.evaluate(adapter)``, stored for the next job. The evaluator returned is the one
    whose records ``samples.jsonl`` reads."""
    with entry_lock(path, "pruned evaluation"):
        remove_stale_tmp(path)
        records_path = job_samples.reference_samples_path(path)
        remove_stale_tmp(records_path)
        cached = None if force else read_json(path, required=("metrics", "identity"))
        if cached is not None and cached["identity"] == key and records_path.is_file():
            log.info("cache hit: evaluation of the same pruned model (%s)", path.name)
            return cached["metrics"], CachedEvaluation(evaluator, job_samples.read_jsonl(records_path)), True
        metrics = evaluator.evaluate(adapter)
        # records first: an entry without them is never read as a hit
        if job_samples.save_reference(path, evaluator, task) is not None:
            write_json_atomic(path, {"metrics": metrics, "identity": key})
        return metrics, evaluator, False
