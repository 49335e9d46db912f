"""Whether a checkpoint's weight files can load, from their headers alone (no tensor is read):
the preflight asks before any model loads, and the loader asks again when ``from_pretrained``
fails, so that a truncated file is named in one line either way."""
from __future__ import annotations

import json
import zipfile
from functools import lru_cache
from pathlib import Path


def safetensors_problem(file: Path) -> str | None:
    """Why a ``.safetensors`` file cannot be loaded (truncated, corrupt header), from its header
    alone: 8 bytes of header length, a JSON header, then exactly the bytes its tensors span."""
    size = file.stat().st_size
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"{file} has {size} bytes, less than a safetensors header (truncated?)"
        n = int.from_bytes(head, "little")
        if n > size - 8:
            return f"{file}: its header claims {n} bytes, the file has {size} (truncated or not a safetensors file)"
        try:
            header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return f"{file}: the header is not valid safetensors JSON (corrupt file)"
    if 8 + n + end != size:
        return f"{file}: its tensors need {8 + n + end} bytes, the file has {size} (truncated or corrupt)"
    return None


def _bin_problem(file: Path) -> str | None:
    """A torch ``.bin`` checkpoint is a zip (torch>=1.6): a cut one has lost its central directory."""
    with open(file, "rb") as fh:
        if fh.read(4) != b"PK\x03\x04":  # empty, or the legacy format, which has no cheap check
            return f"{file} is empty (truncated?)" if file.stat().st_size == 0 else None
    try:
        with zipfile.ZipFile(file):
            return None
    except (zipfile.BadZipFile, OSError) as err:
        return f"{file}: {err} (truncated or corrupt)"


@lru_cache(maxsize=256)
def _weights_problem_cached(path: str, stamp: tuple) -> str | None:  # noqa: ARG001 - stamp keys the cache
    folder = Path(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError):
            return f"{index} is not a valid weight index (corrupt)"
        for shard in shards:
            if not (folder / shard).is_file():
                return f"{folder / shard} is missing (listed in {index.name})"
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        why = safetensors_problem(file)
        if why:
            return why
    bins = sorted(folder.glob("*.bin"))
    for file in bins:
        why = _bin_problem(file)
        if why:
            return why
    if not files and not bins and not any(folder.glob("*.gguf")) and not any(folder.glob("*.pt")):
        return f"{folder} has no weight files (*.safetensors, *.bin)"
    return None


def weights_problem(folder: str | Path) -> str | None:
    """Why the weight files of a checkpoint folder cannot load (header checks only); None when they can."""
    folder = Path(folder)
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir()) if p.is_file())
    return _weights_problem_cached(str(folder.resolve()), stamp)
