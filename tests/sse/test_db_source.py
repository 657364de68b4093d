"""DatabaseEventSource: the events table tailed into a hub, on SQLite and on PostgreSQL, and
across processes with PostgreSQL as the bus."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sinks.sse import SSEHub
from timelapser_workers.sources.database import DatabaseEventSource
from timelapser_workers.sinks.sse.wsgi import ServerThread, SSEWsgiApp, make_server
from tests.sse.conftest import PG_URL, SSETestClient, events, marker, wait_until, write_rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served_hub():
    hub = SSEHub(replay_events=2000, client_queue_events=5000)
    server = ServerThread(make_server(SSEWsgiApp(hub, keepalive_seconds=0.5))).start()
    clients = []

    def connect(**kw):
        client = SSETestClient(server.server.server_address[1], **kw)
        clients.append(client)
        wait_until(lambda: hub.client_count >= 1, 5, "the client to register")
        return client

    yield hub, connect
    hub.close()
    for c in clients:
        c.close()
    server.stop()


def test_sqlite_polling_delivers_rows_in_order_and_backfills(sqlite_engine, served_hub):
    engine, table = sqlite_engine
    hub, connect = served_hub
    sink = DatabaseSink(engine, table=table)  # the real writer: rows exactly as workers store them
    early = events(3)
    sink.send(early)
    source = DatabaseEventSource(engine, hub, table=table, poll_interval_seconds=0.05, backfill_events=2).start()
    try:
        assert hub.replay_ids() == [e.id for e in early[1:]]  # backfilled for resuming browsers
        client = connect(headers={"Last-Event-ID": early[1].id})
        later = events(5) + events(5, worker="w2")
        for i in range(0, 10, 5):
            sink.send(later[i : i + 5])
        got = client.wait_for(11)
        assert [m["id"] for m in got] == [e.id for e in early[2:] + later]
        row = got[-1]["json"]
        assert row["worker"] == "w2" and row["data"] == {"i": 4} and row["priority"] == "NORMAL"
        assert abs(row["created_at"] - later[-1].created_at) < 1e-3
        assert source.stats()["missing_ids"] == 0
    finally:
        source.stop()


def test_bad_table_name_is_refused(sqlite_engine):
    engine, _ = sqlite_engine
    with pytest.raises(ValueError, match="events; DROP"):
        DatabaseEventSource(engine, SSEHub(), table="events; DROP TABLE x")


@pytest.mark.postgres
def test_postgres_notify_wakes_and_out_of_order_commit_is_not_skipped(pg_engine, pg_table, served_hub):
    hub, connect = served_hub
    source = DatabaseEventSource(pg_engine, hub, table=pg_table, channel=pg_table, poll_interval_seconds=30, gap_grace_seconds=0.2).start()
    try:
        client = connect()
        first = events(2)
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, first, notify=pg_table)
        client.wait_for(2, timeout=5)  # the fallback poll is 30 s: this was the NOTIFY
        # A takes lower ids but commits after B; a rolled-back C leaves a permanent gap
        slow = events(3, worker="slow")
        a = pg_engine.connect()
        a_txn = a.begin()
        write_rows(a, pg_table, slow, notify=pg_table)
        with pg_engine.connect() as c:
            write_rows(c, pg_table, events(2, worker="rolled-back"), notify=pg_table)
            c.rollback()
        fast = events(3, worker="fast")
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, fast, notify=pg_table)
        client.wait_for(5, timeout=5)
        # well past the gap grace (0.2 s) while A is still open: the source polls every 0.1 s
        # for the missing ids and must go on waiting for them, not give them up
        polls = source.stats()["polls"]
        wait_until(lambda: source.stats()["polls"] >= polls + 8, 10, "eight more polls (> 0.8 s)")
        assert source.stats()["missing_ids"] >= 3 and source.stats()["gaps_given_up"] == 0
        end = marker()
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, [end], notify=pg_table)
        assert [m["id"] for m in client.until(end.id)] == [e.id for e in first + fast]
        a_txn.commit()
        a.execute(sa.text(f"NOTIFY {pg_table}"))
        a.commit()
        a.close()
        got = client.wait_for(9, timeout=5)
        assert [m["id"] for m in got] == [e.id for e in first + fast + [end] + slow]
        wait_until(lambda: source.stats()["missing_ids"] == 0, 5, "the rolled-back ids to be given up")
        assert source.stats()["gaps_given_up"] == 2
        end2 = marker()
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, [end2], notify=pg_table)
        assert len(client.until(end2.id)) == 9  # the rolled-back rows never appear
    finally:
        source.stop()


@pytest.mark.postgres
def test_postgres_lost_listener_reconnects_and_catches_up(pg_engine, pg_table, served_hub):
    hub, connect = served_hub
    source = DatabaseEventSource(pg_engine, hub, table=pg_table, channel=pg_table, poll_interval_seconds=30).start()
    try:
        client = connect()
        wait_until(lambda: source.listener_pid and source.stats()["polls"] >= 1, 5, "the listener and its first read")
        old_pid = source.listener_pid
        # rows nobody is told about (no NOTIFY; the fallback poll is 30 s away) ...
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, events(3), notify=None)
        client.wait_comments("keep-alive", 2)  # a second on a live stream: they stay unseen
        assert client.events() == [] and hub.stats()["events_published"] == 0
        # ... then the listener's connection dies: the source reconnects and reads the table
        with pg_engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": old_pid})
        client.wait_for(3, timeout=10)
        wait_until(lambda: source.listener_pid != old_pid and source.stats()["listening"], 10, "a new listener")
        assert source.stats()["listener_connects"] >= 2
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, events(2), notify=pg_table)
        assert len(client.wait_for(5, timeout=5)) == 5  # woken by NOTIFY on the new connection
    finally:
        source.stop()


@pytest.mark.postgres
def test_cross_process_two_writers_one_tailer_every_row_once(pg_engine, pg_table):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = [sys.executable, "-m", "tests.sse._procs"]
    tailer = subprocess.Popen(run + ["tail", PG_URL, pg_table], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    procs = [tailer]
    try:
        port = int(tailer.stdout.readline())
        client = SSETestClient(port)
        holder = subprocess.Popen(run + ["writer", PG_URL, pg_table, "holder", "10", "5", "hold"], cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(holder)
        assert holder.stdout.readline().strip() == "holding"
        # the other writer is a real worker process: EventBatcher -> DatabaseSink (COPY + NOTIFY)
        other = subprocess.Popen(run + ["batcher", PG_URL, pg_table, "other", "200"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        procs.append(other)
        assert other.wait(60) == 0
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        assert holder.wait(60) == 0
        client.wait_for(250, timeout=20)
        end = marker()
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, [end], notify="timelapser_events")
        ids = [m["id"] for m in client.until(end.id)]
        assert len(ids) == 250 and len(set(ids)) == 250
        with pg_engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT event_id, id, worker FROM {pg_table} WHERE event_id != :m ORDER BY id"), {"m": end.id}).fetchall()
        assert sorted(ids) == sorted(r.event_id for r in rows)
        # the held transaction's rows have lower ids than rows that committed before them
        first_holder = min(r.id for r in rows if r.worker == "holder")
        assert any(r.worker == "other" and r.id > first_holder for r in rows)
        position = {i: n for n, i in enumerate(ids)}
        held = [r.event_id for r in rows if r.worker == "holder"][:5]
        others = [r.event_id for r in rows if r.worker == "other"]
        assert min(position[h] for h in held) > max(position[o] for o in others)  # delivered late, not lost
        client.close()
    finally:
        for p in procs:
            if p.stdin:
                p.stdin.close()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_a_huge_id_jump_is_not_waited_for(sqlite_engine):
    engine, table = sqlite_engine
    hub = SSEHub()
    sink = DatabaseSink(engine, table=table)
    sink.send(events(1))
    with engine.begin() as conn:  # e.g. a restored dump or a reset sequence
        conn.execute(sa.text(f"UPDATE {table} SET id = 50000"))
    source = DatabaseEventSource(engine, hub, table=table, backfill_events=0, max_gap_ids=100)
    source._backfill()
    sink.send(events(2))
    source.poll_once()
    assert len(hub.replay_ids()) == 2 and source.stats()["missing_ids"] == 0
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {table} (id, event_id, type, data, priority, created_at, batch_count) "
                             "VALUES (60000, 'far', 'T', '{}', 'NORMAL', '2026-01-01 00:00:00', 1)"))
    assert source.poll_once() == 1
    assert source.stats()["missing_ids"] == 0 and source.stats()["gaps_given_up"] >= 9000


@pytest.mark.postgres
@pytest.mark.parametrize("listen", [True, False], ids=["listening", "polling-only"])
def test_postgres_fallback_poll_delivers_rows_written_without_notify(pg_engine, pg_table, served_hub, listen):
    """README: the source polls as a fallback, so rows whose writer sent no NOTIFY still arrive."""
    hub, connect = served_hub
    source = DatabaseEventSource(pg_engine, hub, table=pg_table, channel=pg_table,
                                 poll_interval_seconds=0.3, listen=listen).start()
    try:
        client = connect()
        wait_until(lambda: source.stats()["polls"] >= 1, 5, "the first read")
        assert source.stats()["listening"] is listen
        batch = events(4)
        with pg_engine.begin() as conn:
            write_rows(conn, pg_table, batch, notify=None)
        assert client.wait_for(4, timeout=5) and client.ids() == [e.id for e in batch]
        assert source.stats()["notifications"] == 0  # it was the poll, not a wake-up
    finally:
        source.stop()
