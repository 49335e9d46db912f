"""Pruned checkpoints as first-class artefacts: a Hugging Face directory with a model card.

:func:`write_checkpoint` saves a pruned adapter (``save_model=true`` in a job) and
:func:`export_job` rebuilds one from a finished job directory (``topovlm export JOB_DIR``).
Either way the directory holds:

* the model and processor (``save_pretrained``), loadable with transformers alone;
* ``config.json`` with a ``pruning`` section: removed and kept layers (original indices),
  method and hyperparameters, selection, calibration data, sparsity, topovlm version;
* ``README.md``, a model card with YAML front matter: base model, method, removed layers,
  calibration data, metrics with 95% intervals, how to cite;
* no machine-local paths (``_name_or_path`` is the base model's hub id, or empty).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from topovlm.adapters.base import ModelAdapter
    from topovlm.results import JobResult

log = logging.getLogger(__name__)

#: scorer -> BibTeX key in docs/references.bib
CITATIONS = {
    "topo": "topovlm2026", "topo_llm": "gardinazzi2025persistent", "shortgpt": "men2024shortgpt",
    "angular": "gromov2024unreasonable", "short_lvlm": "shortlvlm2025", "domain_aware": "domainaware2026",
}
_HUB_ID = r"^[A-Za-z0-9][\w.-]*/[\w.-]+$"


def _base_model(config: dict[str, Any]) -> str | None:
    import re

    model = config.get("model", {})
    path = str(model.get("path") or "")
    if model.get("source") == "pretrained" and re.match(_HUB_ID, path) and not Path(path).exists():
        return path
    return None


def provenance(results: "JobResult") -> dict[str, Any]:
    """The ``pruning`` section of config.json."""
    from topovlm.identity import recorded_versions

    config = results.config
    scorer = dict(config.get("scorer", {}))
    scorer.pop("_target_", None)
    return {
        "removed_layers": list(results.removed_layers),
        "kept_layers": list(results.kept_layers),
        "num_layers_original": results.num_layers,
        "method": results.scorer,
        "method_params": scorer,
        "selection_policy": results.selection_policy,
        "selection": config.get("selection", {}),
        "sparsity": results.sparsity,
        "calibration": _calibration(config),
        "base_model": _base_model(config) or config.get("model", {}).get("name"),
        "compensation": results.after_pruning or {},
        "topovlm_version": recorded_versions().get("topovlm"),
    }


def _calibration(config: dict[str, Any]) -> dict[str, Any]:
    cal = dict(config.get("calibration", {}))
    ds = dict(cal.get("dataset", {}))
    if ds.get("path") and Path(str(ds["path"])).exists():
        ds["path"] = Path(str(ds["path"])).name  # a local folder: its name only
    return {"dataset": ds, "n": cal.get("n"), "seed": cal.get("seed")}


def _interval(value: float, n: float | None) -> str:
    """Wilson 95% interval of a proportion, as text (blank without a sample count)."""
    if n is None or not 0.0 <= value <= 1.0:
        return ""
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(round(value * n), int(n), alpha=0.05, method="wilson")
    return f"[{lo:.3f}, {hi:.3f}]"


_ROOT = Path(__file__).resolve().parents[1]  # the project checkout: CITATION.cff, docs/references.bib


def project_citation(cff_path: Path = _ROOT / "CITATION.cff") -> tuple[str | None, str | None]:
    """(the project's URL, its BibTeX) from CITATION.cff: ``repository-code`` or ``url`` (None when
    it names none: a card then names the project without inventing a link), and a ``@software``
    entry of its title, authors, version and year. (None, None) without the file."""
    import yaml

    try:
        cff = yaml.safe_load(Path(cff_path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None, None
    url = cff.get("repository-code") or cff.get("url")
    authors = " and ".join(a.get("name") or f"{a.get('family-names', '')}, {a.get('given-names', '')}".strip(", ")
                           for a in cff.get("authors") or [])
    fields = {"title": cff.get("title"), "author": authors or None, "version": cff.get("version"),
              "year": str(cff.get("date-released") or "")[:4] or None, "url": url}
    body = ",\n".join(f"  {k} = {{{v}}}" for k, v in fields.items() if v)
    return url, "@software{topovlm,\n" + body + "\n}"


def method_bibtex(key: str, bib_path: Path = _ROOT / "docs" / "references.bib") -> str | None:
    """The entry ``key`` of docs/references.bib, verbatim (None when the file or the entry is missing)."""
    import re

    try:
        text = Path(bib_path).read_text()
    except OSError:
        return None
    m = re.search(r"@\w+\{" + re.escape(key) + r",.*?\n\}", text, re.S)
    return m.group(0) if m else None


def model_card(results: "JobResult") -> str:
    prov = provenance(results)
    metrics = results.metrics
    reference = results.reference_metrics or {}
    n = metrics.get("num_samples")
    front = {
        "library_name": "transformers",
        "base_model": _base_model(results.config),
        "tags": ["layer-pruning", "topovlm", f"pruning-{prov['method']}"],
        "model-index": [{"name": f"{results.model}-{prov['method']}-s{prov['sparsity']:g}", "results": [{
            "task": {"type": "visual-question-answering", "name": results.task},
            "metrics": [{"type": k, "value": v} for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not k.startswith("num_") and math.isfinite(v)]}]}],
    }
    front = {k: v for k, v in front.items() if v is not None}
    import yaml

    rows = []
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not k.startswith("num_"):
            ref = reference.get(k)
            ci = _interval(float(v), n) if k.startswith("accuracy") and "/" not in k else ""
            rows.append(f"| {k} | {v:.4g} | {ci} | {'' if ref is None else f'{ref:.4g}'} |")
    cite = CITATIONS.get(prov["method"])
    url, project_bib = project_citation()
    project = f"[topovlm]({url})" if url else "topovlm"
    bibs = [b for b in (project_bib, method_bibtex(cite) if cite else None) if b]
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "",
        f"# {results.model}, {len(prov['removed_layers'])} of {prov['num_layers_original']} decoder layers removed "
        f"({prov['method']})", "",
        f"Pruned with {project} from `{prov['base_model']}`: scorer `{prov['method']}` "
        f"({', '.join(f'{k}={v}' for k, v in prov['method_params'].items() if k != 'name') or 'defaults'}), "
        f"selection `{prov['selection_policy']}`, sparsity {prov['sparsity']:g}.", "",
        f"- removed layers (original indices): {prov['removed_layers']}",
        f"- kept layers (original indices): {prov['kept_layers']}",
        f"- calibration: {prov['calibration']['dataset'].get('source')} "
        f"{prov['calibration']['dataset'].get('path') or ''} split `{prov['calibration']['dataset'].get('split')}`, "
        f"n={prov['calibration']['n']}, seed={prov['calibration']['seed']}",
        f"- weight edits after pruning: {prov['compensation'] or 'none'}", "",
        f"## Results on `{results.task}`" + (f" ({int(n)} samples)" if n else ""), "",
        "| metric | pruned | 95% interval (Wilson) | unpruned |", "| --- | --- | --- | --- |", *rows, "",
        "## Loading", "", "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "model = AutoModelForImageTextToText.from_pretrained(PATH)  # the pruned depth is in config.json",
        "processor = AutoProcessor.from_pretrained(PATH)", "```", "",
        "## Citation", "",
        *(["Cite topovlm" + (" and the scoring method" if len(bibs) > 1 else "") + ":", "",
            "```bibtex", "\n\n".join(bibs), "```", ""] if bibs else ["Cite topovlm (CITATION.cff).", ""]),
    ]
    return "\n".join(lines)


def checkpoint_bytes(model: Any) -> int:
    """The bytes of the state dict ``save_pretrained`` writes: every tensor as it is (safetensors
    stores them so), a tensor under several names (tied embeddings) once, as it is saved."""
    seen: dict[tuple[Any, ...], int] = {}
    for t in model.state_dict().values():
        where = id(t) if t.device.type == "meta" else t.untyped_storage().data_ptr()  # meta: no address
        key = (t.device, where, t.storage_offset(), tuple(t.shape), t.dtype)
        seen[key] = t.numel() * t.element_size()
    return sum(seen.values())


def _gib(model: Any) -> str:
    """The bytes a model's tensors take on disk (:func:`checkpoint_bytes`), in words."""
    nbytes = checkpoint_bytes(model)
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def write_checkpoint(adapter: "ModelAdapter", out_dir: str | Path, results: "JobResult") -> Path:
    """Save the pruned adapter with provenance and a model card (no local paths)."""
    out = Path(out_dir)
    base = _base_model(results.config)
    adapter.model.config._name_or_path = base or ""
    for sub in ("text_config", "vision_config"):
        if getattr(adapter.model.config, sub, None) is not None:
            getattr(adapter.model.config, sub)._name_or_path = base or ""
    log.info("save_model: writing %s of weights (%d parameters in %s) to %s", _gib(adapter.model),
             sum(t.numel() for t in adapter.model.parameters()), adapter.model.dtype, out)
    adapter.save_pretrained(out)
    _stamp(out, results, base)
    from topovlm.storage import follow_umask

    return follow_umask(out)  # safetensors writes its files 0600


def _stamp(out: Path, results: "JobResult", base: str | None) -> None:
    cfg_file = out / "config.json"
    config = json.loads(cfg_file.read_text())
    config["pruning"] = provenance(results)
    config["_name_or_path"] = base or ""
    cfg_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for name in ("tokenizer_config.json", "processor_config.json", "preprocessor_config.json"):
        f = out / name
        if f.is_file():
            data = json.loads(f.read_text())
            if "name_or_path" in data or "_name_or_path" in data:
                data.pop("name_or_path", None)
                data.pop("_name_or_path", None)
                f.write_text(json.dumps(data, indent=2) + "\n")
    (out / "README.md").write_text(model_card(results))


def export_job(job_dir: str | Path, out_dir: str | Path | None = None, push_to_hub: str | None = None, *,
               overwrite: bool = False) -> Path:
    """A checkpoint directory from a finished job (its saved pruned model, or rebuilt).

    ``out_dir`` (default ``JOB_DIR/export``) must be missing or empty unless ``overwrite``:
    a user's files are never replaced silently. The checkpoint is built in a hidden folder
    beside it and moved in when complete (with ``overwrite``, files of the same names are
    replaced, others kept); its files and folders get the modes the umask gives."""
    from topovlm.results import RESULTS_FILE, read_result
    from topovlm.storage import follow_umask

    job = Path(job_dir)
    results = read_result(job / RESULTS_FILE)
    if results is None:
        raise FileNotFoundError(f"{job}: no complete {RESULTS_FILE} (is the job finished?)")
    out = Path(out_dir) if out_dir else job / "export"
    saved = job / "pruned_model"
    if saved.is_dir() and out.resolve() == saved.resolve():  # the job's own checkpoint: stamped again
        _stamp(out, results, _base_model(results.config))
        follow_umask(out)
    else:
        check_target(out, overwrite)
        if not saved.is_dir() and results.after_pruning:
            raise ValueError(f"{job}: the scorer edited weights after pruning ({results.scorer}); the edits are "
                             "not in results.json: rerun the job with save_model=true, then export")
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.export-"))
        try:
            if saved.is_dir():
                # copyfile, not copy2: the files get this process's umask, not the saved ones' modes
                shutil.copytree(saved, staging, dirs_exist_ok=True, copy_function=shutil.copyfile)
                _stamp(staging, results, _base_model(results.config))
            else:
                _rebuild(results, staging)
            follow_umask(staging)
            _move_into(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if push_to_hub:
        push(out, push_to_hub)
    return out


def check_target(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (or a file there) unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a directory; choose another -o")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if entries and not overwrite:
        shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise FileExistsError(f"{out} is not empty ({shown}); pass --overwrite to replace the exported "
                              "files in it, or choose an empty or new -o")


def _rebuild(results: "JobResult", out: Path) -> None:
    """The pruned model from the base model and the removed layers, saved with its card."""
    from omegaconf import OmegaConf

    from topovlm.adapters.loading import load_adapter
    from topovlm.pruning import remove_layers

    adapter = load_adapter(OmegaConf.create(results.config["model"]))
    if results.removed_layers:
        remove_layers(adapter, results.removed_layers)
    write_checkpoint(adapter, out, results)


def _move_into(staging: Path, out: Path) -> None:
    """Move the finished checkpoint in ``staging`` to ``out`` (renamed whole when ``out`` is
    missing; else entry by entry, replacing those of the same name)."""
    if not out.exists():
        os.replace(staging, out)
        return
    for entry in sorted(staging.iterdir()):
        target = out / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif entry.is_dir() and (target.exists() or target.is_symlink()):
            target.unlink()  # a file where the checkpoint has a folder
        os.replace(entry, target)


def push(folder: Path, repo_id: str) -> str:
    """Upload to the Hugging Face hub (needs network and `hf auth login`)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id, exist_ok=True)
        return api.upload_folder(folder_path=str(folder), repo_id=repo_id).commit_url
    except Exception as err:  # noqa: BLE001 - one clear line instead of a network traceback
        raise RuntimeError(f"push_to_hub={repo_id!r} failed ({type(err).__name__}: {err}); the checkpoint is in "
                           f"{folder}: upload it later with `hf upload {repo_id} {folder}`") from None
