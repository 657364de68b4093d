"""How a batch of events gets into the events table: one writer per way of writing, chosen in
one place (:func:`choose_writer`) from the engine's dialect and driver.

Each writer's ``write(batch)`` runs one transaction, is idempotent on ``event_id`` (a batch
written twice stores each event once), and returns how many rows it stored (at most: SQLite
does not say which rows it skipped). It raises the database's own errors; the caller sorts
them (:mod:`timelapser_workers.sql.errors`, :mod:`timelapser_workers.sql.split`).

===========================  =======================================  ===============================
writer                       when                                     one batch costs
===========================  =======================================  ===============================
:class:`CopyWriter`          PostgreSQL through psycopg2, use_copy    one ``COPY FROM STDIN``, commit
:class:`PsycopgCopyWriter`   PostgreSQL through psycopg 3, use_copy   one ``COPY FROM STDIN``, commit
:class:`SqliteTupleWriter`   SQLite through the stdlib sqlite3        one ``executemany`` of tuples
:class:`InsertWriter`        anything else (PostgreSQL without COPY)  multi-row ``INSERT``, commit
===========================  =======================================  ===============================

The driver is the engine's: ``postgresql+psycopg2://`` or ``postgresql+psycopg://`` in a URL, or
whatever a user's own Engine was made with (SQLAlchemy 2.1 maps a plain ``postgresql://`` to
psycopg 3; the sink's engine factory maps it to psycopg2 when that is installed).

On PostgreSQL a writer given a ``notify_channel`` sends ``pg_notify(channel, table)`` in the
same transaction as each batch that stored rows.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from timelapser_workers.events import Event
from timelapser_workers.sql.codec import EVENT_COLUMNS, copy_buffer, event_row, sqlite_rows
from timelapser_workers.sql.errors import ErrorKind, classify_error
from timelapser_workers.sql.insert import DialectInsert, execute_rows, insert_new_events

__all__ = ["EventWriter", "CopyWriter", "PsycopgCopyWriter", "SqliteTupleWriter", "InsertWriter", "choose_writer"]

logger = logging.getLogger(__name__)


class EventWriter(Protocol):
    """Writes one batch in one transaction; returns the rows stored."""

    def write(self, batch: Sequence[Event]) -> int: ...


def choose_writer(
    engine: Engine, table: sa.Table, *, use_copy: bool = True, notify_channel: str | None = None
) -> EventWriter:
    """The writer for ``engine``: COPY on PostgreSQL through psycopg2 or psycopg 3 (if
    ``use_copy``), tuples on the stdlib's SQLite driver, multi-row INSERT otherwise. No I/O
    here; an unsupported dialect is refused by the first write (UnsupportedDialectError)."""
    dialect, driver = engine.dialect.name, engine.dialect.driver
    if use_copy and dialect == "postgresql" and driver == "psycopg2":
        return CopyWriter(engine, table, notify_channel=notify_channel)
    if use_copy and dialect == "postgresql" and driver == "psycopg":
        return PsycopgCopyWriter(engine, table, notify_channel=notify_channel)
    if dialect == "sqlite" and driver == "pysqlite":
        return SqliteTupleWriter(engine, table)
    return InsertWriter(engine, table, notify_channel=notify_channel)


class InsertWriter:
    """``INSERT ... ON CONFLICT (event_id) DO NOTHING``, the rows as multi-row ``VALUES``.

    On PostgreSQL with ``RETURNING id``: SQLAlchemy pages the rows into multi-row statements
    ("insertmanyvalues") and the ids returned count what was really inserted.
    """

    def __init__(self, engine: Engine, table: sa.Table, *, notify_channel: str | None = None) -> None:
        self.engine = engine
        self.table = table
        self.notify_channel = notify_channel
        self._stmt: DialectInsert | None = None

    def write(self, batch: Sequence[Event]) -> int:
        if self._stmt is None:
            self._stmt = insert_new_events(self.table, self.engine.dialect.name, writer="DatabaseSink")
        stmt = self._stmt
        rows = [event_row(e) for e in batch]
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                stored = len(conn.execute(stmt.returning(self.table.c.id), rows).all())
            else:
                execute_rows(conn, stmt, rows)
                stored = len(rows)  # at most: rows already stored are skipped
            if self.notify_channel and stored:
                conn.execute(sa.select(sa.func.pg_notify(self.notify_channel, self.table.name)))
        return stored


class SqliteTupleWriter:
    """One ``executemany`` of plain tuples (:func:`~timelapser_workers.sql.codec.sqlite_rows`):
    what SQLAlchemy's compiled INSERT stores, without its per-row parameter processing."""

    def __init__(self, engine: Engine, table: sa.Table) -> None:
        self.engine = engine
        target = engine.dialect.identifier_preparer.format_table(table)
        self.sql = (
            f"INSERT INTO {target} ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
            " ON CONFLICT (event_id) DO NOTHING"
        )

    def write(self, batch: Sequence[Event]) -> int:
        rows = sqlite_rows(batch)
        with self.engine.begin() as conn:
            conn.exec_driver_sql(self.sql, rows)
        return len(rows)  # at most: rows already stored are skipped


# The COPY fallback stages the rows as text, then casts them into the table's types.
_STAGE_TYPES = {"batch_count": "integer"}  # others: text
_STAGE_CASTS = {"data": "::jsonb", "created_at": "::timestamptz"}


class CopyWriter:
    """``COPY table FROM STDIN`` through psycopg2, then commit.

    A batch whose events are partly stored already (a retry after a lost commit acknowledgement)
    makes COPY fail on the unique ``event_id``; it is then copied into a temporary table and
    moved with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` (counted in ``copy_conflicts``).
    A connection lost mid-write is invalidated, never handed out again.

    The driver's part is two things: :meth:`_copy` (send the COPY text) and the exception it
    raises on a unique violation; :class:`PsycopgCopyWriter` is the same for psycopg 3.
    """

    def __init__(self, engine: Engine, table: sa.Table, *, notify_channel: str | None = None) -> None:
        self.engine = engine
        self.table = table
        self.notify_channel = notify_channel
        self.copy_conflicts = 0
        self._unique_violation = self._unique_violation_error()
        self._sql = _copy_statements(engine, table)

    def _unique_violation_error(self) -> type[Exception]:
        from psycopg2 import errors as pg_errors

        return pg_errors.UniqueViolation

    def _copy(self, cur: Any, statement: str, batch: Sequence[Event]) -> None:
        cur.copy_expert(statement, copy_buffer(batch))

    def write(self, batch: Sequence[Event]) -> int:
        raw = self.engine.raw_connection()
        try:
            cur: Any = raw.cursor()
            try:
                copy, create_stage, copy_stage, move = self._sql
                try:
                    self._copy(cur, copy, batch)
                    stored = int(cur.rowcount)
                except self._unique_violation:
                    # Some events are stored already (a retried batch): skip them by event_id.
                    raw.rollback()
                    self.copy_conflicts += 1
                    cur.execute(create_stage)
                    self._copy(cur, copy_stage, batch)
                    cur.execute(move)
                    stored = int(cur.rowcount)
                if self.notify_channel and stored:
                    cur.execute("SELECT pg_notify(%s, %s)", (self.notify_channel, self.table.name))
                raw.commit()
                return stored
            finally:
                cur.close()
        except BaseException as exc:
            _discard(raw, exc)
            raise
        finally:
            raw.close()


class PsycopgCopyWriter(CopyWriter):
    """:class:`CopyWriter` through psycopg 3: the COPY text goes through ``cursor.copy()``."""

    def _unique_violation_error(self) -> type[Exception]:
        from psycopg import errors as pg_errors

        return pg_errors.UniqueViolation

    def _copy(self, cur: Any, statement: str, batch: Sequence[Event]) -> None:
        with cur.copy(statement) as copy:
            copy.write(copy_buffer(batch).getvalue())


def _copy_statements(engine: Engine, table: sa.Table) -> tuple[str, str, str, str]:
    """COPY into the table; create, COPY into, and move from the staging table. Names are
    quoted by the dialect (the same for every driver)."""
    quote = engine.dialect.identifier_preparer
    target = quote.format_table(table)
    columns = ", ".join(quote.quote(c) for c in EVENT_COLUMNS)
    stage = ", ".join(f"{c} {_STAGE_TYPES.get(c, 'text')}" for c in EVENT_COLUMNS)
    casts = ", ".join(c + _STAGE_CASTS.get(c, "") for c in EVENT_COLUMNS)
    return (
        f"COPY {target} ({columns}) FROM STDIN",
        f"CREATE TEMP TABLE timelapser_stage (ord bigserial, {stage}) ON COMMIT DROP",
        f"COPY timelapser_stage ({columns}) FROM STDIN",
        f"INSERT INTO {target} ({columns}) SELECT {casts} FROM timelapser_stage ORDER BY ord"
        " ON CONFLICT (event_id) DO NOTHING",
    )


def _discard(raw: Any, exc: BaseException) -> None:
    """After a failed write: a lost connection is invalidated (never reused), else rolled back."""
    if classify_error(exc) is ErrorKind.TRANSIENT or not isinstance(exc, Exception):
        try:
            raw.invalidate(exc if isinstance(exc, Exception) else None)
        except Exception:  # pragma: no cover - invalidate closes quietly
            logger.debug("invalidate failed", exc_info=True)
        return
    try:
        raw.rollback()
    except Exception:
        raw.invalidate()
