"""The SSE endpoint as a raw ASGI app (mountable in FastAPI/Starlette), no framework needed.

Each stream is one task on the event loop. A publish wakes all the streams of one loop with
one ``loop.call_soon_threadsafe`` (not one per stream: a thousand streams cost one wake-up of
the loop); ``http.disconnect`` from the server frees the client at once; a client the hub cuts
off (slow, server-side close) ends its response even when the writer is stuck behind a client
that stopped reading. A stream the server ends on purpose ends with a ``retry`` hint.

Served alone, the app answers the lifespan protocol and delivers every batcher's pending events
at lifespan shutdown. Header names with an underscore are ignored (as gunicorn and nginx do).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from typing import Any, Awaitable, Callable, MutableMapping

from timelapser_workers import lifecycle

from timelapser_workers.sinks.sse.endpoint import KEEPALIVE, Refusal, SSEEndpoint, SSERequest, Stream, resolve_endpoint
from timelapser_workers.sinks.sse.hub import SSEHub

__all__ = ["SSEAsgiApp"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: How long a stream the hub closed may take to send its last bytes before it is cut.
_CLOSE_GRACE_SECONDS = 1.0


def request_from_scope(scope: Scope) -> SSERequest:
    """The SSERequest for an ASGI http scope."""
    headers: dict[str, str] = {}
    for name, value in scope.get("headers", ()):
        key = name.decode("latin-1").lower()
        if "_" in key:  # as gunicorn and nginx: never let X_User pose as X-User
            continue
        text = value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    raw_query = scope.get("query_string", b"")
    try:
        query = raw_query.decode("utf-8")
    except UnicodeDecodeError:
        query = raw_query.decode("latin-1")
    client = scope.get("client")
    return SSERequest(
        method=scope.get("method", "GET").upper(),
        path=scope.get("root_path", "") + scope.get("path", ""),
        query=query,
        headers=headers,
        remote=client[0] if client else None,
        raw=scope,
    )


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


class SSEAsgiApp:
    """An ASGI app that serves the hub's events as ``text/event-stream``.

    Takes the hub and the :class:`SSEEndpoint` options, or a ready ``endpoint``. The
    authorization hook runs in a worker thread, so it may block (e.g. a database look-up);
    so does opening a stream on a hub with a backing log (a resume may read it).
    """

    def __init__(self, hub: SSEHub | None = None, *, endpoint: SSEEndpoint | None = None, **options: Any) -> None:
        self.endpoint = resolve_endpoint(hub, endpoint, options, "SSEAsgiApp")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            raise ValueError(f"SSEAsgiApp serves http only, not {scope['type']!r}")
        request = request_from_scope(scope)
        if self.endpoint.authorize is None and self.endpoint.hub.backing_log is None:
            result = self.endpoint.open(request)
        else:
            result = await asyncio.to_thread(self.endpoint.open, request)
        if isinstance(result, Refusal):
            headers = result.headers + [("Content-Length", str(len(result.body)))]
            await send({"type": "http.response.start", "status": result.status, "headers": _encode(headers)})
            body = result.body if request.method != "HEAD" else b""
            await send({"type": "http.response.body", "body": body})
            return
        try:
            await _serve(result, receive, send)
        finally:
            result.close()


#: What delivering the batchers' pending events may take at lifespan shutdown.
_SHUTDOWN_FLUSH_SECONDS = 2.0


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await asyncio.to_thread(lifecycle.flush_all, _SHUTDOWN_FLUSH_SECONDS)
            except Exception:
                log.exception("delivering pending events at lifespan shutdown failed")
            await send({"type": "lifespan.shutdown.complete"})
            return


class _LoopWaker:
    """Wakes the streams of one event loop: many wake-ups from other threads between two turns
    of the loop cost one ``call_soon_threadsafe``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._due: list[Callable[[], None]] = []

    def wake(self, callback: Callable[[], None]) -> None:  # any thread
        with self._lock:
            self._due.append(callback)
            if len(self._due) > 1:
                return  # a run is already scheduled and will see this one
        self.loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:  # the loop's thread
        with self._lock:
            due, self._due = self._due, []
        for callback in due:
            callback()


_wakers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopWaker]" = weakref.WeakKeyDictionary()


def _waker(loop: asyncio.AbstractEventLoop) -> _LoopWaker:
    waker = _wakers.get(loop)
    if waker is None:
        waker = _wakers[loop] = _LoopWaker(loop)
    return waker


async def _serve(stream: Stream, receive: Receive, send: Send) -> None:
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    closed = asyncio.Event()
    client = stream.client

    def wake() -> None:  # runs on the loop thread
        ready.set()
        if client.closed:
            closed.set()

    waker = _waker(loop)

    def on_ready() -> None:  # any thread: hand the wake-up to the loop
        waker.wake(wake)

    client.on_ready = on_ready
    if client.closed:
        closed.set()

    async def pump() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _encode(stream.headers)})
        await send({"type": "http.response.body", "body": stream.first, "more_body": True})
        while True:
            ready.clear()
            frames = client.take()
            if frames:
                await send({"type": "http.response.body", "body": b"".join(frames), "more_body": True})
                continue
            if client.closed:
                last = stream.goodbye()
                if last:
                    await send({"type": "http.response.body", "body": last, "more_body": True})
                break
            try:
                await asyncio.wait_for(ready.wait(), stream.keepalive_seconds)
            except asyncio.TimeoutError:
                await send({"type": "http.response.body", "body": KEEPALIVE, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def disconnected() -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return

    pump_task = asyncio.ensure_future(pump())
    gone_task = asyncio.ensure_future(disconnected())
    closed_task = asyncio.ensure_future(closed.wait())
    try:
        done, _ = await asyncio.wait({pump_task, gone_task, closed_task}, return_when=asyncio.FIRST_COMPLETED)
        if closed_task in done and pump_task not in done:
            # the hub cut this client off: let it finish its last write, but not wait for ever
            await asyncio.wait({pump_task, gone_task}, timeout=_CLOSE_GRACE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        if pump_task.done() and not pump_task.cancelled() and pump_task.exception() is not None:
            log.debug("SSE stream #%d ended: %r", client.number, pump_task.exception())
    finally:
        client.on_ready = None
        for task in (pump_task, gone_task, closed_task):
            task.cancel()
        for task in (pump_task, gone_task, closed_task):
            with contextlib.suppress(BaseException):
                await task
