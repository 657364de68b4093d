"""The tables: the events table, the log-records table, the columns they share, and the checks
on the names they are built from.

One definition of each table, shared by its writers (DatabaseSink, the log handler) and its
readers (DatabaseEventSource tails the events table by ``id``). Both tables are keyed the same
way (an autoincrement ``id`` to read in order, a unique ``event_id`` that makes writes
idempotent, the event's own ``created_at``, the server's ``inserted_at``): those columns are
made by one helper each. Names are checked before any SQL is made from them.
"""

from __future__ import annotations

import datetime as _dt
import logging
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
from sqlalchemy import exc, inspect
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from timelapser_workers.errors import PermanentSinkError
from timelapser_workers.sql.codec import EVENT_COLUMNS

__all__ = [
    "create_all_concurrently",
    "check_event_id_unique",
    "DEFAULT_TABLE",
    "DEFAULT_NOTIFY_CHANNEL",
    "DEFAULT_LOGS_TABLE",
    "EVENT_COLUMNS",
    "events_table",
    "logs_table",
    "check_identifier",
    "id_column",
    "event_id_column",
    "created_at_column",
    "inserted_at_column",
]

logger = logging.getLogger(__name__)

DEFAULT_TABLE = "sse_events"
DEFAULT_NOTIFY_CHANNEL = "timelapser_events"
DEFAULT_LOGS_TABLE = "logs"

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


# --- the columns every event-keyed table has ---------------------------------------------------
def id_column() -> Column[int]:
    """``id``: the autoincrement primary key readers tail by (BIGINT; INTEGER on SQLite, where
    only an INTEGER PRIMARY KEY is the rowid and autoincrements)."""
    return Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)


def event_id_column() -> Column[str]:
    """``event_id``: the event's own id, unique: a batch written twice stores each row once."""
    return Column("event_id", Text(), nullable=False, unique=True)


def created_at_column() -> Column[_dt.datetime]:
    """``created_at``: the event's own time (UTC), not the time it was written."""
    return Column("created_at", DateTime(timezone=True), nullable=False)


def inserted_at_column() -> Column[_dt.datetime]:
    """``inserted_at``: the database's clock when the row was inserted."""
    return Column("inserted_at", DateTime(timezone=True), nullable=False, server_default=func.now())


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
        id_column(),
        event_id_column(),
        Column("type", Text(), nullable=False),
        Column("data", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        Column("priority", Text(), nullable=False),
        Column("source", Text()),
        Column("worker", Text()),
        created_at_column(),
        inserted_at_column(),
        Column("batch_count", Integer(), nullable=False, server_default="1"),
        Index(f"ix_{name}_type_created_at"[:63], "type", "created_at"),
        schema=schema,
    )


def logs_table(metadata: MetaData, name: str = DEFAULT_LOGS_TABLE) -> Table:
    """Define the log-records table ``name`` on ``metadata``: one row per record, with the
    record's own time (``created_at``), ``level``, ``levelno``, ``logger``, ``message``,
    ``exc_text``, ``thread``, ``process`` and ``extra`` (its context: JSONB on PostgreSQL, JSON
    text on SQLite; NULL when it has none). Indexes: unique ``event_id``; ``created_at``."""
    check_identifier(name)
    return Table(
        name,
        metadata,
        id_column(),
        event_id_column(),
        created_at_column(),
        Column("level", Text(), nullable=False),
        Column("levelno", Integer(), nullable=False),
        Column("logger", Text(), nullable=False),
        Column("message", Text(), nullable=False),
        Column("exc_text", Text()),
        Column("thread", Text()),
        Column("process", Integer()),
        Column("extra", JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")),
        inserted_at_column(),
        Index(f"ix_{name}_created_at"[:63], "created_at"),
    )


def create_all_concurrently(metadata: MetaData, engine: Engine, attempts: int = 3) -> None:
    """``metadata.create_all`` that survives other processes creating the same tables at the
    same moment: a "table (or index) already exists" from that race means another writer won
    it, so look again (checkfirst) instead of failing."""
    for attempt in range(1, attempts + 1):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except (exc.IntegrityError, exc.OperationalError, exc.ProgrammingError) as error:
            # PostgreSQL: 42P07 duplicate_table, or 23505 on its catalog; SQLite: "already exists"
            raced = isinstance(error, exc.IntegrityError) or "already exists" in str(error.orig)
            if not raced or attempt == attempts:
                raise
            logger.debug("tables were created concurrently (%s); checking again", error.orig)


def check_event_id_unique(engine: Engine, table: Table) -> None:
    """Raise PermanentSinkError naming ``table`` and the fix if it exists without a unique
    constraint or index on ``event_id`` alone: writes could not be idempotent (COPY would store
    a retried batch twice; ``INSERT ... ON CONFLICT (event_id)`` is refused outright). A table
    that does not exist, or a database the writers do not support, is left to the write to
    report."""
    if engine.dialect.name not in ("sqlite", "postgresql"):
        return
    insp = inspect(engine)
    name, schema = table.name, table.schema
    if not insp.has_table(name, schema=schema):
        return
    wanted = ["event_id"]
    if insp.get_pk_constraint(name, schema=schema).get("constrained_columns") == wanted:
        return
    if any(c.get("column_names") == wanted for c in insp.get_unique_constraints(name, schema=schema)):
        return
    for index in insp.get_indexes(name, schema=schema):
        partial = any(k.endswith("_where") and v is not None for k, v in index.get("dialect_options", {}).items())
        if index.get("unique") and index.get("column_names") == wanted and not partial:
            return
    qualified = f"{schema}.{name}" if schema else name
    raise PermanentSinkError(
        f"table {qualified!r} has no unique constraint or index on event_id, so writing to it "
        f"cannot be idempotent (a retried batch would be stored twice, or refused); add one: "
        f"CREATE UNIQUE INDEX {name[:50]}_event_id_key ON {qualified} (event_id) (after removing "
        "duplicate event_ids), or give DatabaseSink a new table name and let it create the table"
    )
