"""Child processes for the cross-process test; run as ``python -m tests.sse._procs ROLE ...``.

    writer URL TABLE NAME BATCHES PER_BATCH [hold]   write batches with plain INSERTs (hold: the
                                                     first transaction waits for a line on stdin
                                                     before COMMIT)
    batcher URL TABLE NAME EVENTS                    emit events through EventBatcher + DatabaseSink
    tail URL TABLE                                   serve the table over SSE; prints the port
"""

from __future__ import annotations

import sys
import time



def writer(url: str, table: str, name: str, batches: int, per_batch: int, hold: bool) -> None:
    from tests.sse.conftest import write_rows
    from timelapser_workers.events import make_event

    from timelapser_workers.sql.engine import create_sink_engine

    engine = create_sink_engine(url)
    for b in range(batches):
        batch = [make_event("JOB_COMPLETED", {"b": b, "k": k}, worker=name, source="proc") for k in range(per_batch)]
        with engine.begin() as conn:
            write_rows(conn, table, batch)
            if hold and b == 0:
                print("holding", flush=True)  # ids are taken, the transaction is open
                sys.stdin.readline()
        time.sleep(0.002)
    print("done", flush=True)
    engine.dispose()


def batcher(url: str, table: str, name: str, count: int) -> None:
    from timelapser_workers.sinks.database import DatabaseSink
    from timelapser_workers.batcher import EventBatcher

    sink = DatabaseSink(url, table=table, wants_aggregated=False)
    with EventBatcher([sink], batch_size=10, batch_timeout=0.05) as b:
        for k in range(count):
            b.emit("JOB_COMPLETED", {"k": k}, worker=name, source="proc")
            if k % 10 == 9:
                time.sleep(0.002)
        assert b.flush(30).complete
    print("done", flush=True)


def tail(url: str, table: str) -> None:
    from timelapser_workers.sinks.sse import SSEHub
    from timelapser_workers.sources.database import DatabaseEventSource
    from timelapser_workers.sinks.sse.wsgi import ServerThread, SSEWsgiApp, make_server

    hub = SSEHub(replay_events=5000, client_queue_events=5000)
    source = DatabaseEventSource(url, hub, table=table, poll_interval_seconds=30).start()
    server = ServerThread(make_server(SSEWsgiApp(hub, keepalive_seconds=0.5))).start()
    print(server.server.server_address[1], flush=True)
    sys.stdin.readline()  # the test closes stdin to stop us
    hub.close()
    server.stop()
    source.stop()


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "writer":
        writer(args[0], args[1], args[2], int(args[3]), int(args[4]), len(args) > 5 and args[5] == "hold")
    elif role == "batcher":
        batcher(args[0], args[1], args[2], int(args[3]))
    elif role == "tail":
        tail(args[0], args[1])
    else:
        sys.exit(f"unknown role {role!r}; use writer, batcher or tail")
