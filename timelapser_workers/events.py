"""The Event record, its priorities, the standard event types, and how an event is made.

An :class:`Event` is built on the producer's thread by :func:`make_event`, which validates the
payload and encodes it once, to compact JSON bytes (payload.py): later changes to the caller's
dict cannot leak in, a bad value fails there, naming its key path, instead of poisoning a batch
later, and every sink (database COPY, SQLite, SSE frames, dead letters, the spool) writes those
same bytes instead of encoding the data again. ``event.data`` decodes them for code that wants
a dict.
"""

from __future__ import annotations

import datetime as _dt
import enum
import itertools
import os
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import orjson

from timelapser_workers.lifecycle import after_fork_in_child
from timelapser_workers.payload import encode_payload, json_safe

__all__ = [
    "Event",
    "Priority",
    "make_event",
    "json_safe",
    "new_event_id",
    "type_name",
    "build_event",
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


def _event_id(now: float) -> str:
    """The id of an event made at ``now`` (time.time())."""
    global _id_last_ms
    n = next(_id_counter)  # atomic: unique without a lock
    ms = int(now * 1000.0)
    if ms > _id_last_ms:
        _id_last_ms = ms
    elif ms < _id_last_ms:  # the wall clock stepped back: keep the order
        ms = _id_last_ms
    return (ms << 40 | (n & 0xFFFFFFFFFF)).to_bytes(11, "big").hex() + _id_node


def new_event_id() -> str:
    """Return a new unique event id whose string order follows creation time."""
    return _event_id(time.time())


# --- the record ------------------------------------------------------------------------------
class Event(NamedTuple):
    """One thing that happened, ready to deliver. Build it with :func:`make_event`.

    Immutable (a named tuple: cheap to build on a producer's thread, free to share between
    sinks). ``payload`` is the data as compact JSON bytes, encoded once where the event was
    made; ``data`` decodes it (a new dict on every access: keep it if you read it often).
    ``created_at`` is wall-clock seconds since the epoch (stored and shown); ``created_mono``
    the monotonic clock at creation (deadlines and latency, never stored). ``job_id`` is the
    data's ``job_id`` when it is a string or a number (aggregation orders and lists by it).
    ``members`` holds the original events of an aggregated batch event (empty otherwise).
    ``event.replace(field=value)`` returns a changed copy.
    """

    id: str
    type: str
    payload: bytes
    source: str | None = None
    worker: str | None = None
    priority: Priority = Priority.NORMAL
    created_at: float = 0.0
    created_mono: float = 0.0
    members: tuple["Event", ...] = ()
    job_id: str | int | float | None = None

    @property
    def data(self) -> dict[str, Any]:
        """The event's data, decoded from ``payload`` (a new dict on every access)."""
        data: dict[str, Any] = orjson.loads(self.payload)
        return data

    def replace(self, **changes: Any) -> "Event":
        """A copy with ``changes`` applied (the event itself never changes); ``data=`` is
        validated and encoded as in :func:`make_event`."""
        if "data" in changes:
            data = changes.pop("data")
            changes["payload"] = encode_payload(data)
            changes["job_id"] = _job_id(data)
        return self._replace(**changes)

    def __repr__(self) -> str:
        return (f"Event(id={self.id!r}, type={self.type!r}, worker={self.worker!r}, "
                f"source={self.source!r}, batch_count={self.batch_count}, "
                f"data={self.payload.decode('utf-8', 'replace')})")

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

    def to_json(self) -> bytes:
        """``to_dict()`` as compact JSON bytes, the payload spliced in as it is (not re-encoded)."""
        return orjson.dumps({
            "id": self.id, "type": self.type, "data": orjson.Fragment(self.payload),
            "source": self.source, "worker": self.worker, "priority": self.priority.name,
            "created_at": self.created_at, "batch_count": len(self.members) or 1,
        })


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


def _job_id(data: Mapping[str, Any] | None) -> str | int | float | None:
    """``data['job_id']`` when it is a plain string or number (JSON keeps it as it is)."""
    if not data:
        return None
    job = data.get("job_id")
    cls = job.__class__
    return job if cls is int or cls is str or cls is float else None


def make_event(
    type: str,
    data: Mapping[str, Any] | None = None,
    *,
    source: str | None = None,
    worker: str | None = None,
    priority: "Priority | int | str" = Priority.NORMAL,
    max_bytes: int | None = None,
) -> Event:
    """Build an Event now: validate and encode ``data`` (payload.py), stamp id and times.

    Raises TypeError or ValueError naming the bad field or key path; nothing is enqueued then.
    ``max_bytes``: refuse (ValueError) data whose JSON is more than this many bytes; an
    EventBatcher passes its ``max_event_bytes``.
    """
    if type.__class__ is not str or not type:
        type = _check_name("type", type, required=True)  # type: ignore[assignment]
    return build_event(type, data, source, worker, priority, max_bytes)


_new_tuple = tuple.__new__
_now, _monotonic = time.time, time.monotonic


def build_event(etype: str, data: Mapping[str, Any] | None, source: str | None, worker: str | None,
                priority: "Priority | int | str", max_bytes: int | None) -> Event:
    """:func:`make_event` for callers that know ``etype`` is a non-empty str (a signal's
    name): the hot path of every producer, so it is written for speed."""
    if source is not None and (source.__class__ is not str or not source):
        source = _check_name("source", source, required=False)
    if worker is not None and (worker.__class__ is not str or not worker):
        worker = _check_name("worker", worker, required=False)
    if priority.__class__ is not Priority:
        priority = Priority.parse(priority)
    if data is None:
        payload, job = b"{}", None
    elif data.__class__ is dict or isinstance(data, Mapping):
        payload = encode_payload(data)
        if max_bytes is not None and len(payload) > max_bytes:
            raise ValueError(
                f"{etype} event data is {len(payload):,} bytes of JSON, over "
                f"max_event_bytes={max_bytes:,}; send a reference (a path, a URL, an id) "
                "instead of the content, or raise the limit"
            )
        job = data.get("job_id")
        if not (job.__class__ is int or job.__class__ is str or job.__class__ is float):
            job = None
    else:
        raise TypeError(f"event data must be a mapping, got {type_name(data)}")
    now = _now()
    return _new_tuple(Event, (_event_id(now), etype, payload, source, worker, priority, now,
                              _monotonic(), (), job))


def type_name(value: Any) -> str:
    """The qualified type name of ``value``, for error messages."""
    return f"{value.__class__.__module__}.{value.__class__.__qualname__}"
