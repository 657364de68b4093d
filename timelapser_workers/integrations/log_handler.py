"""BatchingDatabaseHandler: a logging.Handler whose records go, batched, into a table.

::

    handler = BatchingDatabaseHandler("sqlite:///logs.db")    # records -> batcher -> `logs` table
    logging.getLogger().addHandler(handler)

Each row keeps the record's own time, level, logger, message and exception text, and its
context (``extra={...}`` fields, structlog's event dict and bound context variables: see
:mod:`.log_context`) in the JSON column ``extra`` (JSONB on PostgreSQL: query it with
``extra->>'job_id'``). A logs table made before that column existed gets it added.

The handler's ``emit`` only builds an event and puts it on its batcher's bounded queue (dropped
and counted when full, never blocking the caller). Records logged by this library and by
SQLAlchemy, and anything logged on the thread that is writing a batch, are not stored (counted
in ``skipped``): the handler's own flushing can neither recurse nor deadlock.

An application of the library (it uses a concrete sink), so it lives here, not in the core.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import threading
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from timelapser_workers.batcher import EventBatcher
from timelapser_workers.config import BatcherConfig, Default
from timelapser_workers.contract import BaseSink, Event
from timelapser_workers.errors import BatcherClosedError
from timelapser_workers.events import make_event
from timelapser_workers.integrations.log_context import record_context
from timelapser_workers.sinks.log import parse_level
from timelapser_workers.sql.engine import create_sink_engine
from timelapser_workers.sql.insert import insert_new_events
from timelapser_workers.sql.schema import DEFAULT_LOGS_TABLE, create_all_concurrently, logs_table
from timelapser_workers.sql.split import write_or_split

__all__ = ["BatchingDatabaseHandler", "LogRecordSink", "logs_table", "LOG_RECORD"]

LOG_RECORD = "LOG_RECORD"
# The handler's batcher: larger, slower batches than the event batcher's, with their own variables.
LOG_DEFAULTS = {
    "batch_size": Default(100, "TIMELAPSER_LOG_BATCH_SIZE"),
    "batch_timeout": Default(5.0, "TIMELAPSER_LOG_BATCH_TIMEOUT_SECONDS"),
    "max_retries": Default(3, "TIMELAPSER_LOG_BATCH_MAX_RETRIES"),
}
_DEFAULT_EXCLUDED = ("timelapser_workers", "sqlalchemy")


# Set while a LogRecordSink writes on this thread: records logged then are not stored.
_writing = threading.local()


class LogRecordSink(BaseSink):
    """Write LOG_RECORD events into the logs table, one transaction per batch, idempotent.

    A record the database refuses (a trigger, a constraint, a value the driver cannot bind) is
    found by splitting the batch: the others are stored, it goes to the dead letter. Counters:
    ``rows_refused``, ``splits``.
    """

    wants_aggregated = False

    def __init__(self, engine: Engine, table: str = DEFAULT_LOGS_TABLE, *, name: str = "logs") -> None:
        self.engine = engine
        self.name = name
        self.metadata = sa.MetaData()
        self.table = logs_table(self.metadata, table)
        self._ready = False
        self.rows_refused = 0
        self.splits = 0

    def send(self, batch: Sequence[Event]) -> None:
        if not batch:
            return
        _writing.active = True
        try:
            write_or_split(self._write, batch, name=self.name, counters=self)
        finally:
            _writing.active = False

    def _write(self, batch: Sequence[Event]) -> None:
        if not self._ready:
            create_all_concurrently(self.metadata, self.engine)
            _add_extra_column(self.table, self.engine)
            self._ready = True
        stmt = insert_new_events(self.table, self.engine.dialect.name, writer="BatchingDatabaseHandler")
        with self.engine.begin() as conn:
            conn.execute(stmt, [_log_row(e) for e in batch])


def _log_row(event: Event) -> dict[str, Any]:
    """The logs-table row for a LOG_RECORD event (its data as ``emit`` built it)."""
    data = event.data
    return {
        "event_id": event.id,
        "created_at": dt.datetime.fromtimestamp(data["created"], tz=dt.timezone.utc),
        "level": data["level"],
        "levelno": data["levelno"],
        "logger": data["logger"],
        "message": data["message"],
        "exc_text": data.get("exc_text"),
        "thread": data.get("thread"),
        "process": data.get("process"),
        "extra": data.get("extra") or None,
    }


def _add_extra_column(table: sa.Table, engine: Engine) -> None:
    """Add the ``extra`` column to a logs table made before it existed (nullable, so old rows
    stay as they are). Another process adding it at the same moment is not an error."""
    columns = {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    if "extra" in columns:
        return
    kind = table.c.extra.type.compile(dialect=engine.dialect)
    name = engine.dialect.identifier_preparer.format_table(table)
    exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {name} ADD COLUMN{exists} extra {kind}"))
    except sa.exc.OperationalError as exc:  # SQLite: another process added it first
        if "duplicate column" not in str(exc.orig):
            raise


class BatchingDatabaseHandler(logging.Handler):
    """A logging.Handler that stores records in a table through an EventBatcher.

    ``target``: a database URL or an Engine (yours, never disposed). Batches flush at
    ``batch_size`` records or ``batch_timeout`` seconds (defaults LOG_BATCH_SIZE = 100,
    LOG_BATCH_TIMEOUT_SECONDS = 5, overridable by TIMELAPSER_LOG_BATCH_* env) and are retried
    ``max_retries`` times (LOG_BATCH_MAX_RETRIES = 3) before the dead letter. Each row keeps its
    record's own time, level, logger, message and exception text, and its context (``extra``
    fields, structlog's) as JSON in the column ``extra``; ``structlog_contextvars=False``
    leaves structlog's bound context variables out. Counters: ``submitted``,
    ``skipped`` (the library's own records), ``dropped`` (queue full or handler closed).
    """

    def __init__(
        self,
        target: str | Engine,
        *,
        table: str = DEFAULT_LOGS_TABLE,
        level: int | str = logging.NOTSET,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        max_queue_size: int | None = None,
        dead_letter: Any = None,
        exclude_loggers: Sequence[str] = _DEFAULT_EXCLUDED,
        structlog_contextvars: bool = True,
    ) -> None:
        super().__init__(parse_level(level))

        if isinstance(target, Engine):
            self.engine, self._owns_engine = target, False
        else:
            self.engine, self._owns_engine = create_sink_engine(target, application_name="timelapser-logs"), True
        self.sink = LogRecordSink(self.engine, table)
        config = BatcherConfig.resolve(
            defaults=LOG_DEFAULTS, batch_size=batch_size, batch_timeout=batch_timeout,
            max_retries=max_retries, retry_delay=retry_delay, max_queue_size=max_queue_size,
            overflow="drop_newest",
        )
        self.batcher = EventBatcher([self.sink], config=config, dead_letter=dead_letter, name=f"logs:{table}")
        self.exclude_loggers = tuple(exclude_loggers)
        self.structlog_contextvars = structlog_contextvars
        self.submitted = 0
        self.skipped = 0
        self.dropped = 0
        self._count_lock = threading.Lock()

    def _excluded(self, record: logging.LogRecord) -> bool:
        if getattr(_writing, "active", False):
            return True
        name = record.name
        return any(name == p or name.startswith(p + ".") for p in self.exclude_loggers)

    def emit(self, record: logging.LogRecord) -> None:
        """Queue ``record`` for the table; never blocks, never logs, never raises."""
        if self._excluded(record):
            with self._count_lock:
                self.skipped += 1
            return
        try:
            message, context, exc_info = record_context(record, contextvars=self.structlog_contextvars)
            exc_text = record.exc_text
            if exc_info and not exc_text:
                exc_text = (self.formatter or logging.Formatter()).formatException(_exc_tuple(exc_info))
            if record.stack_info:
                exc_text = f"{exc_text}\n{record.stack_info}" if exc_text else record.stack_info
            event = make_event(
                LOG_RECORD,
                {
                    "created": record.created,
                    "level": record.levelname,
                    "levelno": record.levelno,
                    "logger": record.name,
                    "message": message,
                    "exc_text": exc_text,
                    "thread": record.threadName,
                    "process": record.process,
                    "extra": context,
                },
                source=record.name,
            )
            ok = self.batcher.submit(event)
        except BatcherClosedError:
            ok = False
        except Exception:
            self.handleError(record)
            return
        with self._count_lock:
            if ok:
                self.submitted += 1
            else:
                self.dropped += 1

    def flush(self, timeout: float | None = None) -> None:
        """Deliver the records queued so far, waiting at most ``timeout`` seconds."""
        self.batcher.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued (within ``timeout``), stop the batcher, release the engine."""
        try:
            self.batcher.close(timeout)
            if self._owns_engine:
                self.engine.dispose()
        finally:
            super().close()


def _exc_tuple(exc_info: Any) -> Any:
    """``exc_info`` as logging's (type, value, traceback): a tuple, an exception, or True (the
    exception being handled, as structlog's ``exc_info=True`` means)."""
    if isinstance(exc_info, BaseException):
        return type(exc_info), exc_info, exc_info.__traceback__
    if isinstance(exc_info, tuple):
        return exc_info
    return sys.exc_info()
