"""The events table: its columns, its indexes, and the checks on the names it is built from.

One definition, shared by DatabaseSink (which writes it) and any reader (the SSE engineer's
DatabaseEventSource tails it by ``id``). Names are checked before any SQL is made from them.
"""

from __future__ import annotations

import re

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = ["DEFAULT_TABLE", "DEFAULT_NOTIFY_CHANNEL", "events_table", "check_identifier", "EVENT_COLUMNS"]

DEFAULT_TABLE = "sse_events"
DEFAULT_NOTIFY_CHANNEL = "timelapser_events"

# The columns a writer fills (``id`` and ``inserted_at`` come from the database), in COPY order.
EVENT_COLUMNS = ("event_id", "type", "data", "priority", "source", "worker", "created_at", "batch_count")

# A plain SQL identifier: what PostgreSQL and SQLite both accept unquoted (PostgreSQL keeps 63 bytes).
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def check_identifier(value: object, what: str = "table name") -> str:
    """Return ``value`` if it is a plain SQL identifier, else raise ValueError naming it.

    Plain means a letter or underscore, then letters, digits or underscores, at most 63 in all:
    no quoting is ever needed, so no SQL is built from unchecked text.
    """
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a plain SQL identifier: use a letter or '_' followed by "
            "letters, digits or '_' (at most 63 characters), e.g. 'sse_events'"
        )
    return value


def events_table(metadata: MetaData, name: str = DEFAULT_TABLE, *, schema: str | None = None) -> Table:
    """Define the events table ``name`` on ``metadata`` (``metadata.create_all`` creates it).

    Columns: ``id`` (autoincrement primary key, the order readers tail by), ``event_id``
    (unique), ``type``, ``data`` (JSONB on PostgreSQL, JSON text on SQLite), ``priority``
    (the name, e.g. ``NORMAL``), ``source``, ``worker``, ``created_at`` (the event's own time,
    UTC), ``inserted_at`` (the database's clock at insert), ``batch_count``.
    Indexes: unique ``event_id``; ``(type, created_at)``.
    """
    check_identifier(name)
    if schema is not None:
        check_identifier(schema, "schema name")
    return Table(
        name,
        metadata,
        Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
        Column("event_id", Text(), nullable=False, unique=True),
        Column("type", Text(), nullable=False),
        Column("data", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        Column("priority", Text(), nullable=False),
        Column("source", Text()),
        Column("worker", Text()),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("inserted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("batch_count", Integer(), nullable=False, server_default="1"),
        Index(f"ix_{name}_type_created_at"[:63], "type", "created_at"),
        schema=schema,
    )
