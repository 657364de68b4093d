"""The SSE endpoint as a raw ASGI app (mountable in FastAPI/Starlette), no framework needed.

Each stream is one task on the event loop: the hub wakes it through
``loop.call_soon_threadsafe`` when frames arrive; ``http.disconnect`` from the server frees
the client at once; a client the hub cuts off (slow, server-side close) ends its response
even when the writer is stuck behind a client that stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Awaitable, Callable, MutableMapping

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


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _serve(stream: Stream, receive: Receive, send: Send) -> None:
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    closed = asyncio.Event()
    client = stream.client

    def wake() -> None:  # runs on the loop thread
        ready.set()
        if client.closed:
            closed.set()

    def on_ready() -> None:  # any thread: hand the wake-up to the loop
        loop.call_soon_threadsafe(wake)

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
