"""DatabaseSink behind the real EventBatcher: retries, dead letters and exact counts."""

from __future__ import annotations

import threading
from typing import Sequence
from urllib.parse import urlsplit

import pytest

from timelapser_workers.sinks.database import DatabaseSink
from tcp_proxy import TcpProxy
from timelapser_workers.batcher import EventBatcher
from timelapser_workers.events import Event


class DeadLetters:
    """A dead-letter handler that keeps what it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[Event], str, str, BaseException | None]] = []

    def __call__(self, events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None) -> None:
        self.calls.append((list(events), sink_name, reason, error))

    @property
    def events(self) -> list[Event]:
        return [e for call in self.calls for e in call[0]]


def emit_jobs(batcher: EventBatcher, n: int, type: str = "JOB_STARTED", worker: str = "w") -> list[Event]:
    return [batcher.emit(type, {"job_id": i}, worker=worker) for i in range(n)]


def test_batches_arrive_once_each_with_raw_events(db) -> None:
    dead = DeadLetters()
    sink = DatabaseSink(db.url, table=db.table, wants_aggregated=False)
    with EventBatcher([sink], batch_size=10, batch_timeout=0.05, dead_letter=dead) as batcher:
        events = emit_jobs(batcher, 35) + emit_jobs(batcher, 5, "JOB_COMPLETED", worker="v")
        result = batcher.flush(10)
    assert result == (40, 0, 0)
    assert sorted(db.event_ids()) == sorted(e.id for e in events)
    assert dead.calls == []


def test_a_poison_row_is_dead_lettered_and_the_rest_commit(db) -> None:
    dead = DeadLetters()
    sink = DatabaseSink(db.url, table=db.table, wants_aggregated=False)
    sink.ensure_table()
    db.refuse_type("POISON")
    with EventBatcher([sink], batch_size=50, batch_timeout=0.05, retry_delay=0.01, dead_letter=dead) as batcher:
        good = emit_jobs(batcher, 20)
        bad = batcher.emit("POISON", {"n": 1}, worker="w")
        good += emit_jobs(batcher, 9)
        result = batcher.flush(10)
        stats = batcher.stats()["sinks"][sink.name]
    assert result == (29, 1, 0)
    assert [e.id for e in dead.events] == [bad.id]
    assert dead.calls[0][2] == "permanent_error"
    assert sorted(db.event_ids()) == sorted(e.id for e in good)
    assert stats["retries"] == 0  # refused at once, not retried


@pytest.mark.postgres
def test_backend_killed_mid_batch_is_retried_nothing_lost_nothing_twice(pg_db) -> None:
    import psycopg2

    db = pg_db
    dead = DeadLetters()
    sink = DatabaseSink(db.url, table=db.table, wants_aggregated=False)
    sink.ensure_table()
    holder = psycopg2.connect(db.dsn, application_name="timelapser-test-observer")
    holder.cursor().execute(f"LOCK TABLE {db.table} IN SHARE MODE")
    with EventBatcher([sink], batch_size=25, batch_timeout=0.05, max_retries=3, retry_delay=0.05, dead_letter=dead) as batcher:
        events = emit_jobs(batcher, 100)
        killed = db.kill_backends(waiting_on_lock=True)
        holder.rollback()
        holder.close()
        result = batcher.flush(10)
        stats = batcher.stats()["sinks"][sink.name]
    assert killed == 1
    assert result == (100, 0, 0)
    assert dead.calls == []
    assert stats["retries"] >= 1
    assert sorted(db.event_ids()) == sorted(e.id for e in events)  # all there, none twice


def _proxied(postgres_url: str, proxy: TcpProxy) -> str:
    parts = urlsplit(postgres_url)
    return postgres_url.replace(parts.netloc, f"{parts.username}@127.0.0.1:{proxy.port}")


@pytest.fixture
def proxy(postgres_url: str):
    parts = urlsplit(postgres_url)
    p = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    yield p
    p.close()


@pytest.mark.postgres
def test_outage_shorter_than_the_retry_budget_is_delivered_after_recovery(postgres_url: str, proxy: TcpProxy, unique_name: str, pg_conn) -> None:
    dead = DeadLetters()
    sink = DatabaseSink(_proxied(postgres_url, proxy), table=unique_name, wants_aggregated=False, connect_timeout=2)
    try:
        with EventBatcher([sink], batch_size=10, batch_timeout=0.05, max_retries=8, retry_delay=0.1, retry_max_delay=0.4, dead_letter=dead) as batcher:
            before = emit_jobs(batcher, 10)
            assert batcher.flush(10) == (10, 0, 0)
            proxy.down()
            during = emit_jobs(batcher, 30)
            threading.Timer(1.0, proxy.up).start()  # a short outage: about 1 s of the ~2.5 s budget
            result = batcher.flush(15)
            stats = batcher.stats()["sinks"][sink.name]
        assert result == (30, 0, 0), stats
        assert stats["retries"] >= 1 and dead.calls == []
        with pg_conn.cursor() as cur:
            cur.execute(f"SELECT event_id FROM {unique_name}")
            stored = [r[0] for r in cur.fetchall()]
        assert sorted(stored) == sorted(e.id for e in before + during)
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")


@pytest.mark.postgres
def test_outage_longer_than_the_retry_budget_is_dead_lettered_and_counted(postgres_url: str, proxy: TcpProxy, unique_name: str, pg_conn) -> None:
    dead = DeadLetters()
    sink = DatabaseSink(_proxied(postgres_url, proxy), table=unique_name, wants_aggregated=False, connect_timeout=2)
    try:  # without a spool (with one: tests/faults/test_spool_outages.py)
        with EventBatcher([sink], batch_size=10, batch_timeout=0.05, max_retries=2, retry_delay=0.05,
                          retry_max_delay=0.1, dead_letter=dead, spool_max_bytes=0) as batcher:
            emit_jobs(batcher, 5)
            assert batcher.flush(10) == (5, 0, 0)
            proxy.down()
            lost = emit_jobs(batcher, 20)
            result = batcher.flush(10)
            stats = batcher.stats()["sinks"][sink.name]
        assert result == (0, 20, 0)
        assert sorted(e.id for e in dead.events) == sorted(e.id for e in lost)
        assert {c[2] for c in dead.calls} == {"retries_exhausted"}
        assert stats["dead_lettered"] == 20 and stats["retries"] == 2 * len(dead.calls)
        with pg_conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {unique_name}")
            assert cur.fetchone()[0] == 5
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")
