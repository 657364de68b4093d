"""BatchingDatabaseHandler: a logging.Handler whose records go, batched, into a table.

::

    handler = BatchingDatabaseHandler("sqlite:///logs.db")    # records -> batcher -> `logs` table
    logging.getLogger().addHandler(handler)

The handler's ``emit`` only builds an event and puts it on its batcher's bounded queue (dropped
and counted when full, never blocking the caller). Records logged by this library and by
SQLAlchemy, and anything logged on the thread that is writing a batch, are not stored (counted
in ``skipped``): the handler's own flushing can neither recurse nor deadlock.

An application of the library (it uses a concrete sink), so it lives here, not in the core.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from timelapser_workers.batcher import EventBatcher
from timelapser_workers.config import BatcherConfig, Default
from timelapser_workers.contract import BaseSink, Event
from timelapser_workers.errors import BatcherClosedError, PermanentSinkError, TransientSinkError
from timelapser_workers.events import make_event
from timelapser_workers.sql.engine import create_sink_engine
from timelapser_workers.sql.errors import ErrorKind, classify_error
from timelapser_workers.sinks.log import parse_level
from timelapser_workers.sql.schema import check_identifier

__all__ = ["BatchingDatabaseHandler", "LogRecordSink", "logs_table", "LOG_RECORD"]

LOG_RECORD = "LOG_RECORD"
# The handler's batcher: larger, slower batches than the event batcher's, with their own variables.
LOG_DEFAULTS = {
    "batch_size": Default(100, "TIMELAPSER_LOG_BATCH_SIZE"),
    "batch_timeout": Default(5.0, "TIMELAPSER_LOG_BATCH_TIMEOUT_SECONDS"),
    "max_retries": Default(3, "TIMELAPSER_LOG_BATCH_MAX_RETRIES"),
}
_DEFAULT_EXCLUDED = ("timelapser_workers", "sqlalchemy")


def logs_table(metadata: sa.MetaData, name: str = "logs") -> sa.Table:
    """The log-records table: one row per record, with the record's own time."""
    check_identifier(name)
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text(), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("level", sa.Text(), nullable=False),
        sa.Column("levelno", sa.Integer(), nullable=False),
        sa.Column("logger", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("exc_text", sa.Text()),
        sa.Column("thread", sa.Text()),
        sa.Column("process", sa.Integer()),
        sa.Column("inserted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Index(f"ix_{name}_created_at"[:63], "created_at"),
    )


# Set while a LogRecordSink writes on this thread: records logged then are not stored.
_writing = threading.local()


class LogRecordSink(BaseSink):
    """Write LOG_RECORD events into the logs table, one transaction per batch, idempotent."""

    wants_aggregated = False

    def __init__(self, engine: Engine, table: str = "logs", *, name: str = "logs") -> None:
        self.engine = engine
        self.name = name
        self.metadata = sa.MetaData()
        self.table = logs_table(self.metadata, table)
        self._ready = False

    def send(self, batch: Sequence[Event]) -> None:
        import datetime as dt

        if not batch:
            return
        rows = [
            {
                "event_id": e.id,
                "created_at": dt.datetime.fromtimestamp(e.data["created"], tz=dt.timezone.utc),
                "level": e.data["level"],
                "levelno": e.data["levelno"],
                "logger": e.data["logger"],
                "message": e.data["message"],
                "exc_text": e.data.get("exc_text"),
                "thread": e.data.get("thread"),
                "process": e.data.get("process"),
            }
            for e in batch
        ]
        dialect = self.engine.dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        _writing.active = True
        try:
            if not self._ready:
                self.metadata.create_all(self.engine, checkfirst=True)
                self._ready = True
            with self.engine.begin() as conn:
                conn.execute(insert(self.table).on_conflict_do_nothing(index_elements=["event_id"]), rows)
        except Exception as exc:
            kind = classify_error(exc)
            if kind is ErrorKind.TRANSIENT:
                raise TransientSinkError(f"{self.name}: {exc}") from exc
            raise PermanentSinkError(f"{self.name}: {exc}", events=list(batch)) from exc
        finally:
            _writing.active = False


class BatchingDatabaseHandler(logging.Handler):
    """A logging.Handler that stores records in a table through an EventBatcher.

    ``target``: a database URL or an Engine (yours, never disposed). Batches flush at
    ``batch_size`` records or ``batch_timeout`` seconds (defaults LOG_BATCH_SIZE = 100,
    LOG_BATCH_TIMEOUT_SECONDS = 5, overridable by TIMELAPSER_LOG_BATCH_* env) and are retried
    ``max_retries`` times (LOG_BATCH_MAX_RETRIES = 3) before the dead letter. Each row keeps its
    record's own time, level, logger, message and exception text. Counters: ``submitted``,
    ``skipped`` (the library's own records), ``dropped`` (queue full or handler closed).
    """

    def __init__(
        self,
        target: str | Engine,
        *,
        table: str = "logs",
        level: int | str = logging.NOTSET,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        max_queue_size: int | None = None,
        dead_letter: Any = None,
        exclude_loggers: Sequence[str] = _DEFAULT_EXCLUDED,
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
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = (self.formatter or logging.Formatter()).formatException(record.exc_info)
            if record.stack_info:
                exc_text = f"{exc_text}\n{record.stack_info}" if exc_text else record.stack_info
            event = make_event(
                LOG_RECORD,
                {
                    "created": record.created,
                    "level": record.levelname,
                    "levelno": record.levelno,
                    "logger": record.name,
                    "message": record.getMessage(),
                    "exc_text": exc_text,
                    "thread": record.threadName,
                    "process": record.process,
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

    def flush(self, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver the records queued so far, waiting at most ``timeout`` seconds."""
        self.batcher.flush(timeout)

    def close(self, timeout: float | None = None) -> None:  # type: ignore[override]
        """Deliver what is queued (within ``timeout``), stop the batcher, release the engine."""
        try:
            self.batcher.close(timeout)
            if self._owns_engine:
                self.engine.dispose()
        finally:
            super().close()
