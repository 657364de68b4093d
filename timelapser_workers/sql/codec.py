"""The event <-> row codec: an Event as a row of the events table, in each form a writer sends,
and a row read back as a record shaped like ``Event.to_dict()``.

One column list (:data:`EVENT_COLUMNS`, in COPY order) and one mapping from the Event's fields
to those columns (:func:`event_values`). The forms differ only in how they encode two values,
the JSON ``data`` and the ``created_at`` time:

==================  =============================  ======================================  =====================
form                data                           created_at                              written by
==================  =============================  ======================================  =====================
:func:`event_row`   the dict                       aware UTC datetime                      SQLAlchemy's INSERT
:func:`sqlite_rows` ``json.dumps`` text            ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC)    pysqlite executemany
:func:`copy_buffer` compact JSON, UTF-8 unescaped  ISO 8601 with its ``+00:00`` offset     PostgreSQL COPY
==================  =============================  ======================================  =====================

The SQLite tuples hold exactly the text SQLAlchemy's JSON and DateTime types would store for
:func:`event_row` (a test compares them), without SQLAlchemy's per-row processing, which costs
as much as the insert itself.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
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

_copy_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def event_row(event: Event) -> dict[str, Any]:
    """The row for ``event`` as a dict of :data:`EVENT_COLUMNS` (for a SQLAlchemy INSERT)."""
    return dict(zip(EVENT_COLUMNS, event_values(event)))


def sqlite_rows(batch: Sequence[Event]) -> list[tuple[Any, ...]]:
    """The rows of ``batch`` as tuples of the text SQLAlchemy stores on SQLite (``?`` params)."""
    dumps = json.dumps
    return [
        (i, t, dumps(d), p, s, w, f"{c:%Y-%m-%d %H:%M:%S.%f}", n)
        for i, t, d, p, s, w, c, n in map(event_values, batch)
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
    """The rows of ``batch`` as COPY text (columns :data:`EVENT_COLUMNS`), ready for ``copy_expert``."""
    lines = [
        "\t".join((copy_text(i), copy_text(t), copy_text(_copy_json(d)), p, copy_text(s), copy_text(w),
                   c.isoformat(), str(n)))
        for i, t, d, p, s, w, c, n in map(event_values, batch)
    ]  # fmt: skip
    lines.append("")
    return io.StringIO("\n".join(lines))


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
