"""A real DatabaseSink across the ends and forks of a process: the atexit hook stores what a
program never closed (normal end, an exception, sys.exit), and a fork, through os.fork or
multiprocessing, runs the batcher's own after-fork hook: the child starts empty with the same
sink, the parent's pending events stay the parent's, both write through their own connections
and both deliver at exit. Whole programs in subprocesses, rows counted in SQLite and in
PostgreSQL afterwards."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.faults.programs import Program, dead_letters

Count = Callable[[str], int]  # original events stored for one worker (aggregated rows count their members)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[tuple[str, Count]]:
    """(sink URL with its table, events stored for a worker) on a SQLite file or the test server.
    An event stored twice (once on its own, once inside a batch event) would count twice."""
    if request.param == "sqlite":
        db = tmp_path / "events.db"

        def count_sqlite(worker: str) -> int:
            with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
                return int(conn.execute(f"SELECT COALESCE(SUM(batch_count), 0) FROM {unique_name} "
                                        "WHERE worker = ?", (worker,)).fetchone()[0])

        yield f"sqlite:///{db}?table={unique_name}", count_sqlite
        return
    url = request.getfixturevalue("postgres_url")
    conn = request.getfixturevalue("pg_conn")

    def count(worker: str) -> int:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COALESCE(SUM(batch_count), 0) FROM {unique_name} WHERE worker = %s", (worker,))
            return int(cur.fetchone()[0])

    yield f"{url}?table={unique_name}", count
    with conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {unique_name}")


_ATEXIT = """
    import sys
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks import load_sink

    url, how = sys.argv[1], sys.argv[2]
    # nothing flushes by itself: size and age triggers are out of reach, nobody calls close()
    batcher = EventBatcher([load_sink(url)], batch_size=100_000, batch_timeout=600,
                           dead_letter="dead.jsonl")
    for n in range(1000):
        batcher.emit("JOB_STARTED", {"job_id": n}, worker="main")
    print("emitted", flush=True)
    if how == "exception":
        raise RuntimeError("the application failed")
    if how == "sys.exit":
        sys.exit(3)
"""


@pytest.mark.parametrize("how, status", [("end", 0), ("exception", 1), ("sys.exit", 3)])
def test_atexit_stores_what_a_program_never_closed(database: tuple[str, Count], tmp_path: Path,
                                                   how: str, status: int) -> None:
    url, count = database
    with Program(_ATEXIT, tmp_path, url, how) as program:
        assert program.wait(timeout=60) == status, program.stderr()
    assert program.lines == ["emitted"]
    assert count("main") == 1000
    assert dead_letters(tmp_path / "dead.jsonl") == []


_FORK = """
    import multiprocessing, os, sys
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks import load_sink

    url, how = sys.argv[1], sys.argv[2]
    sink = load_sink(url)
    batcher = EventBatcher([sink], batch_size=100_000, batch_timeout=600, dead_letter="dead.jsonl")

    def emit(worker, numbers):
        for n in numbers:
            batcher.emit("JOB_STARTED", {"job_id": n}, worker=worker)

    def child():
        # the batcher's after-fork hook ran: a fresh, empty pipeline with the same sink
        emit("child", range(200))
        batcher.flush(30)
        lane = batcher.stats()["sinks"][sink.name]
        print("child sent", lane["events_sent"], "pending", lane["pending"], flush=True)
        emit("child", range(200, 300))   # left pending: the child's own exit delivers them

    emit("parent", range(500))
    batcher.flush(30)                    # the parent's threads run and its pool holds a connection
    emit("parent", range(500, 1000))     # pending at the fork: the parent's, not the child's
    if how == "os.fork":
        pid = os.fork()
        if pid == 0:
            child()
            sys.exit(0)                  # atexit in the child
        emit("parent", range(1000, 1500))
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
    else:
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()                  # the child leaves through os._exit after its finalizers
        emit("parent", range(1000, 1500))
        process.join(60)
        code = process.exitcode
    print("child exit", code, flush=True)
    # the parent ends without close(): atexit delivers its 1,000 pending events
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
def test_a_forked_child_starts_empty_and_both_processes_store_their_events(
        database: tuple[str, Count], tmp_path: Path, how: str) -> None:
    url, count = database
    with Program(_FORK, tmp_path, url, how) as program:
        assert program.wait(timeout=90) == 0, program.stderr()
    # the child's lane delivered its own 200 and held nothing of the parent's 500 pending
    assert program.lines == ["child sent 200 pending 0", "child exit 0"], program.stderr()
    assert count("parent") == 1500
    assert count("child") == 300
    assert dead_letters(tmp_path / "dead.jsonl") == []
