"""What a running job says at the default log level: a line when each stage starts and
when it ends (with its time), progress bars named after what they count, and a heartbeat
line while a stage without a bar runs long, so no stretch of a sweep is silent for more
than about :data:`HEARTBEAT_S` seconds.

* :func:`stage` brackets one stage: ``[cosine s=0.25] reference eval ...`` /
  ``[cosine s=0.25] reference eval done in 3.1 s``;
* :func:`label` names the progress bars opened inside it; :func:`bar` is ``tqdm`` with that
  name (``"reference eval"``, ``"pruned eval, topo s=0.2"``), else the caller's default.
"""
from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

from tqdm.auto import tqdm

log = logging.getLogger("topovlm.progress")

#: seconds without output after which a running stage says it is still running
HEARTBEAT_S = 12.0

_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("topovlm_progress_label", default=None)


@contextmanager
def label(text: str | None) -> Iterator[None]:
    """Progress bars opened inside are named ``text`` (None: their own default)."""
    token = _LABEL.set(text)
    try:
        yield
    finally:
        _LABEL.reset(token)


def current_label() -> str | None:
    return _LABEL.get()


def bar(iterable: Any = None, default: str = "", **kwargs: Any) -> tqdm:
    """``tqdm`` named by the enclosing :func:`label`, else ``default``."""
    return tqdm(iterable, desc=_LABEL.get() or default, **kwargs)


def _bar_moved_within(seconds: float) -> bool:
    """Whether a live progress bar printed in the last ``seconds`` (it speaks for itself)."""
    now = time.time()
    bars = list(getattr(tqdm, "_instances", []) or [])
    return any(now - getattr(b, "last_print_t", 0.0) < seconds for b in bars)


class Heartbeat:
    """A daemon thread saying ``<what>: still running (N s)`` every ``interval`` seconds in
    which no progress bar moved."""

    def __init__(self, what: str, interval: float = HEARTBEAT_S, logger: logging.Logger = log) -> None:
        self.what, self.interval, self.log = what, interval, logger
        self._stop = threading.Event()
        self._start = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat:{what}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if _bar_moved_within(self.interval):
                continue
            message = f"{self.what}: still running ({time.perf_counter() - self._start:.0f} s)"
            if getattr(tqdm, "_instances", None):  # a stalled bar on the line: print above it
                tqdm.write(message, file=sys.stderr)
            else:
                self.log.info(message)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


@contextmanager
def stage(what: str, *, logger: logging.Logger = log, bar_label: str | None = None,
          heartbeat: float | None = HEARTBEAT_S, level: int = logging.INFO) -> Iterator[None]:
    """Log ``what ...`` now and ``what done in X s`` (or ``failed after``) at the end, at
    ``level``; bars opened inside are named ``bar_label`` (default: ``what``). The heartbeat
    speaks at INFO whatever ``level`` is: a bookkeeping stage that runs long is news."""
    logger.log(level, "%s ...", what)
    start = time.perf_counter()
    beat = Heartbeat(what, heartbeat, logger) if heartbeat else None
    try:
        with label(bar_label or _strip_tag(what)):
            if beat is None:
                yield
            else:
                with beat:
                    yield
    except BaseException:
        logger.log(level, "%s failed after %.1f s", what, time.perf_counter() - start)
        raise
    logger.log(level, "%s done in %.1f s", what, time.perf_counter() - start)


def _strip_tag(what: str) -> str:
    """``[cosine s=0.25] scoring`` -> ``scoring``: a bar's name is what it counts."""
    return what.split("] ", 1)[1] if what.startswith("[") and "] " in what else what
