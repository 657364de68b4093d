"""What only PostgreSQL has: COPY's own failures, NOTIFY, and a server that goes away."""

from __future__ import annotations

import select
import time
from urllib.parse import urlsplit

import pytest

from timelapser_workers.sinks.database import DatabaseSink
from tcp_proxy import TcpProxy
from timelapser_workers.errors import PermanentSinkError, TransientSinkError
from timelapser_workers.events import make_event

pytestmark = pytest.mark.postgres


@pytest.fixture
def table(postgres_url: str, unique_name: str, pg_conn):
    yield unique_name
    with pg_conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {unique_name}")


def count(pg_conn, table: str) -> int:
    with pg_conn.cursor() as cur:
        cur.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {table}")
        total, distinct = cur.fetchone()
    assert total == distinct, "an event was stored twice"
    return total


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_a_nul_character_is_a_poison_row(postgres_url: str, table: str, pg_conn, use_copy: bool) -> None:
    """PostgreSQL text and JSONB cannot hold U+0000: that row is refused, the rest commit."""
    sink = DatabaseSink(postgres_url, table=table, use_copy=use_copy)
    events = [make_event("JOB_COMPLETED", {"i": i}) for i in range(9)]
    events[4] = make_event("JOB_COMPLETED", {"text": "nul\x00here"})
    events[6] = make_event("JOB_COMPLETED", {"i": 6}, worker="bad\x00worker")
    with pytest.raises(PermanentSinkError) as info:
        sink.send(events)
    assert {e.id for e in info.value.events} == {events[4].id, events[6].id}
    assert count(pg_conn, table) == 7
    sink.close()


def test_each_stored_batch_notifies_in_its_transaction(postgres_url: str, table: str, pg_conn, unique_name: str) -> None:
    channel = f"ch_{unique_name}"
    with pg_conn.cursor() as cur:
        cur.execute(f"LISTEN {channel}")
    sink = DatabaseSink(postgres_url, table=table, notify_channel=channel)
    sink.send([make_event("JOB_STARTED")])
    deadline = time.monotonic() + 5
    got = []
    while not got and time.monotonic() < deadline:
        select.select([pg_conn], [], [], 0.2)
        pg_conn.poll()
        got = [(n.channel, n.payload) for n in pg_conn.notifies]
    assert got == [(channel, table)]
    sink.close()


def test_notify_channel_is_validated(postgres_url: str) -> None:
    with pytest.raises(ValueError, match="notify channel 'a b'"):
        DatabaseSink(postgres_url, notify_channel="a b")


def test_psycopg2_is_the_driver_of_a_plain_postgresql_url(postgres_url: str, table: str) -> None:
    sink = DatabaseSink(postgres_url, table=table)
    assert sink.engine.dialect.driver == "psycopg2" and sink.use_copy
    sink.close()


def test_server_unreachable_then_back(postgres_url: str, table: str, pg_conn) -> None:
    """Through a proxy the test cuts: transient errors while down, delivered after; nothing twice."""
    parts = urlsplit(postgres_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    try:
        url = postgres_url.replace(parts.netloc, f"{parts.username}@127.0.0.1:{proxy.port}")
        sink = DatabaseSink(url, table=table, connect_timeout=2)
        first = [make_event("JOB_STARTED", {"i": i}) for i in range(10)]
        sink.send(first)  # a pooled connection now exists; the cut kills it
        proxy.down()
        second = [make_event("JOB_COMPLETED", {"i": i}) for i in range(10)]
        for _ in range(3):
            t0 = time.monotonic()
            with pytest.raises(TransientSinkError):
                sink.send(second)
            assert time.monotonic() - t0 < 3, "a send to a dead server must fail fast"
        proxy.up()
        sink.send(second)
        assert count(pg_conn, table) == 20
        sink.send(second)  # and a retry after a lost acknowledgement stores nothing twice
        assert count(pg_conn, table) == 20
        sink.close()
    finally:
        proxy.close()


def test_a_pooled_connection_killed_while_idle_is_replaced_not_reused(pg_db) -> None:
    sink = DatabaseSink(pg_db.url, table=pg_db.table)
    sink.send([make_event("JOB_STARTED")])  # leaves one idle connection in the pool
    assert pg_db.kill_backends() == 1
    sink.send([make_event("JOB_STARTED")])  # pre-ping finds it dead and connects afresh
    assert len(pg_db.event_ids()) == 2
    sink.close()
