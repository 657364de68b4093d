"""DatabaseSink: each batch in one transaction into an events table, SQLite or PostgreSQL.

::

    sink = DatabaseSink("sqlite:///events.db")                 # WAL, busy timeout, table made
    sink = DatabaseSink("postgresql://app@db/app", table="job_events")
    sink = DatabaseSink(my_engine)                              # yours; we never dispose it

What one batch costs: on PostgreSQL through psycopg2, one ``COPY ... FROM STDIN`` and a commit
(a retried batch whose rows are partly there already goes through a temporary table and
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``); on other drivers and on SQLite, one
multi-row ``INSERT ... ON CONFLICT (event_id) DO NOTHING``. Writing is idempotent on
``event_id``: a batch sent twice stores each event once.

Failures: see :mod:`timelapser_workers.sql.errors`. Transient ones raise TransientSinkError (the lane retries);
a row-level failure splits the batch in halves until the bad rows are found: the others
commit and PermanentSinkError(events=bad rows) sends those to the dead letter.
"""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.url import URL

from timelapser_workers.contract import BaseSink, Event
from timelapser_workers.errors import PermanentSinkError, TransientSinkError
from timelapser_workers.sql.engine import (
    DEFAULT_BUSY_TIMEOUT_SECONDS,
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    create_sink_engine,
)
from timelapser_workers.sql.errors import ErrorKind, classify_error
from timelapser_workers.sql.upsert import execute_rows
from timelapser_workers.sql.schema import DEFAULT_NOTIFY_CHANNEL, DEFAULT_TABLE, EVENT_COLUMNS, check_identifier, events_table

__all__ = ["DatabaseSink", "event_row", "URL_OPTIONS"]

logger = logging.getLogger(__name__)


def create_all_concurrently(metadata: sa.MetaData, engine: Engine, attempts: int = 3) -> None:
    """``metadata.create_all`` that survives other processes creating the same tables at the
    same moment: a "table (or index) already exists" from the race means another writer won
    it, so look again (checkfirst) instead of failing."""
    for attempt in range(1, attempts + 1):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except (sa.exc.IntegrityError, sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            # PostgreSQL: 42P07 duplicate_table, or 23505 on its catalog; SQLite: "already exists"
            raced = isinstance(exc, sa.exc.IntegrityError) or "already exists" in str(exc.orig)
            if not raced or attempt == attempts:
                raise
            logger.debug("tables were created concurrently (%s); checking again", exc.orig)


def event_row(event: Event) -> dict[str, Any]:
    """The events-table row for ``event`` (the columns of :data:`timelapser_workers.sql.schema.EVENT_COLUMNS`)."""
    return {
        "event_id": event.id,
        "type": event.type,
        "data": event.data,
        "priority": event.priority.name,
        "source": event.source,
        "worker": event.worker,
        "created_at": event.created_datetime,
        "batch_count": event.batch_count,
    }


def _copy_text(value: Any) -> str:
    # PostgreSQL COPY text format: \N is NULL; backslash, tab, newline and CR are escaped.
    if value is None:
        return "\\N"
    s = value if isinstance(value, str) else str(value)
    if "\\" in s or "\t" in s or "\n" in s or "\r" in s:
        s = s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return s


def _copy_buffer(batch: Sequence[Event]) -> io.StringIO:
    lines = []
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for e in batch:
        lines.append(
            "\t".join(
                (
                    _copy_text(e.id),
                    _copy_text(e.type),
                    _copy_text(dumps(e.data)),
                    e.priority.name,
                    _copy_text(e.source),
                    _copy_text(e.worker),
                    e.created_datetime.isoformat(),
                    str(e.batch_count),
                )
            )
        )
    lines.append("")
    return io.StringIO("\n".join(lines))


class DatabaseSink(BaseSink):
    """Write each batch into the events table ``table`` in one transaction.

    ``target``: a SQLAlchemy URL (string or URL; we make the Engine and dispose it at close)
    or an Engine (yours: never disposed by us). ``create_table``: create the table and its
    indexes if missing. ``use_copy``: on PostgreSQL through psycopg2, write with COPY (else
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
        if isinstance(target, Engine):
            self.engine = target
            self._owns_engine = False
        elif isinstance(target, (str, URL)):
            try:
                make_url(target)
            except Exception as exc:
                raise ValueError(f"database URL {str(target)!r} does not parse: {exc}") from None
            self.engine = create_sink_engine(
                target,
                busy_timeout=busy_timeout,
                connect_timeout=connect_timeout,
                application_name=application_name,
            )
            self._owns_engine = True
        else:
            raise TypeError(
                f"DatabaseSink target must be a database URL or a sqlalchemy Engine, got {target!r}"
            )
        self.dialect = self.engine.dialect.name
        self.name = name or f"{self.dialect}:{table}"
        self.wants_aggregated = wants_aggregated
        self.metadata = sa.MetaData()
        self.table = events_table(self.metadata, table, schema=schema)
        self.notify_channel = notify_channel if self.dialect == "postgresql" else None
        self.use_copy = bool(use_copy) and self.dialect == "postgresql" and self.engine.dialect.driver == "psycopg2"
        self._create_table = create_table
        self._ready = False
        self._ready_lock = threading.Lock()
        self._pid = os.getpid()
        self._sqlite_sql: str | None = None
        # Counters: what this sink stored, refused, and how often it split or fell back.
        self.rows_written = 0
        self.rows_refused = 0
        self.batches_written = 0
        self.splits = 0
        self.copy_conflicts = 0

    # --- setup ---------------------------------------------------------------------------
    def ensure_table(self) -> None:
        """Create the table and its indexes if they are missing (once per sink; cheap after)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            if self._create_table:
                create_all_concurrently(self.metadata, self.engine)
            self._ready = True

    # --- the contract --------------------------------------------------------------------
    def send(self, batch: Sequence[Event]) -> None:
        """Store ``batch``; raise TransientSinkError to be retried, PermanentSinkError to refuse."""
        if not batch:
            return
        try:
            self.ensure_table()
            self._write(batch)
        except PermanentSinkError:
            raise  # already decided (an unsupported dialect, a batch-level refusal)
        except Exception as exc:
            kind = classify_error(exc)
            if kind is ErrorKind.TRANSIENT:
                raise TransientSinkError(f"{self.name}: {_short(exc)}") from exc
            if kind is ErrorKind.PERMANENT or len(batch) == 1:
                if len(batch) == 1:
                    self.rows_refused += 1
                raise PermanentSinkError(f"{self.name}: {_short(exc)}", events=list(batch)) from exc
            bad = self._split(batch)
            if bad:
                self.rows_refused += len(bad)
                raise PermanentSinkError(
                    f"{self.name}: {len(bad)} of {len(batch)} events refused by the database "
                    f"(first: {bad[0][0].id} {_short(bad[0][1])}); the other {len(batch) - len(bad)} were stored",
                    events=[e for e, _ in bad],
                ) from exc

    def close(self, timeout: float | None = None) -> None:
        """Dispose the Engine if this sink made it; a given Engine is left to its owner."""
        if self._owns_engine:
            self.engine.dispose()

    def after_fork_in_child(self) -> None:
        """Drop the parent's pooled connections (without closing them under the parent)."""
        if self._owns_engine:
            self.engine.dispose(close=False)
        self._ready_lock = threading.Lock()  # another thread may have held it at fork
        self._pid = os.getpid()

    # --- writing -------------------------------------------------------------------------
    def _split(self, batch: Sequence[Event]) -> list[tuple[Event, BaseException]]:
        """Write ``batch`` in halves, recursively; return the events no write could store."""
        bad: list[tuple[Event, BaseException]] = []
        stack = [list(batch)]
        while stack:
            part = stack.pop()
            try:
                self._write(part)
            except Exception as exc:
                kind = classify_error(exc)
                if kind is ErrorKind.TRANSIENT:
                    # What is stored stays stored; the retry of the whole batch skips it.
                    raise
                if kind is ErrorKind.PERMANENT:  # the batch, not a row: refuse it all
                    raise PermanentSinkError(f"{self.name}: {_short(exc)}", events=list(batch)) from exc
                if len(part) == 1:
                    logger.warning("%s: event %s refused: %s", self.name, part[0].id, _short(exc))
                    bad.append((part[0], exc))
                else:
                    self.splits += 1
                    mid = len(part) // 2
                    stack.append(part[mid:])
                    stack.append(part[:mid])
        return bad

    def _write(self, batch: Sequence[Event]) -> None:
        if self.use_copy:
            stored = self._write_copy(batch)
        else:
            stored = self._write_insert(batch)
        self.rows_written += stored
        self.batches_written += 1

    def _insert_statement(self) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            raise PermanentSinkError(
                f"{self.name}: DatabaseSink supports sqlite and postgresql, not {self.dialect!r}"
            )
        return insert(self.table).on_conflict_do_nothing(index_elements=["event_id"])

    def _write_insert(self, batch: Sequence[Event]) -> int:
        if self.dialect == "sqlite" and self.engine.dialect.driver == "pysqlite":
            return self._write_sqlite(batch)
        stmt = self._insert_statement()
        rows = [event_row(e) for e in batch]
        with self.engine.begin() as conn:
            if self.dialect == "postgresql":
                # With RETURNING, SQLAlchemy batches the rows into multi-row VALUES pages
                # ("insertmanyvalues"), and the ids returned count what was really inserted.
                stored = len(conn.execute(stmt.returning(self.table.c.id), rows).all())
            else:
                execute_rows(conn, stmt, rows)
                stored = len(rows)  # at most: rows already stored are skipped
            if self.notify_channel and stored:
                conn.execute(sa.select(sa.func.pg_notify(self.notify_channel, self.table.name)))
        return stored

    def _write_sqlite(self, batch: Sequence[Event]) -> int:
        """One ``executemany`` of plain tuples: what SQLAlchemy's compiled INSERT stores (its
        DateTime text, its JSON text), without its per-row parameter processing, which cost
        as much as the insert itself."""
        if self._sqlite_sql is None:
            target = self.engine.dialect.identifier_preparer.format_table(self.table)
            self._sqlite_sql = (
                f"INSERT INTO {target} ({', '.join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (event_id) DO NOTHING"
            )
        dumps = json.dumps
        rows = [
            (e.id, e.type, dumps(e.data), e.priority.name, e.source, e.worker,
             f"{e.created_datetime:%Y-%m-%d %H:%M:%S.%f}", e.batch_count)
            for e in batch
        ]
        with self.engine.begin() as conn:
            conn.exec_driver_sql(self._sqlite_sql, rows)
        return len(rows)  # at most: rows already stored are skipped

    def _write_copy(self, batch: Sequence[Event]) -> int:
        from psycopg2 import errors as pg_errors
        from psycopg2 import sql

        target = sql.Identifier(self.table.schema, self.table.name) if self.table.schema else sql.Identifier(self.table.name)
        columns = sql.SQL(", ").join(map(sql.Identifier, EVENT_COLUMNS))
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                try:
                    cur.copy_expert(
                        sql.SQL("COPY {} ({}) FROM STDIN").format(target, columns).as_string(cur),
                        _copy_buffer(batch),
                    )
                    stored = cur.rowcount
                except pg_errors.UniqueViolation:
                    # Some events are stored already (a retried batch): skip them by event_id.
                    raw.rollback()
                    self.copy_conflicts += 1
                    stored = self._copy_staged(cur, target, columns, batch)
                if self.notify_channel and stored:
                    cur.execute("SELECT pg_notify(%s, %s)", (self.notify_channel, self.table.name))
                raw.commit()
                return stored
            finally:
                cur.close()
        except BaseException as exc:
            self._discard(raw, exc)
            raise
        finally:
            raw.close()

    def _copy_staged(self, cur: Any, target: Any, columns: Any, batch: Sequence[Event]) -> int:
        from psycopg2 import sql

        cur.execute(
            "CREATE TEMP TABLE timelapser_stage (ord bigserial, event_id text, type text, data text, priority text,"
            " source text, worker text, created_at text, batch_count integer) ON COMMIT DROP"
        )
        cur.copy_expert(
            sql.SQL("COPY timelapser_stage ({}) FROM STDIN").format(columns).as_string(cur),
            _copy_buffer(batch),
        )
        cur.execute(
            sql.SQL(
                "INSERT INTO {} ({}) SELECT event_id, type, data::jsonb, priority, source, worker,"
                " created_at::timestamptz, batch_count FROM timelapser_stage ORDER BY ord"
                " ON CONFLICT (event_id) DO NOTHING"
            )
            .format(target, columns)
            .as_string(cur)
        )
        return int(cur.rowcount)

    def _discard(self, raw: Any, exc: BaseException) -> None:
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
                f"unknown option(s) {', '.join(sorted(query))} in {url!r}; "
                f"DatabaseSink takes {', '.join(sorted(URL_OPTIONS))}"
            )
        unknown_driver = set(query) - _LIBPQ_OPTIONS
        if unknown_driver:
            raise ValueError(
                f"unknown option(s) {', '.join(sorted(unknown_driver))} in {url!r}; DatabaseSink takes "
                f"{', '.join(sorted(URL_OPTIONS))}, and libpq options such as sslmode"
            )
        both = set(sink_opts) & set(options)
        if both:
            raise ValueError(f"option(s) {', '.join(sorted(both))} given both in the URL and as arguments")
        kwargs = parse_options(URL_OPTIONS, sink_opts, where=url)
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


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
