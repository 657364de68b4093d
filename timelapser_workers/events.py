"""The Event record, its priorities, the standard event types, and JSON-safe payloads.

An :class:`Event` is built on the producer's thread by :func:`make_event`, which copies the
payload into plain JSON types (so later changes to the caller's dict cannot leak in, and a bad
value fails there, naming its key path, instead of poisoning a batch later).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import itertools
import math
import os
import pathlib
import time
import uuid
from collections.abc import Mapping
from typing import Any, NamedTuple

from timelapser_workers.lifecycle import after_fork_in_child

__all__ = [
    "Event",
    "Priority",
    "make_event",
    "json_safe",
    "new_event_id",
    "JOB_STARTED",
    "JOB_COMPLETED",
    "JOB_FAILED",
    "JOB_RETRY_SCHEDULED",
    "WORKER_STARTED",
    "WORKER_STOPPED",
    "WORKER_ERROR",
    "WORKER_STATISTICS",
    "JOBS_BATCH_STARTED",
    "JOBS_BATCH_COMPLETED",
    "JOBS_BATCH_FAILED",
    "STANDARD_EVENT_TYPES",
]

# Standard event types: plain strings, never Enum members (f"{member}" is not its value).
JOB_STARTED = "JOB_STARTED"
JOB_COMPLETED = "JOB_COMPLETED"
JOB_FAILED = "JOB_FAILED"
JOB_RETRY_SCHEDULED = "JOB_RETRY_SCHEDULED"
WORKER_STARTED = "WORKER_STARTED"
WORKER_STOPPED = "WORKER_STOPPED"
WORKER_ERROR = "WORKER_ERROR"
WORKER_STATISTICS = "WORKER_STATISTICS"
STANDARD_EVENT_TYPES = (
    JOB_STARTED,
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_RETRY_SCHEDULED,
    WORKER_STARTED,
    WORKER_STOPPED,
    WORKER_ERROR,
    WORKER_STATISTICS,
)
# What aggregation turns groups of the job events into.
JOBS_BATCH_STARTED = "JOBS_BATCH_STARTED"
JOBS_BATCH_COMPLETED = "JOBS_BATCH_COMPLETED"
JOBS_BATCH_FAILED = "JOBS_BATCH_FAILED"

_MAX_DEPTH = 64


class Priority(enum.IntEnum):
    """How urgent an event is; at or above the batcher's ``flush_priority`` it flushes at once."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, value: "Priority | int | str") -> "Priority":
        """Accept a Priority, its int value or its name in any case; raise ValueError otherwise."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        names = ", ".join(p.name for p in cls)
        raise ValueError(f"priority {value!r} is not one of {names} (or 0-3)")


# --- ids -------------------------------------------------------------------------------------
# 12 hex digits of milliseconds since the epoch, 10 of a per-process counter, 8 random per
# process: unique, and string order is creation order within a process (and across processes
# to the millisecond). The counter and the random part are renewed in a forked child.
_id_counter = itertools.count()
_id_node = os.urandom(4).hex()
_id_last_ms = 0


def _reset_id_state() -> None:
    global _id_counter, _id_node, _id_last_ms
    _id_counter = itertools.count()
    _id_node = os.urandom(4).hex()
    _id_last_ms = 0


after_fork_in_child(_reset_id_state)


def new_event_id() -> str:
    """Return a new unique event id whose string order follows creation time."""
    global _id_last_ms
    n = next(_id_counter)  # atomic: unique without a lock
    ms = time.time_ns() // 1_000_000
    if ms < _id_last_ms:  # the wall clock stepped back: keep the order
        ms = _id_last_ms
    else:
        _id_last_ms = ms
    return f"{ms:012x}{n & 0xFFFFFFFFFF:010x}{_id_node}"


# --- JSON-safe payloads ----------------------------------------------------------------------
def _path(base: str, key: Any) -> str:
    return f"{base}[{key!r}]"


def json_safe(value: Any, path: str = "data") -> Any:
    """Return ``value`` as plain JSON types (dict, list, str, int, float, bool, None).

    Decimal becomes a string (exact), datetime/date/time ISO 8601 strings, UUID and Path
    strings, Enum its value, set/frozenset/tuple a list (sets sorted when they can be).
    Anything else raises TypeError naming the key path, e.g. ``data['stats']['when']``.
    NaN and infinities raise ValueError: JSON (and PostgreSQL's JSONB) cannot hold them.
    """
    return _safe(value, path, 0, [0])


_PLAIN = (str, int, type(None), bool)  # copied as they are (bool: only True and False exist)


def _safe(value: Any, path: str, depth: int, size: list[int]) -> Any:
    """The JSON-safe copy of ``value``; adds about how many bytes of JSON it makes to size[0]
    (string lengths, plus 8 per item: close enough to refuse the enormous, cheap enough to
    count on every event)."""
    if value is None or value is True or value is False:
        return value
    cls = type(value)
    if cls is str:
        size[0] += len(value)
        if not value.isascii():
            _check_utf8(value, path)
        return value
    if cls is int:
        return value
    if cls is float:
        if math.isfinite(value):
            return value
        raise ValueError(f"{path} is {value!r}: JSON has no NaN or Infinity; send None or a string")
    if depth > _MAX_DEPTH:
        raise ValueError(f"{path} is nested more than {_MAX_DEPTH} levels deep (a cycle?)")
    if cls is dict or isinstance(value, Mapping):
        out: dict[str, Any] = {}
        n = 8 * len(value)
        for k, v in value.items():
            if type(k) is not str:
                k = _json_key(k, path)
            elif not k.isascii():
                _check_utf8(k, f"{path} key {k[:40]!r}")
            n += len(k)
            # the common case inline: plain values are copied as they are, and a key path is
            # only built (it costs a repr) when there is something to descend into
            if type(v) in _PLAIN:
                out[k] = v
                if v.__class__ is str:
                    n += len(v)
                    if not v.isascii():
                        _check_utf8(v, _path(path, k))
            else:
                out[k] = _safe(v, _path(path, k), depth + 1, size)
        size[0] += n
        return out
    if isinstance(value, (list, tuple)):
        size[0] += 8 * len(value)
        return [_safe(v, f"{path}[{i}]", depth + 1, size) for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        size[0] += 8 * len(value)
        items = [_safe(v, f"{path}[{i}]", depth + 1, size) for i, v in enumerate(value)]
        try:
            items.sort()
        except TypeError:
            pass
        return items
    if isinstance(value, enum.Enum):
        return _safe(value.value, path, depth + 1, size)
    if isinstance(value, bool):  # bool subclasses other than True/False do not exist; keep mypy calm
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return _safe(float(value), path, depth, size)
    if isinstance(value, str):  # a str subclass: keep the plain text
        return _safe(str(value), path, depth, size)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{path} is Decimal({str(value)!r}): JSON has no NaN or Infinity")
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (uuid.UUID, pathlib.PurePath)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        raise TypeError(
            f"{path} is {type(value).__name__}, which JSON cannot hold; decode it or base64 it first"
        )
    raise TypeError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not "
        "JSON-safe; send str, int, float, bool, None, dict, list, Decimal, datetime, UUID, "
        "Enum or Path"
    )


def _check_utf8(text: str, path: str) -> None:
    """Refuse text that has no UTF-8 form (a lone surrogate from a bad decode): no database,
    browser or file could take it, and it would fail a whole batch later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{path} holds {text[exc.start:exc.end]!r} at position {exc.start}, a lone surrogate "
            "with no UTF-8 form; decode the source with errors='replace' or send bytes as base64"
        ) from None


def _json_key(k: Any, path: str) -> str:
    """A mapping key as a JSON object key: str, an Enum's value, or a number as text."""
    if isinstance(k, enum.Enum):
        k = k.value
    if isinstance(k, (int, float)) and not isinstance(k, bool):
        k = str(k)
    if not isinstance(k, str):
        raise TypeError(
            f"{_path(path, k)}: key {k!r} of type {type(k).__name__} is not a string; "
            "JSON object keys must be strings"
        )
    return k


# --- the record ------------------------------------------------------------------------------
class Event(NamedTuple):
    """One thing that happened, ready to deliver. Build it with :func:`make_event`.

    Immutable (a named tuple: building one costs a third of a frozen dataclass, and every
    event is built on a producer's thread). ``created_at`` is wall-clock seconds since the
    epoch (stored and shown); ``created_mono`` is the monotonic clock at creation (used for
    deadlines and latency, never stored). ``members`` holds the original events of an
    aggregated batch event (empty otherwise). Treat ``data`` as read-only: it is the event's
    own copy. ``event.replace(field=value)`` returns a changed copy.
    """

    id: str
    type: str
    data: dict[str, Any]
    source: str | None = None
    worker: str | None = None
    priority: Priority = Priority.NORMAL
    created_at: float = 0.0
    created_mono: float = 0.0
    members: tuple["Event", ...] = ()

    def replace(self, **changes: Any) -> "Event":
        """A copy with ``changes`` applied (the event itself never changes)."""
        return self._replace(**changes)

    def __repr__(self) -> str:
        return (f"Event(id={self.id!r}, type={self.type!r}, worker={self.worker!r}, "
                f"source={self.source!r}, batch_count={self.batch_count}, data={self.data!r})")

    @property
    def batch_count(self) -> int:
        """How many original events this one stands for (1 unless aggregated)."""
        return len(self.members) or 1

    @property
    def created_datetime(self) -> _dt.datetime:
        """``created_at`` as an aware UTC datetime."""
        return _dt.datetime.fromtimestamp(self.created_at, tz=_dt.timezone.utc)

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON types (what sinks store and browsers receive)."""
        return {
            "id": self.id,
            "type": self.type,
            "data": self.data,
            "source": self.source,
            "worker": self.worker,
            "priority": self.priority.name,
            "created_at": self.created_at,
            "batch_count": self.batch_count,
        }


def _check_name(what: str, value: Any, *, required: bool) -> str | None:
    if type(value) is str and value:
        return value
    if isinstance(value, enum.Enum):  # a (str, Enum) member: use its value, not f"{member}"
        value = value.value
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise TypeError(f"event {what} must be a non-empty str, got {value!r}")
    return value


def make_event(
    type: str,
    data: Mapping[str, Any] | None = None,
    *,
    source: str | None = None,
    worker: str | None = None,
    priority: "Priority | int | str" = Priority.NORMAL,
    max_bytes: int | None = None,
) -> Event:
    """Build an Event now: validate, copy ``data`` into JSON types, stamp id and times.

    Raises TypeError or ValueError naming the bad field or key path; nothing is enqueued then.
    ``max_bytes``: refuse (ValueError) data of about more than this many bytes of JSON
    (string lengths plus 8 per item); an EventBatcher passes its ``max_event_bytes``.
    """
    etype = _check_name("type", type, required=True)
    assert etype is not None
    if data is None:
        payload: dict[str, Any] = {}
    elif data.__class__ is dict or isinstance(data, Mapping):
        size = [0]
        payload = _safe(data, "data", 0, size)
        if max_bytes is not None and size[0] > max_bytes:
            raise ValueError(
                f"{etype} event data is about {size[0]:,} bytes of JSON, over "
                f"max_event_bytes={max_bytes:,}; send a reference (a path, a URL, an id) "
                "instead of the content, or raise the limit"
            )
    else:
        raise TypeError(f"event data must be a mapping, got {type_name(data)}")
    return Event(
        id=new_event_id(),
        type=etype,
        data=payload,
        source=_check_name("source", source, required=False),
        worker=_check_name("worker", worker, required=False),
        priority=priority if priority.__class__ is Priority else Priority.parse(priority),
        created_at=time.time(),
        created_mono=time.monotonic(),
    )


def type_name(value: Any) -> str:
    """The qualified type name of ``value``, for error messages."""
    return f"{type(value).__module__}.{type(value).__qualname__}"
