"""``dataset.source=lmms_task``: calibration documents drawn from an lmms-eval task."""
from __future__ import annotations

from typing import Any

from topovlm.data.sources import seeded_subset
from topovlm.data.types import VQASample


def load_task_documents(ds: Any, n: int | None, seed: int) -> list[VQASample]:
    """Documents of an lmms-eval task, prompted exactly as the task prompts them.

    ``options.task`` names the task (``options.dataset_path`` replaces its dataset, e.g. a
    local copy); ``options.exclude_first`` skips the documents an
    evaluation with ``task.limit`` reads (lmms-eval evaluates the first ``limit`` ones), so a
    calibration set drawn here is disjoint from the evaluated documents.
    """
    from lmms_eval.tasks import get_task_dict

    from topovlm.evaluation.lmms import task_manager

    opts = dict(ds.options or {})
    name = str(opts["task"])
    spec = {"task": name, "dataset_path": str(opts["dataset_path"])} if opts.get("dataset_path") else name
    task = get_task_dict([spec], task_manager([name], opts.get("model_name", "llava_hf")))[name]
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
