"""DatabaseSink: each batch in one transaction into an events table, SQLite or PostgreSQL.

::

    sink = DatabaseSink("sqlite:///events.db")                 # WAL, busy timeout, table made
    sink = DatabaseSink("postgresql://app@db/app", table="job_events")
    sink = DatabaseSink(my_engine)                              # yours; we never dispose it

What one batch costs: on PostgreSQL (psycopg2 or psycopg 3), one ``COPY ... FROM STDIN`` and a commit
(a retried batch whose rows are partly there already goes through a temporary table and
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``); on SQLite, one ``executemany`` of tuples; on
other drivers, one multi-row ``INSERT ... ON CONFLICT (event_id) DO NOTHING`` (the writers:
:mod:`timelapser_workers.sql.writers`). Writing is idempotent on ``event_id``: a batch sent
twice stores each event once.

Failures: see :mod:`timelapser_workers.sql.errors`. Transient ones raise TransientSinkError (the
lane retries); a row-level failure splits the batch in halves until the bad rows are found
(:mod:`timelapser_workers.sql.split`): the others commit and PermanentSinkError(events=bad rows)
sends those to the dead letter.

This module holds what is the sink's own: its options (also from a URL), creating the table,
the contract (send, close, fork), and its counters.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.url import URL

from timelapser_workers.contract import BaseSink, Event, PermanentSinkError
from timelapser_workers.sinks.options import redact_url
from timelapser_workers.sql.codec import event_row
from timelapser_workers.sql.engine import (
    DEFAULT_BUSY_TIMEOUT_SECONDS,
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    create_sink_engine,
)
from timelapser_workers.sql.schema import (
    DEFAULT_NOTIFY_CHANNEL,
    DEFAULT_TABLE,
    check_event_id_unique,
    check_identifier,
    create_all_concurrently,
    events_table,
)
from timelapser_workers.sql.split import write_or_split
from timelapser_workers.sql.writers import CopyWriter, choose_writer

__all__ = ["DatabaseSink", "event_row", "URL_OPTIONS"]

logger = logging.getLogger(__name__)


class DatabaseSink(BaseSink):
    """Write each batch into the events table ``table`` in one transaction.

    ``target``: a SQLAlchemy URL (string or URL; we make the Engine and dispose it at close)
    or an Engine (yours: never disposed by us). ``create_table``: create the table and its
    indexes if missing. ``use_copy``: on PostgreSQL (psycopg2 or psycopg 3), write with COPY (else
    multi-row INSERT). ``notify_channel``: on PostgreSQL, ``pg_notify(channel, table)`` in the
    same transaction as each batch that stored rows (None: no notification).
    """

    wants_aggregated = True

    def __init__(
        self,
        target: str | URL | Engine,
        *,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        name: str | None = None,
        create_table: bool = True,
        use_copy: bool = True,
        notify_channel: str | None = DEFAULT_NOTIFY_CHANNEL,
        wants_aggregated: bool = True,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_SECONDS,
        application_name: str = "timelapser-workers",
    ) -> None:
        check_identifier(table)
        if notify_channel is not None:
            check_identifier(notify_channel, "notify channel")
        given: object = target  # checked at run time whatever the annotation says
        if isinstance(given, Engine):
            self.engine = given
            self._owns_engine = False
        elif isinstance(given, (str, URL)):
            try:
                make_url(given)
            except Exception as exc:
                raise ValueError(f"database URL {redact_url(str(given))!r} does not parse: {redact_url(str(exc))}") from None
            self.engine = create_sink_engine(
                given,
                busy_timeout=busy_timeout,
                connect_timeout=connect_timeout,
                application_name=application_name,
            )
            self._owns_engine = True
        else:
            raise TypeError(
                f"DatabaseSink target must be a database URL or a sqlalchemy Engine, got {given!r}"
            )
        self.dialect = self.engine.dialect.name
        self.name = name or f"{self.dialect}:{table}"
        self.wants_aggregated = wants_aggregated
        self.metadata = sa.MetaData()
        self.table = events_table(self.metadata, table, schema=schema)
        self.notify_channel = notify_channel if self.dialect == "postgresql" else None
        self.writer = choose_writer(
            self.engine, self.table, use_copy=bool(use_copy), notify_channel=self.notify_channel
        )
        self.use_copy = isinstance(self.writer, CopyWriter)
        self._create_table = create_table
        self._ready = False
        self._ready_lock = threading.Lock()
        # Counters: what this sink stored, refused, and how often it split.
        self.rows_written = 0
        self.rows_refused = 0
        self.batches_written = 0
        self.splits = 0

    # --- setup ---------------------------------------------------------------------------
    def ensure_table(self) -> None:
        """Create the table and its indexes if they are missing, and check that ``event_id``
        is unique in it (once per sink; cheap after). PermanentSinkError naming the table and
        the fix if it is not: writes could not be idempotent."""
        if self._ready:
            return
        with self._ready_lock:
            if self._is_ready():  # made by another thread meanwhile
                return
            if self._create_table:
                create_all_concurrently(self.metadata, self.engine)
            check_event_id_unique(self.engine, self.table)
            self._ready = True

    def _is_ready(self) -> bool:
        return self._ready

    @property
    def copy_conflicts(self) -> int:
        """Batches whose COPY met events stored already and went through the staging table."""
        return self.writer.copy_conflicts if isinstance(self.writer, CopyWriter) else 0

    # --- the contract --------------------------------------------------------------------
    def send(self, batch: Sequence[Event]) -> None:
        """Store ``batch``; raise TransientSinkError to be retried, PermanentSinkError to refuse
        (a row-level refusal splits the batch: the other rows are stored, the bad ones named)."""
        if not batch:
            return
        write_or_split(self._write, batch, name=self.name, counters=self)

    def close(self, timeout: float | None = None) -> None:
        """Dispose the Engine if this sink made it; a given Engine is left to its owner."""
        if self._owns_engine:
            self.engine.dispose()

    def after_fork_in_child(self) -> None:
        """Drop the parent's pooled connections (without closing them under the parent)."""
        if self._owns_engine:
            self.engine.dispose(close=False)
        self._ready_lock = threading.Lock()  # another thread may have held it at fork

    def _write(self, batch: Sequence[Event]) -> None:
        try:
            self.ensure_table()
        except PermanentSinkError as exc:  # the table, not the rows: refuse the batch whole
            raise PermanentSinkError(str(exc), events=list(batch)) from exc
        self.rows_written += self.writer.write(batch)
        self.batches_written += 1

    # --- loading by URL ------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **options: Any) -> "DatabaseSink":
        """Build from ``sqlite:///events.db?table=x`` or ``postgresql://...?table=x&notify=...``.

        Sink options may come in the URL query or as keyword arguments (typed values); see
        :data:`URL_OPTIONS`. Other query keys are passed to the database driver for
        PostgreSQL (libpq options such as ``sslmode``) and refused for SQLite.
        """
        from timelapser_workers.sinks.options import parse_options

        u = make_url(url)
        backend = u.get_backend_name()
        query = dict(u.query)
        sink_opts = {k: query.pop(k) for k in list(query) if k in URL_OPTIONS}
        if query and backend != "postgresql":
            raise ValueError(
                f"unknown option(s) {', '.join(sorted(query))} in {redact_url(url)!r}; "
                f"DatabaseSink takes {', '.join(sorted(URL_OPTIONS))}"
            )
        unknown_driver = set(query) - _LIBPQ_OPTIONS
        if unknown_driver:
            raise ValueError(
                f"unknown option(s) {', '.join(sorted(unknown_driver))} in {redact_url(url)!r}; DatabaseSink takes "
                f"{', '.join(sorted(URL_OPTIONS))}, and libpq options such as sslmode"
            )
        both = set(sink_opts) & set(options)
        if both:
            raise ValueError(f"option(s) {', '.join(sorted(both))} given both in the URL and as arguments")
        kwargs = parse_options(URL_OPTIONS, sink_opts, where=redact_url(url))
        kwargs.update(options)
        return cls(u.set(query=query), **kwargs)


# What a sink URL's query may hold: option -> type (bool options take true/false/1/0/yes/no).
URL_OPTIONS: Mapping[str, type] = {
    "table": str,
    "schema": str,
    "name": str,
    "create_table": bool,
    "use_copy": bool,
    "notify_channel": str,
    "wants_aggregated": bool,
    "busy_timeout": float,
    "connect_timeout": int,
    "application_name": str,
}

_LIBPQ_OPTIONS = {
    "sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "target_session_attrs",
    "options", "host", "port", "passfile", "gssencmode", "tcp_user_timeout", "keepalives",
    "keepalives_idle", "keepalives_interval", "keepalives_count", "client_encoding",
    "connect_timeout", "application_name",
}  # fmt: skip

