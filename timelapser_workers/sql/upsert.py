"""bulk_upsert: insert-or-update many rows in one executemany statement, SQLite or PostgreSQL.

Replaces the seed's settings update, which ran one query per key. One transaction, one
``INSERT ... ON CONFLICT (keys) DO UPDATE SET col = excluded.col`` for all rows: on PostgreSQL
as multi-row VALUES pages of up to 1000 rows, on SQLite through executemany.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from timelapser_workers.sql.insert import dialect_insert, execute_rows
from timelapser_workers.sql.schema import check_identifier

__all__ = ["bulk_upsert"]


def bulk_upsert(
    engine: Engine | Connection,
    table: sa.Table | str,
    rows: Sequence[Mapping[str, Any]],
    key_columns: Sequence[str],
    *,
    update_columns: Sequence[str] | None = None,
) -> int:
    """Insert ``rows`` into ``table``; a row whose ``key_columns`` exist updates that row instead.

    ``table``: a Table, or the name of an existing table (reflected). ``key_columns`` must carry
    a unique constraint or index. ``update_columns``: what a conflict updates (default: every
    column the rows give, other than the keys). Every row must give the same columns.
    Given an Engine, runs in its own transaction; given a Connection, in the caller's.
    Returns the number of rows sent (on PostgreSQL, a key given twice counts once: its last row). ValueError names a bad table, column or row.
    """
    if not rows:
        return 0
    if isinstance(table, str):
        check_identifier(table)
        table = sa.Table(table, sa.MetaData(), autoload_with=engine)
    columns = list(rows[0].keys())
    for i, row in enumerate(rows):
        if set(row.keys()) != set(columns):
            raise ValueError(
                f"bulk_upsert row {i} has columns {sorted(row.keys())}, row 0 has {sorted(columns)}; "
                "every row must give the same columns"
            )
    unknown = [c for c in [*columns, *key_columns, *(update_columns or ())] if c not in table.c]
    if unknown:
        raise ValueError(
            f"bulk_upsert: column(s) {', '.join(map(repr, unknown))} not in table {table.name!r} "
            f"(it has {', '.join(table.c.keys())})"
        )
    if not key_columns:
        raise ValueError("bulk_upsert needs key_columns: the unique columns a conflict is found on")
    missing_keys = [k for k in key_columns if k not in columns]
    if missing_keys:
        raise ValueError(f"bulk_upsert: key column(s) {missing_keys} are not given in the rows")
    updates = list(update_columns) if update_columns is not None else [c for c in columns if c not in key_columns]

    dialect = engine.dialect.name
    stmt = dialect_insert(table, dialect, writer="bulk_upsert")
    if updates:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(key_columns), set_={c: stmt.excluded[c] for c in updates}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key_columns))
    if updates and dialect == "postgresql":
        # One statement may not update a row twice: the last row of a key wins, as in a loop.
        last = {tuple(row[k] for k in key_columns): row for row in rows}
        rows = list(last.values())
    if isinstance(engine, Connection):
        execute_rows(engine, stmt, rows)
    else:
        with engine.begin() as conn:
            execute_rows(conn, stmt, rows)
    return len(rows)
