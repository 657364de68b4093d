"""The SSE endpoint as a WSGI app (wsgiref, gunicorn threads, mounted in Flask), no framework.

Each open stream holds one server thread: it writes what the hub queued for its client, or a
keep-alive comment every ``keepalive_seconds``. A vanished client is noticed at the next write
(at the latest one keep-alive later); the server then calls ``close()`` on the body, which frees
the client. :func:`make_server` gives a threaded wsgiref server whose writes time out, so a
client that stops reading cannot hold a thread for longer than ``write_timeout_seconds``.
"""

from __future__ import annotations

import logging
import socketserver
import threading
import wsgiref.simple_server
from typing import Any, Callable, Iterable, Iterator

from timelapser_workers.sinks.sse.endpoint import KEEPALIVE, Refusal, SSEEndpoint, SSERequest, Stream, resolve_endpoint
from timelapser_workers.sinks.sse.hub import SSEHub

__all__ = ["SSEWsgiApp", "make_server", "ServerThread"]

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


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

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self._first: bytes | None = stream.first

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        client = self.stream.client
        if self._first is not None:
            first, self._first = self._first, None
            return first + b"".join(client.take())
        while True:
            frames = client.take()
            if frames:
                return b"".join(frames)
            if client.closed:
                raise StopIteration
            if not client.wait(self.stream.keepalive_seconds):
                return KEEPALIVE

    def close(self) -> None:
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
        return _Body(result)


class _Handler(wsgiref.simple_server.WSGIRequestHandler):
    timeout = 10.0  # socket timeout: a write blocked this long by a client that stops reading fails

    def log_message(self, format: str, *args: Any) -> None:  # wsgiref writes to stderr otherwise
        log.debug("%s - %s", self.address_string(), format % args)


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("SSE connection from %s ended with an error", client_address, exc_info=True)


def make_server(
    app: Callable[..., Iterable[bytes]],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    write_timeout_seconds: float = 10.0,
) -> wsgiref.simple_server.WSGIServer:
    """A threaded wsgiref server for ``app`` on ``host:port`` (port 0: pick a free one).

    ``server.server_address[1]`` is the port; run it with ``serve_forever()`` (or
    :class:`ServerThread`) and stop it with ``shutdown()`` then ``server_close()``.
    """
    handler = type("SSEHandler", (_Handler,), {"timeout": write_timeout_seconds})
    server = wsgiref.simple_server.make_server(
        host, port, app, server_class=_ThreadingWSGIServer, handler_class=handler
    )
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
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout)
