"""The event <-> row codec: an Event as a row of the events table, in each form a writer sends,
and a row read back as a record shaped like ``Event.to_dict()``.

One column list (:data:`EVENT_COLUMNS`, in COPY order) and one mapping from the Event's fields
to those columns (:func:`event_values`). The forms differ only in how they encode two values,
the JSON ``data`` and the ``created_at`` time:

==================  ==================================  ====================================  ====================
form                data                                created_at                            written by
==================  ==================================  ====================================  ====================
:func:`event_row`   the dict (decoded from the payload)  aware UTC datetime                    SQLAlchemy's INSERT
:func:`sqlite_rows` the payload as it is (JSON text)     ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC)  pysqlite executemany
:func:`copy_buffer` the payload as it is, COPY-escaped   ISO 8601 with its ``+00:00`` offset   PostgreSQL COPY
==================  ==================================  ====================================  ====================

The payload is the data's compact JSON, encoded once where the event was made: SQLite and COPY
store those bytes as they are (no second encoding); the SQLite times are the text SQLAlchemy's
DateTime type stores, without its per-row processing, which costs as much as the insert.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import math
import operator
from typing import Any, Callable, Sequence

from timelapser_workers.events import Event

__all__ = [
    "EVENT_COLUMNS",
    "event_values",
    "event_row",
    "sqlite_rows",
    "copy_text",
    "copy_buffer",
    "utc_text",
    "row_record",
]

# column          the Event attribute it holds (dotted: an attribute of an attribute)
_FIELDS = (
    ("event_id", "id"),
    ("type", "type"),
    ("data", "data"),
    ("priority", "priority.name"),
    ("source", "source"),
    ("worker", "worker"),
    ("created_at", "created_datetime"),
    ("batch_count", "batch_count"),
)

# The columns a writer fills (``id`` and ``inserted_at`` come from the database), in COPY order.
EVENT_COLUMNS: tuple[str, ...] = tuple(column for column, _ in _FIELDS)

event_values: Callable[[Event], tuple[Any, ...]] = operator.attrgetter(*(attr for _, attr in _FIELDS))
"""``event_values(event)``: the event's column values in :data:`EVENT_COLUMNS` order, as Python
values (``data`` a dict, ``priority`` its name, ``created_at`` an aware UTC datetime)."""

def event_row(event: Event) -> dict[str, Any]:
    """The row for ``event`` as a dict of :data:`EVENT_COLUMNS` (for a SQLAlchemy INSERT)."""
    return dict(zip(EVENT_COLUMNS, event_values(event)))


_UTC = _dt.timezone.utc
_seconds: dict[int, tuple[str, str]] = {}  # whole seconds seen lately -> UTC date and time text


def utc_text(timestamp: float, sep: str = " ") -> str:
    """``timestamp`` as UTC ``YYYY-MM-DD HH:MM:SS.ffffff``, exactly as
    ``datetime.fromtimestamp(timestamp, utc)`` would print it (the microseconds rounded half
    to even), at a third of its cost: a batch's events share a handful of seconds, and each
    second is worked out once."""
    frac, whole = math.modf(timestamp)
    micro = round(frac * 1e6)
    second = int(whole)
    if micro < 0:
        second, micro = second - 1, micro + 1_000_000
    elif micro >= 1_000_000:
        second, micro = second + 1, micro - 1_000_000
    text = _seconds.get(second)
    if text is None:
        if len(_seconds) > 4096:
            _seconds.clear()
        when = _dt.datetime.fromtimestamp(second, _UTC)
        text = _seconds[second] = (f"{when:%Y-%m-%d}", f"{when:%H:%M:%S}")
    return f"{text[0]}{sep}{text[1]}.{micro:06d}"


def sqlite_rows(batch: Sequence[Event]) -> list[tuple[Any, ...]]:
    """The rows of ``batch`` as tuples for ``?`` params: the payload as JSON text, times as the
    text SQLAlchemy stores on SQLite."""
    return [
        (e.id, e.type, e.payload.decode(), e.priority.name, e.source, e.worker, utc_text(e.created_at),
         len(e.members) or 1)
        for e in batch
    ]


def copy_text(value: Any) -> str:
    """``value`` as a field of PostgreSQL's COPY text format: ``\\N`` is NULL; backslash, tab,
    newline and carriage return are escaped."""
    if value is None:
        return "\\N"
    s = value if isinstance(value, str) else str(value)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s


def copy_buffer(batch: Sequence[Event]) -> io.StringIO:
    """The rows of ``batch`` as COPY text (columns :data:`EVENT_COLUMNS`), ready for
    ``copy_expert``; the data column is each event's payload, escaped for COPY."""
    lines = [
        "\t".join((copy_text(e.id), copy_text(e.type), copy_text(e.payload.decode()), e.priority.name,
                   copy_text(e.source), copy_text(e.worker), utc_text(e.created_at, "T") + "+00:00",
                   str(len(e.members) or 1)))
        for e in batch
    ]  # fmt: skip
    lines.append("")
    text = "\n".join(lines)
    if not text.isascii():
        # text with no UTF-8 form (a lone surrogate in a name; data is checked at the edge)
        # raises UnicodeEncodeError here, a row error the sink splits the batch on, instead of
        # failing inside the driver's COPY as a cancelled query (transient: retried for ever)
        text.encode("utf-8")
    return io.StringIO(text)


# --- reading back ------------------------------------------------------------------------------
def _epoch(value: Any) -> float | None:
    """A stored time (datetime, ISO text, or a number) as seconds since the epoch."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, _dt.datetime):
        when: _dt.datetime = value
        if when.tzinfo is None:  # SQLite keeps UTC text without an offset
            when = when.replace(tzinfo=_dt.timezone.utc)
        return when.timestamp()
    try:
        return _epoch(_dt.datetime.fromisoformat(str(value)))
    except ValueError:
        return None


def row_record(row: Any) -> dict[str, Any]:
    """A row read back (attributes named like :data:`EVENT_COLUMNS`) as a record shaped like
    ``Event.to_dict()``: ``data`` decoded (text that is not JSON becomes ``{"raw": text}``),
    ``created_at`` seconds since the epoch."""
    data = row.data
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError:
            data = {"raw": data if isinstance(data, str) else data.decode("utf-8", "replace")}
    return {
        "id": str(row.event_id),
        "type": str(row.type),
        "data": data,
        "source": row.source,
        "worker": row.worker,
        "priority": row.priority,
        "created_at": _epoch(row.created_at),
        "batch_count": int(row.batch_count or 1),
    }
