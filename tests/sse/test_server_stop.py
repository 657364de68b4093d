"""Real servers stop promptly with event streams open (issue 12): each is started as a
subprocess, streams are opened, the server is signalled and its exit timed. Every stream gets the
batcher's pending events, then a last frame telling the browser to reconnect (``retry``), and
ends; the pending events are also in the database, counted per emitting process."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import sqlalchemy as sa

from tests.sse.conftest import SSETestClient, wait_until
from tests.sse.servers import ServerProcess, python

PENDING = 20
STOP_WITHIN = 3.0
GOODBYE = "server stopping: reconnect"

GUNICORN_PORT = r"Listening at: http://127\.0\.0\.1:(\d+)"
SERVERS: dict[str, tuple[list[str], str, int]] = {
    # name: (command, port line, streams)
    "uvicorn": (python("-m", "uvicorn", "tests.sse._server_apps:asgi_app", "--port", "0",
                       "--timeout-graceful-shutdown", "30"), r"running on http://127\.0\.0\.1:(\d+)", 3),
    "gunicorn-gthread": (python("-m", "gunicorn", "--no-control-socket", "-b", "127.0.0.1:0", "-k", "gthread", "--threads", "8",
                                "-w", "2", "tests.sse._server_apps:wsgi_app"), GUNICORN_PORT, 3),
    "gunicorn-sync": (python("-m", "gunicorn", "--no-control-socket", "-b", "127.0.0.1:0", "-k", "sync", "-w", "1",
                             "tests.sse._server_apps:wsgi_app"), GUNICORN_PORT, 1),
    "gunicorn-uvicorn": (python("-m", "gunicorn", "--no-control-socket", "-b", "127.0.0.1:0", "-k", "uvicorn.workers.UvicornWorker",
                                "-w", "1", "tests.sse._server_apps:asgi_app"), GUNICORN_PORT, 3),
    "flask-dev": (python("-m", "tests.sse._server_apps", "flask", "0"), r"Running on http://127\.0\.0\.1:(\d+)", 3),
}
CASES = [
    ("uvicorn", "SIGTERM"), ("uvicorn", "SIGINT"),
    ("gunicorn-gthread", "SIGTERM"), ("gunicorn-gthread", "SIGINT"), ("gunicorn-gthread", "SIGHUP"),
    ("gunicorn-sync", "SIGTERM"), ("gunicorn-uvicorn", "SIGTERM"),
    ("flask-dev", "SIGINT"), ("flask-dev", "SIGTERM"),
]


def _rows_per_process(db: Any) -> dict[str, int]:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text("SELECT worker, count(*) FROM events GROUP BY worker")).fetchall())
    finally:
        engine.dispose()


def _open_streams(port: int, n: int) -> list[SSETestClient]:
    clients = [SSETestClient(port, "/events", timeout=10) for _ in range(n)]
    for c in clients:
        assert c.status == 200
        wait_until(lambda: any(x.startswith("connected") for x in c.comments), 10, "the stream to open")
    return clients


def _check_goodbye(clients: list[SSETestClient], sent: float) -> None:
    for c in clients:
        assert c.ended.wait(max(0.1, sent + STOP_WITHIN - time.monotonic())), "a stream was still open 3 s after the signal"
        assert c.error is None, f"the stream broke instead of ending: {c.error!r}"
        # the batcher's pending events reached the browser, in order, before the last frame
        assert [m["json"]["data"]["k"] for m in c.events()] == list(range(PENDING))
        assert c.comments[-1] == GOODBYE, c.comments
        assert c.retry is not None and 100 <= c.retry <= 200  # retry_milliseconds .. twice that


@pytest.mark.parametrize("server, sig", CASES, ids=[f"{s}-{g}" for s, g in CASES])
def test_server_stops_within_3s_with_streams_open(server: str, sig: str, tmp_path: Any) -> None:
    cmd, port_line, n = SERVERS[server]
    db = f"sqlite:///{tmp_path / 'events.db'}"
    proc = ServerProcess(cmd, {"TL_DB": db, "TL_PENDING": str(PENDING)}, port_line)
    processes = {"gunicorn-gthread": 2}.get(server, 1)
    try:
        wait_until(lambda: proc.count("app ready in pid") == processes, 15,
                   lambda: f"every worker to load the app; output:\n{proc.output()}")
        clients = _open_streams(proc.port, n)
        sent = proc.signal(getattr(signal, sig))
        if sig == "SIGHUP":  # gunicorn reload: old workers stop, new ones serve
            _check_goodbye(clients, sent)
            wait_until(lambda: sorted(_rows_per_process(db).values()) == [PENDING] * 2, STOP_WITHIN, "the old workers' rows")
            wait_until(lambda: proc.count("app ready in pid") == 2 * processes, 15,
                       lambda: f"the new workers; output:\n{proc.output()}")
            clients = _open_streams(proc.port, n)
            sent = proc.signal(signal.SIGTERM)
        _check_goodbye(clients, sent)
        exited = proc.wait_exit(STOP_WITHIN + 5)
        print(f"{server} {sig}: stopped {exited - sent:.2f}s after the signal")
        assert exited - sent <= STOP_WITHIN, f"{server} took {exited - sent:.1f}s to stop after {sig}"
    finally:
        proc.kill()
    rows = _rows_per_process(db)
    processes *= 2 if sig == "SIGHUP" else 1
    dead = tmp_path / "events.db.dead.jsonl"
    assert len(rows) == processes and set(rows.values()) == {PENDING}, (
        rows, dead.read_text()[:2000] if dead.exists() else "no dead letters", proc.output())


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_dashboard_server_stops_within_3s_with_streams_open(sig: str) -> None:
    cmd = python("examples/dashboard/serve.py", "--port", "0", "--workers", "3", "--rate", "50")
    proc = ServerProcess(cmd, {}, r"dashboard: http://127\.0\.0\.1:(\d+)/")
    try:
        clients = _open_streams(proc.port, 2)
        for c in clients:
            c.wait_for(5)  # the sample workers are running
        sent = proc.signal(getattr(signal, sig))
        for c in clients:
            assert c.ended.wait(max(0.1, sent + STOP_WITHIN - time.monotonic())), "a stream was still open 3 s after the signal"
            assert c.error is None, f"the stream broke instead of ending: {c.error!r}"
            assert c.comments[-1] == GOODBYE, c.comments
            assert len(set(c.ids())) == len(c.ids())
        if sig == "SIGINT":  # main() stops the workers first: their last events are delivered
            for c in clients:
                stopped = {m["json"]["worker"] for m in c.events() if m["json"]["type"] == "WORKER_STOPPED"}
                assert stopped == {"thumbnail", "overlay", "scheduler"}
        exited = proc.wait_exit(STOP_WITHIN + 5)
        assert exited - sent <= STOP_WITHIN, f"the dashboard took {exited - sent:.1f}s to stop after {sig}"
        assert "a development server" in proc.output()
    finally:
        proc.kill()


@pytest.mark.postgres
def test_gunicorn_preload_two_workers_tail_postgres_from_a_fresh_table(pg_engine: Any, unique_name: str) -> None:
    unique_table = unique_name
    """The source is started in the master (``--preload``) before its table exists; after the
    fork each worker tails on its own, says so in its stats, and every stream gets every row."""
    import json
    import urllib.request

    from tests.sse.conftest import PG_URL, events
    from timelapser_workers.sinks.database import DatabaseSink

    cmd = python("-m", "gunicorn", "--no-control-socket", "--preload", "-b", "127.0.0.1:0", "-k", "gthread", "--threads", "8",
                 "-w", "2", "tests.sse._tail_app:wsgi_app")
    proc = ServerProcess(cmd, {"TL_PG": PG_URL, "TL_TABLE": unique_table}, GUNICORN_PORT)
    sink = DatabaseSink(pg_engine, table=unique_table, notify_channel=unique_table, wants_aggregated=False)
    try:
        seen: dict[int, dict[str, Any]] = {}

        def both_workers_waiting() -> bool:
            with urllib.request.urlopen(f"http://127.0.0.1:{proc.port}/stats", timeout=5) as r:
                stats = json.load(r)
            seen[stats["pid"]] = stats
            return len(seen) == 2

        wait_until(both_workers_waiting, 15, "both workers to answer /stats", interval=0.05)
        assert proc.proc.pid not in seen
        for stats in seen.values():
            assert stats["thread_alive"] and stats["state"] == "waiting for table", stats
            assert stats["restarts_after_fork"] == 1
        clients = _open_streams(proc.port, 6)
        batch = events(30)
        sink.send(batch)  # creates the table, then COPY + NOTIFY
        for c in clients:
            assert c.wait_for(30, timeout=10) and c.ids() == [e.id for e in batch]
        seen.clear()

        def both_workers_tailing() -> bool:
            both_workers_waiting()
            return len(seen) == 2 and all(
                s["state"] == "tailing" and s["listening"] and s["rows_delivered"] == 30 for s in seen.values())

        wait_until(both_workers_tailing, 15, f"both workers to tail and listen: {seen}", interval=0.05)
        sent = proc.signal(signal.SIGTERM)
        for c in clients:
            assert c.ended.wait(max(0.1, sent + STOP_WITHIN - time.monotonic()))
            assert c.error is None and c.comments[-1] == GOODBYE
        assert proc.wait_exit(STOP_WITHIN + 5) - sent <= STOP_WITHIN
    finally:
        proc.kill()
        sink.close()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {unique_table}"))
