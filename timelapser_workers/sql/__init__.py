"""The SQL layer shared by the database sink, the database source and the log handler.

``engine``: the engine factory. ``schema``: the events and logs tables. ``codec``: an Event as
a row (dict, SQLite tuple, COPY text) and a row as a record. ``insert``: the per-dialect
``INSERT ... ON CONFLICT``. ``writers``: COPY, SQLite tuples, multi-row INSERT. ``errors``:
what a database error means for a batch. ``split``: poison rows isolated by halving a batch.
``upsert``: bulk insert-or-update.
"""

from timelapser_workers.sql.codec import EVENT_COLUMNS, event_row, row_record
from timelapser_workers.sql.engine import create_sink_engine
from timelapser_workers.sql.errors import ErrorKind, UnsupportedDialectError, classify_error
from timelapser_workers.sql.insert import dialect_insert
from timelapser_workers.sql.schema import (
    DEFAULT_NOTIFY_CHANNEL,
    DEFAULT_TABLE,
    check_identifier,
    events_table,
    logs_table,
)
from timelapser_workers.sql.upsert import bulk_upsert

__all__ = [
    "create_sink_engine",
    "ErrorKind",
    "classify_error",
    "UnsupportedDialectError",
    "events_table",
    "logs_table",
    "check_identifier",
    "DEFAULT_TABLE",
    "DEFAULT_NOTIFY_CHANNEL",
    "EVENT_COLUMNS",
    "event_row",
    "row_record",
    "dialect_insert",
    "bulk_upsert",
]
