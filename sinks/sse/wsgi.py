"""The SSE endpoint as a WSGI app (gunicorn gthread, mounted in Flask), no framework; and a small
threaded wsgiref server for the dashboard, the demo and tests (not a production server).

Each open stream holds one server thread: it writes what the hub queued for its client, or a
keep-alive comment every ``keepalive_seconds``. A vanished client is noticed at the next write
(at the latest one keep-alive later); the server then calls ``close()`` on the body, which frees
the client. A stream the server ends on purpose ends with a ``retry`` hint (see endpoint).

:func:`make_server` bounds what one connection may hold: the request line and headers must
arrive within ``request_timeout_seconds`` in all (a client trickling bytes is cut off), a write
blocked by a client that stops reading fails after ``write_timeout_seconds``, and at most
``max_connections`` connections are served at once (more are closed at once). Header names with
an underscore are dropped, as gunicorn and nginx do: ``X_Remote_User`` cannot pose as
``X-Remote-User``. For production, serve the app with gunicorn (``-k gthread``) or behind it.
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import threading
import time
import wsgiref.simple_server
from typing import Any, Callable, Iterable, Iterator

from timelapser_workers.sinks.sse.endpoint import KEEPALIVE, Refusal, SSEEndpoint, SSERequest, Stream, resolve_endpoint
from timelapser_workers.sinks.sse.hub import SSEHub

__all__ = ["SSEWsgiApp", "make_server", "ServerThread", "request_from_environ"]

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]

#: The environ key under which :func:`make_server`'s server lists the streams it carries.
_STREAMS_KEY = "timelapser.sse.streams"
#: The main thread waits in slices this long: a server's signal handler (gunicorn's sync
#: worker) runs in the main thread, and only between two slices.
_MAIN_THREAD_SLICE = 0.25


def request_from_environ(environ: dict[str, Any]) -> SSERequest:
    """The SSERequest for a WSGI environ (header names lower-case, dashes)."""
    headers = {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    # WSGI gives the raw query bytes as latin-1 text; percent escapes are decoded later as UTF-8
    query = environ.get("QUERY_STRING", "")
    try:
        query = query.encode("latin-1").decode("utf-8")
    except UnicodeError:
        pass
    return SSERequest(
        method=environ.get("REQUEST_METHOD", "GET").upper(),
        path=environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        query=query,
        headers=headers,
        remote=environ.get("REMOTE_ADDR"),
        raw=environ,
    )


class _Body:
    """The response body of one stream: an iterator the server drains until the client goes."""

    def __init__(self, stream: Stream, registry: "set[_Body] | None") -> None:
        self.stream = stream
        self._first: bytes | None = stream.first
        self._done = False
        self._registry = registry
        if registry is not None:
            registry.add(self)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        client = self.stream.client
        if self._done:
            raise StopIteration
        if self._first is not None:
            first, self._first = self._first, None
            return first + b"".join(client.take())
        main = threading.current_thread() is threading.main_thread()
        deadline = time.monotonic() + self.stream.keepalive_seconds
        while True:
            frames = client.take()
            if frames:
                return b"".join(frames)
            if client.closed:
                self._done = True
                last = self.stream.goodbye()
                if last:
                    return last
                raise StopIteration
            left = deadline - time.monotonic()
            if left <= 0:
                return KEEPALIVE
            client.wait(min(left, _MAIN_THREAD_SLICE) if main else left)

    def close(self) -> None:
        if self._registry is not None:
            self._registry.discard(self)
        self.stream.close()


class SSEWsgiApp:
    """A WSGI app that serves the hub's events as ``text/event-stream``.

    Takes the hub and the :class:`SSEEndpoint` options (authorize, cors_origins,
    keepalive_seconds, retry_milliseconds), or a ready ``endpoint``.
    """

    def __init__(self, hub: SSEHub | None = None, *, endpoint: SSEEndpoint | None = None, **options: Any) -> None:
        self.endpoint = resolve_endpoint(hub, endpoint, options, "SSEWsgiApp")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        result = self.endpoint.open(request_from_environ(environ))
        if isinstance(result, Refusal):
            headers = result.headers + [("Content-Length", str(len(result.body)))]
            start_response(result.status_line, headers)
            return [result.body] if environ.get("REQUEST_METHOD") != "HEAD" else []
        try:
            start_response("200 OK", result.headers)
        except BaseException:
            result.close()
            raise
        return _Body(result, environ.get(_STREAMS_KEY))


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose reads fail once the request's deadline has passed."""

    def __init__(self, sock: socket.socket, read_timeout: float) -> None:
        self.sock = sock
        self.read_timeout = read_timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self.read_timeout
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request was not read within its deadline")
            timeout = min(timeout, left)
        self.sock.settimeout(timeout)
        return self.sock.recv_into(buffer)


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    timeout = 10.0  # socket timeout: a write blocked this long by a client that stops reading fails
    request_timeout = 5.0  # the request line and the headers, in all

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection, self.timeout)
        self._reader.deadline = time.monotonic() + self.request_timeout
        self.rfile = io.BufferedReader(self._reader, 65536)

    def handle(self) -> None:
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.parse_request():
                return
        except (TimeoutError, OSError) as exc:
            log.debug("request from %s not read: %s", self.client_address[0], exc)
            return
        self._reader.deadline = None  # the request is in; the body (if any) reads as usual
        self.connection.settimeout(self.timeout)
        handler = wsgiref.simple_server.ServerHandler(
            self.rfile, self.wfile, self.get_stderr(), self.get_environ(), multithread=True  # type: ignore[arg-type]
        )
        handler.request_handler = self  # type: ignore[attr-defined]
        handler.run(self.server.get_app())  # type: ignore[attr-defined]

    def get_environ(self) -> dict[str, Any]:
        env: dict[str, Any] = super().get_environ()
        for name in self.headers.keys():
            if "_" in name:  # as gunicorn and nginx: never let X_User pose as X-User
                env.pop("HTTP_" + name.replace("-", "_").upper(), None)
        env[_STREAMS_KEY] = getattr(self.server, "sse_streams", None)
        return env

    def log_message(self, format: str, *args: Any) -> None:  # wsgiref writes to stderr otherwise
        log.debug("%s - %s", self.address_string(), format % args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
    max_connections = 1024

    def server_activate(self) -> None:
        super().server_activate()
        self.sse_streams: set[_Body] = set()
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.connections_refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.connections_refused += 1
            log.warning("connection from %s refused: %d connections open (max_connections)",
                        client_address[0], self.max_connections)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("SSE connection from %s ended with an error", client_address, exc_info=True)


def make_server(
    app: Callable[..., Iterable[bytes]],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    write_timeout_seconds: float = 10.0,
    request_timeout_seconds: float = 5.0,
    max_connections: int = 1024,
) -> wsgiref.simple_server.WSGIServer:
    """A threaded wsgiref server for ``app`` on ``host:port`` (port 0: pick a free one).

    For the dashboard, the demo and tests; not a production server (see the module docstring
    for its bounds; in production use gunicorn ``-k gthread`` or uvicorn with the ASGI app).
    ``server.server_address[1]`` is the port; run it with ``serve_forever()`` (or
    :class:`ServerThread`) and stop it with ``shutdown()`` then ``server_close()``.
    """
    for name, value in (("write_timeout_seconds", write_timeout_seconds),
                        ("request_timeout_seconds", request_timeout_seconds),
                        ("max_connections", max_connections)):
        if not value > 0:
            raise ValueError(f"make_server {name} must be > 0, got {value!r}")
    handler = type("SSEHandler", (_Handler,), {"timeout": write_timeout_seconds,
                                                "request_timeout": request_timeout_seconds})
    server_class = type("SSEServer", (_ThreadingWSGIServer,), {"max_connections": int(max_connections)})
    server: wsgiref.simple_server.WSGIServer = server_class((host, port), handler)
    server.set_app(app)
    return server


class ServerThread:
    """Run a :func:`make_server` server on a daemon thread; ``stop()`` ends it within a deadline."""

    def __init__(self, server: wsgiref.simple_server.WSGIServer) -> None:
        self.server = server
        self.thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="sse-wsgi-server", daemon=True
        )

    @property
    def url(self) -> str:
        """``http://host:port``."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> "ServerThread":
        self.thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end the open streams (each gets its last ``retry`` hint), close."""
        deadline = time.monotonic() + timeout
        self.server.shutdown()
        streams: set[_Body] = getattr(self.server, "sse_streams", set())
        for body in list(streams):
            body.stream.hub.disconnect(body.stream.client, "server stopping")
        end = min(deadline, time.monotonic() + 2.0)
        while streams and time.monotonic() < end:
            time.sleep(0.02)
        self.server.server_close()
        self.thread.join(max(0.0, deadline - time.monotonic()))
