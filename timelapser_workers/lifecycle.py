"""Process lifecycle: what happens to batchers when the process forks, exits or is told to stop.

- **fork**: one registry of callbacks run in a forked child. A bound method is held through a
  weak reference (its object may go away; the callback then goes too), so registering never
  keeps anything alive. Plain functions are held as they are.
- **exit**: batchers register here (weakly); an atexit hook closes every open one, each within
  its own ``shutdown_timeout``, all counted from the moment the process began to exit.
  Pipelines of batchers that were garbage-collected while open ("orphans") are kept alive here
  until their background shutdown is done, and waited for too.
- **multiprocessing children** (fork, forkserver, spawn: ``Process``, ``Pool``,
  ``ProcessPoolExecutor``) leave through ``os._exit`` after their target, which skips atexit;
  multiprocessing runs its own finalizers first, and :func:`close_all` is one of them.
- **SIGTERM** (``docker stop``, systemd, Kubernetes, ``Pool.terminate``): when a batcher is
  made or started in the main thread and SIGTERM has its default action, a handler is
  installed that closes every batcher within ``shutdown_timeout``, restores the default and
  raises the signal again, so the process still ends *by SIGTERM*. A handler the application
  installed first is chained (every batcher is flushed, then it runs), never replaced; one it
  installs later replaces ours, as it should. ``handle_sigterm=False`` turns this off.
- :func:`flush_all` is for frameworks with exit hooks of their own (Celery's
  ``worker_process_shutdown``, RQ before ``os._exit``).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import time
import weakref
from types import FrameType
from typing import Any, Callable, Protocol

__all__ = ["after_fork_in_child", "track", "live_batchers", "adopt", "release", "close_all",
           "flush_all", "install_sigterm_handler"]

logger = logging.getLogger(__name__)


class _Batcher(Protocol):
    @property
    def closed(self) -> bool: ...

    @property
    def shutdown_timeout(self) -> float: ...

    def close(self, timeout: float | None = None) -> Any: ...

    def flush(self, timeout: float | None = None) -> Any: ...


class _Pipeline(Protocol):
    @property
    def done(self) -> bool: ...

    def close(self, deadline: float) -> Any: ...


_lock = threading.RLock()  # reentrant: the SIGTERM handler may interrupt a holder on this thread
_fork_hooks: list[Callable[[], Callable[[], None] | None]] = []
_live: "weakref.WeakSet[Any]" = weakref.WeakSet()
_orphans: set[Any] = set()


# --- fork ------------------------------------------------------------------------------------
def after_fork_in_child(callback: Callable[[], None]) -> None:
    """Call ``callback()`` in every forked child, in registration order. A bound method is
    referenced weakly: when its object is gone, it is forgotten."""
    ref: Callable[[], Callable[[], None] | None]
    if hasattr(callback, "__self__") and hasattr(callback, "__func__"):
        ref = weakref.WeakMethod(callback)
    else:
        ref = lambda: callback  # noqa: E731  (a function: held as it is)
    with _lock:
        if len(_fork_hooks) >= 2 * _pruned_size[0] + 64:  # a process that makes many batchers
            _fork_hooks[:] = [r for r in _fork_hooks if r() is not None]
            _pruned_size[0] = len(_fork_hooks)
        _fork_hooks.append(ref)


_pruned_size = [0]


def _run_fork_hooks() -> None:
    global _lock
    _lock = threading.RLock()  # another thread may have held it at fork
    _orphans.clear()  # their threads are the parent's
    hooks = list(_fork_hooks)
    dead = set()
    for ref in hooks:
        callback = ref()
        if callback is None:
            dead.add(id(ref))
            continue
        try:
            callback()
        except Exception:
            logger.exception("after-fork hook %r failed in the child", callback)
    # keep what a hook registered meanwhile (a new batcher made in a hook)
    _fork_hooks[:] = [r for r in _fork_hooks if id(r) not in dead]


# --- the batchers of this process --------------------------------------------------------------
def track(batcher: _Batcher) -> None:
    """Remember ``batcher`` (weakly) so that exit, signals and fork reach it."""
    _live.add(batcher)
    _register_multiprocessing_exit()


def live_batchers() -> list[Any]:
    """Every batcher that still exists, in no particular order."""
    return list(_live)


def adopt(pipeline: _Pipeline) -> None:
    """Keep the pipeline of a collected batcher alive until its shutdown is done."""
    with _lock:
        _orphans.add(pipeline)


def release(pipeline: _Pipeline) -> None:
    with _lock:
        _orphans.discard(pipeline)


def close_all(timeout: float | None = None) -> None:
    """Close every batcher, each within its shutdown_timeout (or ``timeout``), all counted
    from now, and wait for orphaned pipelines still shutting down."""
    start = time.monotonic()
    for batcher in live_batchers():
        # a batcher already closing is waited for too: the close in progress may be the one
        # this very call interrupted (SIGTERM during a multiprocessing finalizer or a close())
        limit = batcher.shutdown_timeout if timeout is None else timeout
        try:
            batcher.close(max(0.0, start + limit - time.monotonic()))
        except Exception:
            logger.exception("closing %r failed", batcher)
    with _lock:
        orphans = list(_orphans)
    for pipeline in orphans:
        pipeline.close(start + (5.0 if timeout is None else timeout))


def flush_all(timeout: float = 5.0) -> bool:
    """Deliver what every batcher of this process holds, within ``timeout`` seconds in all.
    For exit paths that skip atexit (``os._exit``). True if nothing was left pending."""
    deadline = time.monotonic() + timeout
    complete = True
    for batcher in live_batchers():
        if not batcher.closed:
            result = batcher.flush(max(0.0, deadline - time.monotonic()))
            complete = complete and result.pending == 0
    return complete


# --- multiprocessing children --------------------------------------------------------------------
_mp_registered = False


def _register_multiprocessing_exit() -> None:
    """Make close_all a multiprocessing finalizer, here and in every child multiprocessing
    starts: its children run finalizers, not atexit, before ``os._exit``."""
    global _mp_registered
    if _mp_registered:
        return
    _mp_registered = True
    from multiprocessing import util

    util.Finalize(None, close_all, exitpriority=100)
    # a child clears the finalizers it inherited, then runs the after-fork hooks: renew it there
    util.register_after_fork(_FINALIZER_OWNER, lambda _: util.Finalize(None, close_all, exitpriority=100))


class _Owner:
    """An object to hang the multiprocessing after-fork hook on (it keeps weak references)."""


_FINALIZER_OWNER = _Owner()


# --- SIGTERM -----------------------------------------------------------------------------------
_chained: Callable[[int, FrameType | None], Any] | None = None
_sigterm_installed = False


def install_sigterm_handler() -> bool:
    """Install the SIGTERM handler described above (main thread only, once). True if ours is
    in place after the call."""
    global _chained, _sigterm_installed
    if threading.current_thread() is not threading.main_thread():
        return False
    with _lock:
        if _sigterm_installed:
            return signal.getsignal(signal.SIGTERM) is _on_sigterm
        current = signal.getsignal(signal.SIGTERM)
        if current is signal.SIG_DFL:
            _chained = None
        elif callable(current):
            _chained = current  # the application's own: it still runs, after our flush
        else:  # SIG_IGN, or a handler set outside Python: not ours to change
            return False
        try:
            signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main interpreter
            return False
        _sigterm_installed = True
        return True


_handling = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    global _handling
    if _handling:  # a second SIGTERM while we close (Pool.terminate sends more): keep closing
        return
    _handling = True
    chained = _chained
    if chained is not None:
        try:
            flush_all(_longest_timeout())
        finally:
            _handling = False
        chained(signum, frame)
        return
    logger.info("SIGTERM: closing %d batcher(s) before the process ends", len(_live))
    close_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for stream in (sys.stdout, sys.stderr):  # what the process printed, as a normal exit would
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def _longest_timeout() -> float:
    timeouts: list[float] = [b.shutdown_timeout for b in live_batchers()]
    return max(timeouts or [5.0])


os.register_at_fork(after_in_child=_run_fork_hooks)
atexit.register(close_all)
