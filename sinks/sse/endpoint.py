"""What the WSGI and ASGI apps share: read a request, check it, authorize it, open a stream.

Query parameters (each may repeat; several fields must all match):

    worker=NAME   source=NAME   type=NAME   lastEventId=ID (same as the Last-Event-ID header)

Anything else is refused with 400 naming the bad parameter or value; the hub being full gives
503; the authorization hook gives 401 or 403 by raising :class:`SSERefused`.

Without ``authorize`` the stream is public: every client that reaches it sees every event.
When the server ends a stream on purpose (it is stopping, or ``disconnect_all``), the last frame
is a ``retry`` hint between ``retry_milliseconds`` and twice that (so a thousand browsers do not
come back in the same instant) and a comment saying why; the browser then reconnects, here or
to another server, with ``Last-Event-ID``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import urllib.parse
from typing import Any, Callable, Iterable, Mapping, Sequence

from timelapser_workers.sinks.sse.framing import comment_frame, retry_frame
from timelapser_workers.sinks.sse import stopping
from timelapser_workers.sinks.sse.hub import HubFullError, SSEClient, SSEHub, Subscription
from timelapser_workers.errors import SSERefused

__all__ = ["SSERequest", "Refusal", "Stream", "SSEEndpoint", "Authorize", "QUERY_PARAMETERS"]

log = logging.getLogger(__name__)

QUERY_PARAMETERS = ("worker", "source", "type", "lastEventId")
_MAX_VALUE_CHARS = 256
_FIELDS = {"worker": "workers", "source": "sources", "type": "types"}


@dataclasses.dataclass(frozen=True)
class SSERequest:
    """The parts of an HTTP request the endpoint uses; ``raw`` is the WSGI environ or ASGI scope.

    ``headers`` has lower-case names. ``query`` is the raw query string (percent-encoded).
    """

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    remote: str | None = None
    raw: Any = None

    def header(self, name: str, default: str | None = None) -> str | None:
        """The header ``name`` (any case), or ``default``."""
        return self.headers.get(name.lower(), default)


#: The authorization hook: given the request, return the channels the client may see
#: ("worker:NAME", "source:NAME", "type:NAME", "*"), None for everything, or raise SSERefused.
#: (True also means everything, False refuses with 403.)
Authorize = Callable[[SSERequest], "Iterable[str] | bool | None"]


@dataclasses.dataclass
class Refusal:
    """A plain HTTP answer instead of a stream (errors, CORS preflight)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status_line(self) -> str:
        """``"403 Forbidden"``, as WSGI wants it."""
        return f"{self.status} {_REASONS.get(self.status, 'Error')}"


@dataclasses.dataclass
class Stream:
    """An open event stream: headers to send, the first bytes, and the hub client to drain."""

    client: SSEClient
    headers: list[tuple[str, str]]
    first: bytes
    keepalive_seconds: float
    hub: SSEHub
    retry_milliseconds: int = 3000

    def goodbye(self) -> bytes:
        """The last frame of a stream the server ends on purpose (empty for a slow client)."""
        if not self.client.reconnect:
            return b""
        wait = self.retry_milliseconds + random.randint(0, max(self.retry_milliseconds, 1))
        return retry_frame(wait) + comment_frame(f"{self.client.closed_reason}: reconnect")

    def close(self) -> None:
        """Unregister the client (idempotent); call when the connection ends for any reason."""
        self.hub.unsubscribe(self.client)


_REASONS = {
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(ValueError):
    """A query parameter or header the endpoint cannot accept; the message names it."""


def _check_value(what: str, value: str) -> str:
    if not value:
        raise BadRequest(f"{what} is empty; give a name, or leave the parameter out")
    if len(value) > _MAX_VALUE_CHARS:
        raise BadRequest(f"{what} is {len(value)} characters long; at most {_MAX_VALUE_CHARS} allowed")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadRequest(f"{what} {value!r} contains control characters")
    return value


def parse_query(query: str) -> tuple[Subscription, str | None]:
    """Parse the query string into a Subscription and a lastEventId; raise BadRequest naming it."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"query string {query[:200]!r} does not decode as UTF-8 ({exc})") from None
    wanted: dict[str, set[str]] = {}
    last_id: str | None = None
    for key, value in pairs:
        if key == "lastEventId":
            last_id = _check_value("query parameter lastEventId", value)
        elif key in _FIELDS:
            wanted.setdefault(_FIELDS[key], set()).add(_check_value(f"query parameter {key}", value))
        else:
            raise BadRequest(
                f"unknown query parameter {key[:100]!r}; use {', '.join(QUERY_PARAMETERS)}"
            )
    sub = Subscription(**{k: frozenset(v) for k, v in wanted.items()})
    return sub, last_id


class SSEEndpoint:
    """The HTTP behaviour of the SSE endpoint, independent of WSGI or ASGI.

    ``authorize``: see :data:`Authorize`. ``cors_origins``: None (no CORS headers), ``"*"``, or
    the allowed origins. ``keepalive_seconds``: a comment line this often on an idle stream
    (also how soon a vanished client is noticed under WSGI). ``retry_milliseconds``: the
    browser's reconnect delay hint.
    """

    def __init__(
        self,
        hub: SSEHub,
        *,
        authorize: Authorize | None = None,
        cors_origins: str | Sequence[str] | None = None,
        cors_allow_credentials: bool = False,
        keepalive_seconds: float = 15.0,
        retry_milliseconds: int = 3000,
    ) -> None:
        if not keepalive_seconds > 0:
            raise ValueError(f"keepalive_seconds must be > 0, got {keepalive_seconds!r}")
        if not isinstance(retry_milliseconds, int) or retry_milliseconds < 0:
            raise ValueError(f"retry_milliseconds must be an int >= 0, got {retry_milliseconds!r}")
        if isinstance(cors_origins, str) and cors_origins != "*":
            cors_origins = [cors_origins]
        if cors_origins is not None and cors_origins != "*":
            cors_origins = [_check_origin(o, cors_allow_credentials) for o in cors_origins]
        if cors_origins == "*" and cors_allow_credentials:
            raise ValueError(
                'cors_origins="*" with cors_allow_credentials=True would let any website read the '
                "stream with your users' cookies; list the origins that may "
                '(cors_origins=["https://dashboard.example"]) or drop the credentials'
            )
        self.hub = hub
        self.authorize = authorize
        self.cors_origins = cors_origins
        self.cors_allow_credentials = cors_allow_credentials
        self.keepalive_seconds = float(keepalive_seconds)
        self.retry_milliseconds = retry_milliseconds

    def _cors(self, request: SSERequest) -> list[tuple[str, str]]:
        origin = request.header("origin")
        if not origin or self.cors_origins is None:
            return []
        if self.cors_origins == "*" and not self.cors_allow_credentials:
            return [("Access-Control-Allow-Origin", "*")]
        if origin in self.cors_origins:
            headers = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
            if self.cors_allow_credentials:
                headers.append(("Access-Control-Allow-Credentials", "true"))
            return headers
        return []

    def _refuse(self, request: SSERequest, status: int, message: str,
                extra: Sequence[tuple[str, str]] = ()) -> Refusal:
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Cache-Control", "no-store")]
        headers += list(extra) + self._cors(request)
        return Refusal(status, headers, (message + "\n").encode("utf-8"))

    def open(self, request: SSERequest) -> Refusal | Stream:
        """Answer ``request``: a Stream to drain, or a Refusal to send as it is. Never raises."""
        try:
            return self._open(request)
        except Exception:
            log.exception("SSE endpoint failed on %s %s?%s", request.method, request.path, request.query)
            return self._refuse(request, 500, "internal error opening the event stream")

    def _open(self, request: SSERequest) -> Refusal | Stream:
        if request.method == "OPTIONS":
            cors = self._cors(request)
            if cors:
                cors += [
                    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
                    ("Access-Control-Allow-Headers", "Last-Event-ID, Authorization, Cache-Control"),
                    ("Access-Control-Max-Age", "600"),
                ]
            return Refusal(204, cors, b"")
        if request.method != "GET":
            return self._refuse(
                request, 405, f"method {request.method!r} not allowed; use GET", [("Allow", "GET, OPTIONS")]
            )
        try:
            subscription, last_id = parse_query(request.query)
            header_id = request.header("last-event-id")
            if header_id is not None:
                # the header wins: the browser sends it on reconnect, with the newest id it saw
                last_id = _check_value("header Last-Event-ID", header_id.strip()) if header_id.strip() else None
        except BadRequest as exc:
            return self._refuse(request, 400, f"bad request: {exc}")
        if self.authorize is not None:
            try:
                allowed = self.authorize(request)
            except SSERefused as exc:
                extra = [("WWW-Authenticate", "Bearer")] if exc.status == 401 else []
                return self._refuse(request, exc.status, str(exc), extra)
            if allowed is False:
                return self._refuse(request, 403, "forbidden")
            if allowed is not None and allowed is not True:
                allowed_set = frozenset(allowed)
                denied = _denied(subscription, allowed_set)
                if denied:
                    return self._refuse(
                        request, 403, f"channel {denied!r} is not permitted for this client"
                    )
                subscription = dataclasses.replace(subscription, allowed=allowed_set)
        try:
            client = self.hub.subscribe(subscription, last_id)
        except HubFullError as exc:
            return self._refuse(request, 503, str(exc), [("Retry-After", "5")])
        except RuntimeError:
            # the server is stopping: a 503 would make EventSource give up for good, so answer
            # with a stream that ends at once with the retry hint (the browser comes back, on a
            # new connection, to a server that is not stopping)
            client = SSEClient(self.hub, 0, subscription, 1)
            client.closed_reason = "server stopping"
        headers = [
            ("Content-Type", "text/event-stream; charset=utf-8"),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),
        ] + self._cors(request)
        first = retry_frame(self.retry_milliseconds) + comment_frame(f"connected, client {client.number}")
        if not client.closed:
            stopping.watch(self.hub)
        return Stream(client, headers, first, self.keepalive_seconds, self.hub, self.retry_milliseconds)


def _check_origin(origin: object, credentials: bool) -> str:
    """An origin as browsers send it: ``scheme://host[:port]``, no path; ``*`` only alone."""
    if not isinstance(origin, str):
        raise ValueError(f"cors_origins must hold origin strings, got {origin!r}")
    if origin == "*":
        raise ValueError('give cors_origins="*" on its own (not inside a list), and never with credentials')
    parts = urllib.parse.urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(
            f"CORS origin {origin!r} is not an origin; write it as the browser sends it, "
            "e.g. 'https://dashboard.example' or 'http://localhost:3000' (no path, no slash)"
        )
    return origin


def resolve_endpoint(
    hub: SSEHub | None, endpoint: SSEEndpoint | None, options: dict[str, Any], owner: str
) -> SSEEndpoint:
    """The endpoint an app serves: ``endpoint`` as given, or one built from ``hub`` and options."""
    if endpoint is None:
        if hub is None:
            raise TypeError(f"{owner} needs a hub (or an endpoint)")
        return SSEEndpoint(hub, **options)
    if options or hub is not None:
        raise TypeError(f"give {owner} either an endpoint or a hub with options, not both")
    return endpoint


def _denied(subscription: Subscription, allowed: frozenset[str]) -> str | None:
    """The first channel the client asked for that ``allowed`` rules out, if any.

    Asking for a worker (source, type) is refused when the allowed channels name workers
    (sources, types) and not this one; asking by another kind only narrows what is allowed.
    """
    if "*" in allowed:
        return None
    for prefix, names in (
        ("worker", subscription.workers),
        ("source", subscription.sources),
        ("type", subscription.types),
    ):
        kind = {c for c in allowed if c.startswith(prefix + ":")}
        for name in sorted(names or ()):
            if kind and f"{prefix}:{name}" not in kind:
                return f"{prefix}:{name}"
    return None


KEEPALIVE = comment_frame("keep-alive")
