"""DatabaseEventSource: tail the events table into an SSEHub, so a web process serves events
that workers in other processes (or machines) wrote through the DatabaseSink.

On PostgreSQL a LISTEN connection wakes it when the sink's ``NOTIFY`` arrives (the payload is
only a hint: the table is the truth), with a slow fallback poll; on SQLite it polls. LISTEN
works through psycopg2 and psycopg 3 (whichever the engine uses); other drivers poll.

No row is skipped when transactions commit out of id order. The source remembers the ids it
has not seen below the highest one it has (``missing``): a missing id is either a transaction
still in flight or a rolled-back one. It keeps looking for it until every transaction that
could hold it has ended: ``gap_grace_seconds`` after the gap was seen it notes the server's next
transaction id (snapshot xmax); once the oldest running transaction (snapshot xmin) is past
that, it looks one last time and then gives the id up as never committed. This assumes the id
sequence hands out ids in time order (the default, ``CACHE 1``).

Fork-safe: a source started before a fork (``gunicorn --preload``, multiprocessing) starts
again in the child, with its own thread, pipe and LISTEN connection, from where the parent was;
the parent's connections are left to the parent. A table that does not exist yet (a fresh
database, before the first DatabaseSink write) is waited for, not an error. ``stats()`` says
what the source is doing in this process: ``state``, whether its thread is alive, listening.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import threading
import time
from typing import Any, Sequence

import sqlalchemy as sa

from timelapser_workers import lifecycle
from timelapser_workers.sinks.sse.hub import SSEHub
from timelapser_workers.sql.codec import EVENT_COLUMNS, row_record
from timelapser_workers.sql.engine import create_sink_engine
from timelapser_workers.sql.schema import DEFAULT_NOTIFY_CHANNEL, DEFAULT_TABLE, check_identifier

__all__ = ["DatabaseEventSource"]

log = logging.getLogger(__name__)

_COLUMNS = ", ".join(("id", *EVENT_COLUMNS))
_LISTEN_DRIVERS = ("psycopg2", "psycopg")


def _drain_notifies(conn: Any) -> int:
    """Read the notifications waiting on a LISTEN connection (without blocking); how many.
    psycopg2 queues them in ``conn.notifies`` after ``poll()``; psycopg 3 yields them from
    ``conn.notifies(timeout=0)``."""
    if callable(getattr(conn, "poll", None)):  # psycopg2
        conn.poll()
        count = len(conn.notifies)
        conn.notifies.clear()
        return count
    return sum(1 for _ in conn.notifies(timeout=0))


@dataclasses.dataclass
class _Gap:
    ids: set[int]
    seen: float  # monotonic
    xmax: int | None = None  # the server's next xid, noted gap_grace_seconds after ``seen``


class DatabaseEventSource:
    """Tail ``table`` into ``hub`` on a daemon thread; ``start()``, then ``stop(timeout)``.

    ``engine``: an SQLAlchemy Engine (yours; never disposed here) or a URL (then ours).
    ``poll_interval_seconds``: the fallback poll (default 2.0 on PostgreSQL, 0.5 on SQLite).
    ``gap_poll_seconds``: the poll while ids are missing. ``backfill_events``: rows loaded into the
    hub's replay buffer at start, so browsers can resume across a restart of the web process.
    ``max_gap_ids``: a jump in ids larger than this is a sequence jump, not transactions in
    flight; those ids are not waited for (counted in ``gaps_given_up``, logged).
    """

    def __init__(
        self,
        engine: sa.engine.Engine | str,
        hub: SSEHub,
        *,
        table: str = DEFAULT_TABLE,
        channel: str = DEFAULT_NOTIFY_CHANNEL,
        poll_interval_seconds: float | None = None,
        gap_poll_seconds: float = 0.1,
        gap_grace_seconds: float = 0.5,
        backfill_events: int = 100,
        batch_rows: int = 1000,
        max_gap_ids: int = 10_000,
        listen: bool = True,
    ) -> None:
        self._own_engine = isinstance(engine, str)
        self.engine = (
            create_sink_engine(engine, application_name="timelapser-workers-sse")
            if isinstance(engine, str)
            else engine
        )
        self.hub = hub
        self.table = check_identifier(table)
        self.channel = check_identifier(channel, "notify channel")
        self.is_postgres = self.engine.dialect.name == "postgresql"
        default_poll = 2.0 if self.is_postgres else 0.5
        self.poll_interval_seconds = float(poll_interval_seconds or default_poll)
        self.gap_poll_seconds = gap_poll_seconds
        self.gap_grace_seconds = gap_grace_seconds
        self.backfill_events = backfill_events
        self.batch_rows = batch_rows
        self.max_gap_ids = max_gap_ids
        self.listen = listen and self.is_postgres
        if self.listen and self.engine.dialect.driver not in _LISTEN_DRIVERS:
            log.warning(
                "LISTEN needs the psycopg2 or psycopg (3) driver, not %r; polling %s every %.1fs instead",
                self.engine.dialect.driver, self.table, self.poll_interval_seconds,
            )
            self.listen = False
        self.top = 0  # highest id seen
        self.missing: set[int] = set()
        self._gaps: list[_Gap] = []
        self._started = False
        self._ready = False  # backfilled: the table exists and top is known
        self._state = "not started"
        self._pid = os.getpid()
        self._last_poll: float | None = None  # monotonic
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._listener: Any = None
        self.listener_pid: int | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one poll at a time (thread and poll_once callers)
        self.counters = {
            "rows_delivered": 0,
            "polls": 0,
            "poll_errors": 0,
            "notifications": 0,
            "listener_connects": 0,
            "listener_errors": 0,
            "gaps_filled": 0,
            "gaps_given_up": 0,
            "restarts_after_fork": 0,
        }
        lifecycle.after_fork_in_child(self._after_fork)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "DatabaseEventSource":
        """Backfill the hub (if the table exists yet), then tail on a daemon thread. Returns self.

        Never fails on the database: a missing table is waited for, an unreachable server is
        retried (both logged, and shown by :meth:`stats`).
        """
        if self._started:
            raise RuntimeError("DatabaseEventSource already started")
        self._started = True
        self._try_backfill()
        self._start_thread()
        return self

    def _start_thread(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"sse-db-source-{self.table}", daemon=True)
        self._thread.start()

    def _after_fork(self) -> None:
        """In a forked child: the thread is gone and the connections are the parent's. Start
        afresh from where the parent was (its replay buffer came along in the hub)."""
        self._lock = threading.Lock()
        stopped, self._stop = self._stop.is_set(), threading.Event()
        if stopped:
            self._stop.set()
        self._pid = os.getpid()
        # the parent's LISTEN connection and pooled connections stay the parent's: dropped here,
        # never closed (psycopg2 closes a connection only in the process that opened it)
        self._listener = None
        self.engine.dispose(close=False)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r, self._wake_w = os.pipe()
        if self._started and not self._stop.is_set():
            self.counters["restarts_after_fork"] += 1
            self._start_thread()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (within ``timeout`` seconds) and close the listener."""
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("DatabaseEventSource thread did not stop within %.1fs", timeout)
        self._close_listener()
        self._state = "stopped"
        if self._own_engine:
            self.engine.dispose()

    def stats(self) -> dict[str, Any]:
        """What the source does in this process: ``state`` ("not started", "waiting for table",
        "tailing", "failing", "stopped"), ``thread_alive``, ``listening`` (a LISTEN connection
        of this process, on a live thread), seconds since the last completed poll, counters, the
        highest id seen and how many ids are missing (in flight or given up)."""
        alive = self._thread is not None and self._thread.is_alive()
        return {
            **self.counters,
            "state": self._state,
            "pid": self._pid,
            "thread_alive": alive,
            "listening": alive and self._listener is not None,
            "last_poll_age_seconds": None if self._last_poll is None else round(time.monotonic() - self._last_poll, 3),
            "top_id": self.top,
            "missing_ids": len(self.missing),
        }

    # --- the loop -----------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            if not self._ready:
                if not self._try_backfill():
                    self._stop.wait(self.poll_interval_seconds)
                    continue
            catch_up = False
            if self.listen and self._listener is None:
                # LISTEN first, then read the table: a row committed in between is in the read,
                # a row committed after it sends a NOTIFY we hear
                self._connect_listener()
                catch_up = self._listener is not None
            if not catch_up:
                timeout = self.gap_poll_seconds if self.missing else self.poll_interval_seconds
                lost = self._wait(max(timeout, backoff))
                if self._stop.is_set():
                    break
                if lost:
                    continue  # reconnect the listener before catching up
            try:
                self.poll_once()
                backoff = 0.0
                self._state = "tailing"
            except Exception as exc:
                self._state = "failing"
                self.counters["poll_errors"] += 1
                backoff = min(max(backoff * 2, 0.5), 10.0)
                log.warning("polling %s failed (%s); retrying in %.1fs", self.table, exc, backoff)

    def _wait(self, timeout: float) -> bool:
        """Sleep until a NOTIFY, stop(), or ``timeout``; True if the listener was lost meanwhile."""
        fds = [self._wake_r]
        if self._listener is not None:
            fds.append(self._listener)
        try:
            readable, _, _ = select.select(fds, [], [], timeout)
        except (OSError, ValueError) as exc:  # the listener's socket went away
            log.warning("waiting on the LISTEN connection failed: %s", exc)
            self._listener_failed()
            return True
        if self._wake_r in readable:
            os.read(self._wake_r, 64)
        if self._listener is not None and self._listener in readable:
            try:
                self.counters["notifications"] += _drain_notifies(self._listener)
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting and catching up from the table", exc)
                self._listener_failed()
                return True
        return False

    def _connect_listener(self) -> None:
        try:
            raw = self.engine.raw_connection()
            conn: Any = raw.driver_connection
            raw.detach()  # ours for good: never back into the user's pool
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'LISTEN "{self.channel}"')
                cur.execute("SELECT pg_backend_pid()")
                self.listener_pid = cur.fetchone()[0]
            self._listener = conn
            self.counters["listener_connects"] += 1
        except Exception as exc:
            self.counters["listener_errors"] += 1
            log.warning("cannot LISTEN on %s (%s); polling every %.1fs meanwhile", self.channel, exc, self.poll_interval_seconds)
            self._listener = None

    def _listener_failed(self) -> None:
        self.counters["listener_errors"] += 1
        self._close_listener()

    def _close_listener(self) -> None:
        conn, self._listener = self._listener, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    # --- reading the table --------------------------------------------------------------------
    def _select(self, where: str) -> str:
        return f"SELECT {_COLUMNS} FROM {self.table} WHERE {where}"

    def _try_backfill(self) -> bool:
        """Backfill if the table exists; False (logged once per state) while it does not or
        the database cannot be reached."""
        try:
            if not sa.inspect(self.engine).has_table(self.table):
                if self._state != "waiting for table":
                    log.warning(
                        "table %s does not exist yet in %s; waiting for it (a DatabaseSink creates "
                        "it on its first write), checking every %.1fs",
                        self.table, self.engine.url.render_as_string(hide_password=True),
                        self.poll_interval_seconds,
                    )
                self._state = "waiting for table"
                return False
            self._backfill()
        except Exception as exc:
            self.counters["poll_errors"] += 1
            if self._state != "failing":
                log.warning("reading %s failed (%s); retrying every %.1fs", self.table, exc, self.poll_interval_seconds)
            self._state = "failing"
            return False
        self._ready = True
        self._state = "tailing"
        return True

    def _backfill(self) -> None:
        with self.engine.connect() as conn:
            rows = list(conn.execute(
                sa.text(f"SELECT {_COLUMNS} FROM {self.table} ORDER BY id DESC LIMIT :n"),
                {"n": self.backfill_events},
            ).fetchall())
            if not rows:
                top = conn.execute(sa.text(f"SELECT max(id) FROM {self.table}")).scalar()
                self.top = int(top or 0)
                return
        rows.reverse()
        self.top = rows[0].id - 1
        self._take(rows)

    def _take(self, rows: Sequence[Any]) -> None:
        """Publish new rows (in id order) and track which ids below the top are missing."""
        fresh = []
        new_missing: set[int] = set()
        for row in rows:
            rid = int(row.id)
            if rid > self.top:
                jump = rid - self.top - 1
                if jump > self.max_gap_ids:  # a sequence reset or jump, not transactions in flight
                    self.counters["gaps_given_up"] += jump
                    log.warning(
                        "%s ids jumped from %d to %d; not waiting for the %d ids between "
                        "(more than max_gap_ids=%d)", self.table, self.top, rid, jump, self.max_gap_ids,
                    )
                else:
                    new_missing.update(range(self.top + 1, rid))
                self.top = rid
                fresh.append(row)
            elif rid in self.missing:
                self.missing.discard(rid)
                self.counters["gaps_filled"] += 1
                fresh.append(row)
            new_missing.discard(rid)
        if new_missing:
            self.missing |= new_missing
            self._gaps.append(_Gap(new_missing, time.monotonic()))
        if fresh:
            self.hub.publish_records([row_record(r) for r in fresh])
            self.counters["rows_delivered"] += len(fresh)

    def _snapshot(self, conn: sa.engine.Connection) -> tuple[int, int]:
        row = conn.execute(
            sa.text("SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint FROM pg_current_snapshot() s")
        ).one()
        return int(row[0]), int(row[1])

    def poll_once(self) -> int:
        """Read what is new (and what was missing) from the table into the hub; return rows taken."""
        with self._lock:
            before = self.counters["rows_delivered"]
            with self.engine.connect() as conn:
                settled: list[_Gap] = []
                if self._gaps:
                    if self.is_postgres:
                        xmin, xmax = self._snapshot(conn)
                        now = time.monotonic()
                        for gap in self._gaps:
                            if gap.xmax is None and now - gap.seen >= self.gap_grace_seconds:
                                gap.xmax = xmax
                            elif gap.xmax is not None and xmin >= gap.xmax:
                                settled.append(gap)
                    else:  # SQLite commits one writer at a time, in id order: a gap is a rollback
                        settled = list(self._gaps)
                    conn.commit()  # the reads below see everything committed by now
                while True:
                    rows = conn.execute(
                        sa.text(self._select("id > :top ORDER BY id LIMIT :n")),
                        {"top": self.top, "n": self.batch_rows},
                    ).fetchall()
                    self._take(rows)
                    if len(rows) < self.batch_rows:
                        break
                if self.missing:
                    wanted = sorted(self.missing)
                    for i in range(0, len(wanted), 500):
                        chunk = wanted[i : i + 500]
                        rows = conn.execute(
                            sa.text(self._select("id IN :ids ORDER BY id")).bindparams(sa.bindparam("ids", expanding=True)),
                            {"ids": chunk},
                        ).fetchall()
                        self._take(rows)
                for gap in settled:
                    lost = gap.ids & self.missing
                    if lost:
                        self.missing -= lost
                        self.counters["gaps_given_up"] += len(lost)
                        log.debug("ids %s of %s never committed (rolled back)", sorted(lost)[:10], self.table)
                    self._gaps.remove(gap)
                self._gaps = [g for g in self._gaps if g.ids & self.missing]
            self.counters["polls"] += 1  # completed polls: a test can wait for "read after X"
            self._last_poll = time.monotonic()
            return self.counters["rows_delivered"] - before
