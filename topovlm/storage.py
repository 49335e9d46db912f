"""Files that are never seen half-written, locks for entries shared by jobs, and healing.

* :func:`atomic_write` writes to a hidden temporary file next to the target
  (``.<name>.<random>.tmp``), flushes it to disk and renames it into place: a reader sees
  the old file or the new one, never a part. Files get the mode an ordinary ``open``
  would give (``0o666`` less the umask), not ``mkstemp``'s ``0o600``, so a cache shared by
  a group (umask 002) stays readable by it.
* :func:`entry_lock` is a ``filelock`` lock next to an entry. Whoever computes an entry
  holds its lock, so a second job wanting the same entry waits and then reads it; and
  any temporary file of that entry found while holding the lock is left over from a
  killed writer, which :func:`remove_stale_tmp` deletes.
* :func:`discard` logs a corrupt entry with its path and moves it aside
  (``<name>.corrupt-<time>``), so it is recomputed and the evidence stays.
* :func:`safe_name` and :func:`inside` keep every path built from a config value (a model,
  task or scorer name) inside the root it belongs to: ``model.name=../../x`` names a file,
  never a place.
"""
from __future__ import annotations

import json
import logging
import os
import hashlib
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from filelock import FileLock

log = logging.getLogger("topovlm.cache")


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def follow_umask(root: Path) -> Path:
    """Give ``root`` and everything under it the modes an ordinary ``open`` / ``mkdir`` would
    (``0o666`` / ``0o777`` less the umask): some writers leave 0600 / 0700 whatever the umask
    (safetensors' ``save_file``, ``mkstemp``, ``mkdtemp``), which a group sharing a cache or
    an exported checkpoint could not read. Links are left alone."""
    file_mode = _file_mode()
    dir_mode = file_mode | ((file_mode & 0o444) >> 2)  # x wherever r: 0o644 -> 0o755, 0o664 -> 0o775
    for path in [Path(root), *Path(root).rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else file_mode)
    return Path(root)


def link_or_copy(src: Path, dst: Path) -> str:
    """Make ``dst`` a real file (or folder) with ``src``'s content: a hard link where the
    filesystem allows it (no extra disk), else a copy; never a symbolic link, so ``cp -r`` and
    ``rsync`` of the folder holding ``dst`` keep it readable. Replaces ``dst`` atomically
    (a file) or whole (a folder). Returns how: "hardlink" or "copy" (the first file's, for a folder).
    The files linked are only ever replaced by rename, never written in place, so a hard link
    cannot change under its other name."""
    import shutil

    src, dst = Path(src).resolve(), Path(dst)
    if src.is_dir():
        how: list[str] = []

        def one(a: str, b: str) -> None:
            how.append(link_or_copy(Path(a), Path(b)))

        if dst.is_symlink() or dst.is_file():
            dst.unlink()
        elif dst.is_dir():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, copy_function=one)
        return how[0] if how else "copy"
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
        how_one = "hardlink"
    except OSError:  # another filesystem, or one without hard links
        shutil.copy2(src, tmp)
        how_one = "copy"
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(tmp, dst)
    return how_one


def tmp_pattern(path: Path) -> str:
    return f".{path.name}.*.tmp"


def atomic_write(path: Path, save: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``save(tmp)`` and an atomic rename; nothing is left on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _file_mode())
        save(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def lock_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".lock")


@contextmanager
def entry_lock(path: Path, what: str = "entry") -> Iterator[None]:
    """Hold the lock of a cache entry (or job); log when another process holds it."""
    lock = FileLock(str(lock_path(path)), mode=_file_mode())
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    try:
        lock.acquire(timeout=0)
    except Exception:  # noqa: BLE001 - filelock.Timeout: someone else computes it
        log.info("waiting for %s %s: another process holds %s", what, path, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete temporary files of ``path`` (call while holding its :func:`entry_lock`)."""
    path = Path(path)
    stale = list(path.parent.glob(tmp_pattern(path))) if path.parent.is_dir() else []
    if path.is_dir():
        stale += list(path.glob(".*.tmp"))
    for p in stale:
        log.warning("removing stale temporary file %s (a killed write)", p)
        p.unlink(missing_ok=True)
    return stale


def discard(path: Path, err: BaseException | str) -> Path | None:
    """Log an unreadable cache entry and move it aside as ``<name>.corrupt-<time>`` (it is
    recomputed; the file stays as evidence of what was there). The moved path, or None."""
    path = Path(path)
    why = f"{type(err).__name__ if isinstance(err, BaseException) else 'invalid'}: {err}"
    if not (path.exists() or path.is_symlink()):
        return None
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except OSError as move_err:  # e.g. a read-only dir: nothing can be recomputed there either
        log.warning("corrupt cache entry %s (%s); could not move it aside (%s)", path, why, move_err)
        return None
    log.warning("corrupt cache entry %s (%s); moved aside to %s, recomputing", path, why, aside.name)
    return aside


#: characters a name keeps when it becomes part of a file name; everything else becomes "_"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")
MAX_NAME = 80


def safe_name(value: object) -> str:
    """``value`` as one safe path component: no separator, no leading dot, no NUL, at most
    :data:`MAX_NAME` characters. A name that had to change gets a short digest of the
    original, so two different names never map to one file."""
    text = str(value)
    name = _UNSAFE.sub("_", text).lstrip(".") or "_"
    if name != text or len(name) > MAX_NAME:
        tag = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        name = f"{name[:MAX_NAME - 9]}~{tag}"
    return name


class OutsideRoot(ValueError):
    """A path built from config values resolves outside the root it must stay in."""


def inside(root: Path, path: Path) -> Path:
    """``path``, checked to resolve inside ``root`` (symbolic links followed)."""
    root_r, path_r = Path(root).resolve(), Path(path).resolve()
    if path_r != root_r and root_r not in path_r.parents:
        raise OutsideRoot(f"{path} resolves to {path_r}, outside {root_r}")
    return Path(path)


def read_json(path: Path, *, required: tuple[str, ...] = (), heal: bool = True) -> dict[str, Any] | None:
    """A JSON object, or None when missing; unreadable, non-object or lacking ``required``
    keys counts as corrupt: logged and (``heal``) removed."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        if heal:
            discard(path, err)
        return None
    missing = [k for k in required if not (isinstance(data, dict) and data.get(k) not in (None, {}, []))]
    if not isinstance(data, dict) or missing:
        if heal:
            discard(path, f"missing {', '.join(missing) or 'a JSON object'}")
        return None
    return data
