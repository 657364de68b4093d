"""Process lifecycle: what happens to batchers when the process forks or exits.

- **fork**: one registry of callbacks run in a forked child. A bound method is held through a
  weak reference (its object may go away; the callback then goes too), so registering never
  keeps anything alive. Plain functions are held as they are.
- **exit**: every batcher registers itself here (weakly); an atexit hook closes every open one,
  each within its own ``shutdown_timeout``, all counted from the moment the process began to
  exit, so the deadlines do not add up.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Protocol

__all__ = ["after_fork_in_child", "track", "live_batchers", "close_all"]

logger = logging.getLogger(__name__)


class _Closable(Protocol):
    @property
    def closed(self) -> bool: ...

    @property
    def shutdown_timeout(self) -> float: ...

    def close(self, timeout: float | None = None) -> Any: ...


_lock = threading.Lock()
_fork_hooks: list[Callable[[], Callable[[], None] | None]] = []
_live: "weakref.WeakSet[Any]" = weakref.WeakSet()


def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Call ``callback()`` in every forked child, in registration order. A bound method is
    referenced weakly: when its object is gone, it is forgotten."""
    ref: Callable[[], Callable[[], None] | None]
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        ref = weakref.WeakMethod(callback)
    else:
        ref = lambda: callback  # noqa: E731  (a function: held as it is)
    with _lock:
        _fork_hooks.append(ref)


def _run_fork_hooks() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork
    alive = []
    for ref in list(_fork_hooks):
        callback = ref()
        if callback is None:
            continue
        alive.append(ref)
        try:
            callback()
        except Exception:
            logger.exception("after-fork hook %r failed in the child", callback)
    _fork_hooks[:] = alive


def track(batcher: _Closable) -> None:
    """Remember ``batcher`` (weakly) so that exit and fork reach it."""
    _live.add(batcher)


def live_batchers() -> list[Any]:
    """Every batcher that still exists, in no particular order."""
    return list(_live)


def close_all(timeout: float | None = None) -> None:
    """Close every open batcher, each within its shutdown_timeout (or ``timeout``), all counted
    from now."""
    start = time.monotonic()
    for batcher in live_batchers():
        if batcher.closed:
            continue
        limit = batcher.shutdown_timeout if timeout is None else timeout
        try:
            batcher.close(max(0.0, start + limit - time.monotonic()))
        except Exception:
            logger.exception("closing %r at exit failed", batcher)


os.register_at_fork(after_in_child=_run_fork_hooks)
atexit.register(close_all)
