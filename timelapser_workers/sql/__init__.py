"""The SQL layer shared by the database sink, the database source and the log handler: the
engine factory, the events table, error classification and bulk upserts."""

from timelapser_workers.sql.engine import create_sink_engine
from timelapser_workers.sql.errors import ErrorKind, classify_error
from timelapser_workers.sql.schema import DEFAULT_NOTIFY_CHANNEL, DEFAULT_TABLE, check_identifier, events_table
from timelapser_workers.sql.upsert import bulk_upsert

__all__ = [
    "create_sink_engine",
    "ErrorKind",
    "classify_error",
    "events_table",
    "check_identifier",
    "DEFAULT_TABLE",
    "DEFAULT_NOTIFY_CHANNEL",
    "bulk_upsert",
]
