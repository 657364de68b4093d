"""A burst faster than the database: four producer threads emit as fast as they can into a
healthy database. With ``overflow="block"`` the producers are held back (backpressure) and
every event is stored, none dead-lettered; with the drop policies every event is either
stored or counted as dropped at the edge. Whole programs in a subprocess; rows counted after."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults.programs import Program, dead_letters, sqlite_rows

_BURST_PROGRAM = """
    import json, sys, threading
    from timelapser_workers import EventBatcher, QueueFullError
    from timelapser_workers.sinks.database import DatabaseSink

    url, table, overflow, per_thread = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    settings = {} if overflow == "default" else {"overflow": overflow}
    batcher = EventBatcher([DatabaseSink(url, table=table)], dead_letter="dead.jsonl", **settings)
    refused = [0] * 4

    def produce(t):
        for n in range(per_thread):
            try:
                batcher.emit("JOB_STARTED" if n % 2 else "JOB_COMPLETED", {"job_id": n, "t": t},
                             worker=f"camera-{t}")
            except QueueFullError:   # block: waited block_timeout for room (counted too)
                refused[t] += 1

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    result = batcher.close(timeout=60)
    stats = batcher.stats()
    print(json.dumps({"dropped": stats["events_dropped"], "refused": sum(refused),
                      "pending": result.pending, "dead_lettered": stats["dead_letter"]["written"]}))
"""


def _run(tmp_path: Path, url: str, table: str, overflow: str, per_thread: int) -> dict:
    with Program(_BURST_PROGRAM, tmp_path, url, table, overflow, str(per_thread)) as program:
        assert program.wait(timeout=240) == 0, program.stderr()
    return json.loads(program.lines[-1])


def _check(report: dict, stored: int, emitted: int, overflow: str, tmp_path: Path) -> None:
    dropped = sum(report["dropped"].values())
    assert report["pending"] == 0
    assert dead_letters(tmp_path / "dead.jsonl") == [] and report["dead_lettered"] == 0
    if overflow == "block":
        assert (stored, dropped) == (emitted, 0), report  # held back, never dropped
    else:
        assert stored + dropped == emitted, report  # every event stored or counted at the edge
        assert set(report["dropped"]) <= {"drop_newest", "drop_oldest"}


@pytest.mark.parametrize("overflow", ["block", "default", "drop_oldest"])
def test_a_burst_into_sqlite_is_stored_or_counted(tmp_path: Path, overflow: str) -> None:
    db = tmp_path / "events.db"
    report = _run(tmp_path, f"sqlite:///{db}", "sse_events", overflow, 10_000)
    _check(report, sqlite_rows(db), 40_000, overflow, tmp_path)


@pytest.mark.postgres
@pytest.mark.parametrize("overflow", ["block", "default"])
def test_a_burst_into_postgresql_is_stored_or_counted(tmp_path: Path, postgres_url: str, unique_name: str,
                                                      pg_conn, overflow: str) -> None:
    try:
        report = _run(tmp_path, postgres_url, unique_name, overflow, 25_000)
        with pg_conn.cursor() as cur:
            cur.execute(f"SELECT COALESCE(SUM(batch_count), 0) FROM {unique_name}")
            stored = int(cur.fetchone()[0])
        _check(report, stored, 100_000, overflow, tmp_path)
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")
