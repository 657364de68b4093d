"""INSERT ... ON CONFLICT, per dialect: which statement to build, and how to send many rows.

The one place that chooses between PostgreSQL's and SQLite's ``insert()`` (both have
``ON CONFLICT``; the generic ``insert()`` has not). Any other database is refused with an
:class:`UnsupportedDialectError` that names it and the two supported ones.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from timelapser_workers.sql.errors import UnsupportedDialectError

__all__ = ["SUPPORTED_DIALECTS", "DialectInsert", "dialect_insert", "insert_new_events", "execute_rows"]

SUPPORTED_DIALECTS = ("sqlite", "postgresql")

DialectInsert = Union[postgresql.Insert, sqlite.Insert]

# PostgreSQL allows 65535 bind parameters in one statement.
_PG_MAX_PARAMS = 65535


def dialect_insert(table: Table, dialect_name: str, *, writer: str = "timelapser_workers") -> DialectInsert:
    """``INSERT INTO table`` for ``dialect_name`` (one that has ``on_conflict_do_nothing`` and
    ``on_conflict_do_update``). Raises UnsupportedDialectError (a ValueError) for a dialect
    other than sqlite and postgresql, naming ``writer`` (who wanted the statement)."""
    if dialect_name == "postgresql":
        return postgresql.insert(table)
    if dialect_name == "sqlite":
        return sqlite.insert(table)
    raise UnsupportedDialectError(
        f"{writer} supports {' and '.join(SUPPORTED_DIALECTS)}, not {dialect_name!r}"
    )


def insert_new_events(table: Table, dialect_name: str, *, writer: str = "timelapser_workers") -> DialectInsert:
    """``INSERT ... ON CONFLICT (event_id) DO NOTHING`` into an event-keyed table: a row whose
    event is stored already is skipped, so a batch written twice stores each event once."""
    return dialect_insert(table, dialect_name, writer=writer).on_conflict_do_nothing(index_elements=["event_id"])


def execute_rows(conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run the INSERT ``stmt`` for all ``rows`` in as few round trips as the database allows.

    PostgreSQL: multi-row ``VALUES`` statements of up to 1000 rows (psycopg2's executemany would
    send one statement per row). SQLite: ``executemany``, a loop inside the driver.
    """
    if conn.dialect.name != "postgresql":
        conn.execute(stmt, list(rows))
        return
    width = max(1, len(rows[0]))
    page = max(1, min(1000, _PG_MAX_PARAMS // width))
    for start in range(0, len(rows), page):
        conn.execute(stmt.values(list(rows[start : start + page])))
