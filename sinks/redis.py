"""RedisStreamSink: append each batch to a Redis stream, the bus between processes and hosts.

::

    load_sink("redis://127.0.0.1:6379/0?stream=events&maxlen=10000")

Each event becomes one stream entry with two fields: ``id`` (the event's own id) and ``event``
(the event as JSON, the shape of ``Event.to_dict()``). A batch is one round trip: a small Lua
script that XADDs every event with approximate ``MAXLEN`` retention. The script is atomic (a
batch is in the stream whole or not at all) and idempotent: each sink numbers its batches and
keeps the number of the last one written in a small key beside the stream
(``<stream>:writer:<sink id>``, expiring after ``dedup_seconds``), so a retry after a reply
that was lost on the way back (the batch *was* written) writes nothing twice.

Errors are classified for the batcher's lane: a lost connection, a timeout, a server that is
loading, read-only, busy or out of memory is transient (retried, then dead-lettered); a wrong
password, a missing permission or a key that is not a stream is permanent (dead-lettered at
once). Needs Redis 7 or newer (one server, or a primary with replicas; not Redis Cluster: the
marker and the stream are two keys of one script) and the ``redis`` extra
(``pip install timelapser-workers[redis]``).
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from timelapser_workers.contract import BaseSink, Event
from timelapser_workers.errors import PermanentSinkError, TransientSinkError
from timelapser_workers.sinks.options import parse_options, redact_url

if TYPE_CHECKING:
    import redis

__all__ = [
    "RedisStreamSink",
    "DEFAULT_STREAM",
    "DEFAULT_MAXLEN",
    "URL_OPTIONS",
    "split_redis_url",
    "connect",
    "is_transient",
    "event_fields",
]

logger = logging.getLogger(__name__)

DEFAULT_STREAM = "timelapser_events"
DEFAULT_MAXLEN = 100_000

#: What a sink URL's query may hold besides the client's own options (see CLIENT_URL_OPTIONS).
URL_OPTIONS: Mapping[str, type] = {
    "stream": str,
    "maxlen": int,
    "approximate": bool,
    "name": str,
    "wants_aggregated": bool,
    "socket_timeout": float,
    "connect_timeout": float,
    "dedup_seconds": int,
}
#: Query options passed on to the redis client as they are (TLS, database, client name).
CLIENT_URL_OPTIONS = frozenset({
    "db", "client_name", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile",
    "ssl_check_hostname", "health_check_interval",
})  # fmt: skip

# Error codes (the first word of a server error) that a retry may get past.
_TRANSIENT_CODES = frozenset({
    "OOM", "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY", "CLUSTERDOWN", "NOREPLICAS",
    "MISCONF", "NOSCRIPT", "UNBLOCKED",
})  # fmt: skip

# KEYS[1] the stream, KEYS[2] this writer's marker. ARGV: maxlen, "~" or "=", the batch number,
# the marker's lifetime (s), then id, json pairs. The shebang makes Redis refuse the whole script
# up front when it is out of memory, instead of failing halfway through a batch.
_APPEND_SCRIPT = """#!lua
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local batch = tonumber(ARGV[3])
if last >= batch then return -1 end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
local n = 0
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], ARGV[1], '*', 'id', ARGV[i], 'event', ARGV[i + 1])
  n = n + 1
end
return n
"""


def _redis_module() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ImportError(
            f"the Redis sink and source need the redis client ({exc}); "
            "install it with: pip install 'timelapser-workers[redis]'"
        ) from None
    return redis


def split_redis_url(url: str, spec: Mapping[str, type] = URL_OPTIONS) -> tuple[str, dict[str, Any]]:
    """Split ``redis://...?stream=x&maxlen=5`` into the client's URL and our typed options.

    Options in ``spec`` are parsed (ValueError naming a bad one); the client's own options
    (:data:`CLIENT_URL_OPTIONS`) stay in the URL; anything else is refused, naming it.
    """
    parts = urlsplit(url)
    shown = redact_url(url)  # every message below: the password never shows
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"Redis URL {shown!r} must start with redis://, rediss:// or unix://")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"option(s) {', '.join(twice)} given more than once in {shown!r}; give each once")
    ours = {k: v for k, v in pairs if k in spec}
    client = [(k, v) for k, v in pairs if k not in spec]
    unknown = sorted(k for k, _ in client if k not in CLIENT_URL_OPTIONS)
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} in {shown!r}; use {', '.join(sorted(spec))}, "
            f"or the client's {', '.join(sorted(CLIENT_URL_OPTIONS))}"
        )
    options = parse_options(spec, ours, where=shown)
    return urlunsplit(parts._replace(query=urlencode(client))), options


def connect(url: str, *, socket_timeout: float, connect_timeout: float, decode: bool = False) -> "redis.Redis":
    """A client for ``url`` (without our options) that never retries by itself: the caller
    decides (the lane for a sink, the read loop for a source). RESP2, so replies have one shape."""
    redis = _redis_module()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(  # type: ignore[no-any-return]
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        protocol=2,
        decode_responses=decode,
    )


def _check_stream(stream: object) -> str:
    if not isinstance(stream, str) or not stream or len(stream) > 1024:
        raise ValueError(f"stream {stream!r} is not a valid stream key; give a non-empty name, e.g. stream=events")
    return stream


def is_transient(exc: BaseException) -> bool:
    """True when a retry may succeed (connection lost, timeout, server loading/busy/read-only/OOM);
    False for what no retry fixes (authentication, permissions, a key of the wrong type)."""
    redis = _redis_module()
    ex = redis.exceptions
    if isinstance(exc, (ex.AuthenticationError, ex.AuthenticationWrongNumberOfArgsError, ex.NoPermissionError)):
        return False
    if isinstance(exc, (ex.ConnectionError, ex.TimeoutError, OSError)):
        return True
    # redis-py turns some error codes into classes (and drops the code from the message)
    if isinstance(exc, (ex.OutOfMemoryError, ex.ReadOnlyError, ex.NoScriptError, ex.TryAgainError,
                        ex.ClusterDownError, ex.MasterDownError)):
        return True
    if isinstance(exc, ex.ResponseError):
        return _error_code(exc) in _TRANSIENT_CODES
    if isinstance(exc, ex.DataError):
        return False
    return True  # unknown: the lane's default


def _error_code(exc: BaseException) -> str:
    text = str(exc)
    marker = "caused error: "  # redis-py prefixes pipeline errors with the command's position
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.split(" ", 1)[0].upper()


def event_fields(event: Event) -> tuple[str, bytes]:
    """The entry's two field values for ``event``: its id and its JSON record."""
    return event.id, event.to_json()  # the payload as encoded where the event was made


class RedisStreamSink(BaseSink):
    """Append every batch to the Redis stream ``stream``, trimmed to about ``maxlen`` entries.

    ``target``: a Redis URL (we make the client and close it) or a ``redis.Redis`` client
    (yours: never closed here). ``approximate``: trim with ``MAXLEN ~`` (whole internal nodes,
    much cheaper; the stream keeps at least ``maxlen``); False trims exactly. ``socket_timeout``
    and ``connect_timeout`` (s) bound every wait. ``dedup_seconds``: how long the batch marker
    lives (a retry later than that may write a batch twice).
    """

    wants_aggregated = True

    def __init__(
        self,
        target: "str | redis.Redis",
        *,
        stream: str = DEFAULT_STREAM,
        maxlen: int = DEFAULT_MAXLEN,
        approximate: bool = True,
        name: str | None = None,
        wants_aggregated: bool = True,
        socket_timeout: float = 5.0,
        connect_timeout: float = 3.0,
        dedup_seconds: int = 86_400,
    ) -> None:
        self.stream = _check_stream(stream)
        if not isinstance(maxlen, int) or isinstance(maxlen, bool) or maxlen < 1:
            raise ValueError(f"maxlen={maxlen!r} must be a positive int: the entries the stream keeps")
        if not isinstance(dedup_seconds, int) or isinstance(dedup_seconds, bool) or dedup_seconds < 1:
            raise ValueError(f"dedup_seconds={dedup_seconds!r} must be a positive int (seconds)")
        for what, value in (("socket_timeout", socket_timeout), ("connect_timeout", connect_timeout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{what}={value!r} must be a positive number of seconds")
        redis = _redis_module()
        if isinstance(target, str):
            url, in_url = split_redis_url(target)
            if in_url:
                raise ValueError(
                    f"option(s) {', '.join(sorted(in_url))} in the URL {redact_url(target)!r}: give them as arguments, "
                    "or build the sink with RedisStreamSink.from_url() / load_sink()"
                )
            self.client = connect(url, socket_timeout=socket_timeout, connect_timeout=connect_timeout)
            self._owns_client = True
            parts = urlsplit(url)
            where = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
        elif isinstance(target, redis.Redis):
            self.client = target
            self._owns_client = False
            where = "client"
        else:
            raise TypeError(f"RedisStreamSink target must be a Redis URL or a redis.Redis client, got {target!r}")
        self.maxlen = maxlen
        self.approximate = approximate
        self.dedup_seconds = dedup_seconds
        self.name = name or f"redis:{self.stream}"
        self.wants_aggregated = wants_aggregated
        self._where = where
        self._script = self.client.register_script(_APPEND_SCRIPT)
        self._new_writer()
        # Counters: what this sink wrote, and how often a retry found its batch already there.
        self.entries_written = 0
        self.batches_written = 0
        self.batches_already_written = 0
        self.errors_transient = 0
        self.errors_permanent = 0

    def _new_writer(self) -> None:
        self.writer_id = uuid.uuid4().hex[:16]
        self.marker_key = f"{self.stream}:writer:{self.writer_id}"
        self._batch_number = 0
        self._pending: tuple[str, str, int] | None = None  # the batch a retry would repeat
        self._pid = os.getpid()

    # --- the contract --------------------------------------------------------------------
    def send(self, batch: Sequence[Event]) -> None:
        """Append ``batch``; TransientSinkError to be retried, PermanentSinkError to refuse it."""
        if not batch:
            return
        identity = (batch[0].id, batch[-1].id, len(batch))
        if identity != self._pending:  # a new batch, not the retry of the one that failed
            self._batch_number += 1
            self._pending = identity
        args: list[Any] = [self.maxlen, "~" if self.approximate else "=", self._batch_number, self.dedup_seconds]
        for event in batch:
            args.extend(event_fields(event))
        try:
            written = self._script(keys=[self.stream, self.marker_key], args=args)
        except Exception as exc:
            if is_transient(exc):
                self.errors_transient += 1
                raise TransientSinkError(f"{self.name} at {self._where}: {_short(exc)}") from exc
            self.errors_permanent += 1
            self._pending = None
            raise PermanentSinkError(f"{self.name} at {self._where}: {_short(exc)}", events=list(batch)) from exc
        self._pending = None
        if written == -1:
            self.batches_already_written += 1
            logger.info("%s: batch %d was already written (a retry after a lost reply)", self.name, self._batch_number)
            return
        self.entries_written += int(written)
        self.batches_written += 1

    def close(self, timeout: float | None = None) -> None:
        """Close the client if this sink made it; a given client is left to its owner."""
        if self._owns_client:
            self.client.close()

    def after_fork_in_child(self) -> None:
        """Forget the parent's connections (without closing them under it); a new writer id."""
        self.client.connection_pool.reset()
        self._new_writer()

    def stats(self) -> dict[str, int]:
        """Entries and batches written, retries that found their batch written, errors."""
        return {
            "entries_written": self.entries_written,
            "batches_written": self.batches_written,
            "batches_already_written": self.batches_already_written,
            "errors_transient": self.errors_transient,
            "errors_permanent": self.errors_permanent,
        }

    # --- loading by URL ------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: Any) -> "RedisStreamSink":
        """Build from ``redis://host:port/db?stream=NAME&maxlen=N`` (options: :data:`URL_OPTIONS`,
        in the query or as keyword arguments; the client's TLS and db options stay in the URL)."""
        client_url, given = split_redis_url(url)
        both = set(given) & set(options)
        if both:
            raise ValueError(f"option(s) {', '.join(sorted(both))} given both in the URL and as arguments")
        typed = parse_options(URL_OPTIONS, options, where=redact_url(url))
        return cls(client_url, **given, **typed)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
