"""End open SSE streams when the server that carries them is told to stop.

An event stream never ends by itself, so a server stopping "gracefully" waits for it: uvicorn
until ``--timeout-graceful-shutdown`` (then a traceback), gunicorn until ``graceful_timeout``
(30 s, then SIGKILL, which also skips the batchers' last flush). Servers install their own
SIGTERM/SIGINT handlers, so the application is never told. What they do expose is the state
their handler sets: uvicorn's ``Server.should_exit`` and gunicorn's ``Worker.alive``, on the
object whose bound method is the installed handler (sse-starlette finds uvicorn's the same way).

When the first stream opens in a process, a daemon thread starts that looks at those handlers
ten times a second. Once the server is stopping it, within ``STOP_SECONDS`` in all:

1. delivers what every batcher of the process holds (``lifecycle.flush_all``), so the browsers
   and the database get the last events while the connections are still open;
2. closes every hub that has served a stream: each writer sends what is queued, then a last
   ``retry`` hint, and the stream ends; the server then finishes as it would with no stream.

Servers that stop through our own code need no watching: :meth:`ServerThread.stop`, and any
server whose batcher is closed at exit or on SIGTERM (``SSESink.close`` closes its hub, which
waits for the writers' last frames), e.g. Flask's development server.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING, Any

from timelapser_workers import lifecycle

if TYPE_CHECKING:
    from timelapser_workers.sinks.sse.hub import SSEHub

__all__ = ["watch", "server_stopping", "stop_streams", "POLL_SECONDS", "STOP_SECONDS"]

log = logging.getLogger(__name__)

#: How often the watcher looks at the server's state.
POLL_SECONDS = 0.1
#: What ending the streams may take in all: the flush first, then the writers' last frames.
STOP_SECONDS = 2.0
_FLUSH_SECONDS = 1.0

_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGQUIT") if hasattr(signal, n))

_lock = threading.Lock()
_hubs: "weakref.WeakSet[SSEHub]" = weakref.WeakSet()
_watcher_pid: int | None = None
_stopped = threading.Event()


def server_stopping() -> str | None:
    """What says the server carrying this process's streams is stopping, or None.

    Looks at the owners of the installed SIGTERM/SIGINT/SIGQUIT handlers: a uvicorn ``Server``
    with ``should_exit`` set, a gunicorn ``Worker`` with ``alive`` cleared.
    """
    for sig in _SIGNALS:
        try:
            handler: Any = signal.getsignal(sig)
        except (ValueError, OSError):  # pragma: no cover - not on this platform
            continue
        owner = getattr(handler, "__self__", None)
        if owner is None:
            continue
        if getattr(owner, "should_exit", False) is True:
            return f"{type(owner).__name__}.should_exit"
        if getattr(owner, "alive", True) is False:
            return f"{type(owner).__name__}.alive is False"
    return None


def watch(hub: "SSEHub") -> None:
    """Remember ``hub`` (weakly) and make sure this process has a watcher thread."""
    global _watcher_pid
    with _lock:
        _hubs.add(hub)
        if _watcher_pid == os.getpid():
            return
        _watcher_pid = os.getpid()  # a forked child has no thread: it starts its own
        _stopped.clear()
    threading.Thread(target=_watch, name="sse-server-stop-watcher", daemon=True).start()


def stop_streams(reason: str, timeout: float = STOP_SECONDS) -> int:
    """Flush every batcher, then close every watched hub (see the module docstring); return
    how many writers had not sent their last frame when ``timeout`` ran out."""
    import time

    deadline = time.monotonic() + timeout
    log.info("server stopping (%s): delivering pending events, then ending the event streams", reason)
    try:
        lifecycle.flush_all(min(_FLUSH_SECONDS, timeout / 2))
    except Exception:
        log.exception("flushing the batchers before ending the event streams failed")
    with _lock:
        hubs = list(_hubs)
    left = 0
    for hub in hubs:
        left += hub.close(max(0.0, deadline - time.monotonic()))
    if left:
        log.warning("%d event stream(s) did not finish within %.1fs", left, timeout)
    return left


def _watch() -> None:
    pid = os.getpid()
    while not _stopped.wait(POLL_SECONDS):
        if os.getpid() != pid:  # pragma: no cover - a thread does not survive fork
            return
        reason = server_stopping()
        if reason is not None:
            _stopped.set()
            stop_streams(reason)
            return
