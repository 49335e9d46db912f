"""``dataset.source=lmms_task``: calibration documents drawn from an lmms-eval task."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from topovlm.data.sources import seeded_subset
from topovlm.data.types import VQASample


def load_task_documents(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    """Documents of an lmms-eval task, prompted exactly as the task prompts them.

    ``options.task`` names the task (``options.dataset_path`` replaces its dataset, e.g. a
    local copy); ``options.exclude_first`` skips the documents an
    evaluation with ``task.limit`` reads (lmms-eval evaluates the first ``limit`` ones), so a
    calibration set drawn here is disjoint from the evaluated documents; ``options.data_dir``
    (default: the harness cache) holds the tasks' processed documents that are cached
    (:mod:`topovlm.evaluation.lmms_tasks.doc_cache`: GQA's).
    """
    from lmms_eval.tasks import get_task_dict

    from topovlm.evaluation.lmms import leaf_task_configs, task_manager
    from topovlm.evaluation.lmms_tasks.doc_cache import with_cached_docs

    opts = dict(ds.options or {})
    name = str(opts["task"])
    spec = {"task": name, "dataset_path": str(opts["dataset_path"])} if opts.get("dataset_path") else name
    tm = task_manager([name], opts.get("model_name", "llava_hf"))
    # GQA's documents mapped once (options.data_dir, else the harness cache), as the evaluator's
    spec = with_cached_docs([spec], leaf_task_configs(tm, [spec]), _data_dir(opts))[0]
    task = get_task_dict([spec], tm)[name]
    docs = task.test_docs() if task.has_test_docs() else task.validation_docs()
    first = int(opts.get("exclude_first") or 0)
    indices = seeded_subset(list(range(first, len(docs))), n, seed, f"lmms-eval task {name!r}")
    out = []
    for i in indices:
        doc = docs[int(i)]
        visuals = [v for v in (task.doc_to_visual(doc) or []) if hasattr(v, "convert")]
        image = visuals[0].convert("RGB") if visuals else None
        out.append(VQASample(f"{name}:{i}", image, str(task.doc_to_text(doc)), "", str(opts.get("domain", "default"))))
    return out


def _data_dir(opts: dict[str, Any]) -> Path:
    if opts.get("data_dir"):
        return Path(str(opts["data_dir"])).expanduser()
    from topovlm.default_model import default_cache_dir

    return default_cache_dir()
