"""Outages longer than every retry lose nothing and need no manual step: what the sink cannot
take goes to its spool on disk and is delivered when the sink is back, or by the next process
with the same sink name and spool directory.

- PostgreSQL taken away (through a loopback TCP proxy the test controls) for longer than every
  retry, while 4 threads emit 20,000 events: all 20,000 stored exactly once, no dead letter.
- SQLite made read-only for a while under a running program (the database file and its
  directory chmod'ed; a root test drops its file-permission override first): the same.
- A program killed with SIGKILL while its spool holds events: a new process with the same sink
  name and spool directory delivers them.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from urllib.parse import urlsplit

import pytest

from tests.faults.programs import Program, dead_letters, spooled, sqlite_rows
from tests.faults.test_postgres_faults import proxy, stored_ids  # noqa: F401  (a fixture, a helper)
from timelapser_workers import EventBatcher, JsonLinesDeadLetter
from timelapser_workers.sinks.database import DatabaseSink

THREADS, PER_THREAD = 4, 5_000


@pytest.mark.postgres
@pytest.mark.timeout(90)
def test_postgres_away_longer_than_every_retry_loses_nothing(postgres_url, proxy, unique_name, pg_conn, tmp_path):
    parts = urlsplit(postgres_url)
    url = postgres_url.replace(parts.netloc, f"{parts.username}@127.0.0.1:{proxy.port}")
    sink = DatabaseSink(url, table=unique_name, connect_timeout=2)
    dead = JsonLinesDeadLetter(tmp_path / "dead.jsonl")
    # every retry of a batch is spent within ~0.5 s; the outage lasts 2.5 s
    batcher = EventBatcher([sink], batch_size=50, batch_timeout=0.02, max_retries=2, retry_delay=0.05,
                           retry_max_delay=0.2, max_queue_size=50_000, overflow="block", block_timeout=30,
                           dead_letter=dead, spool_dir=tmp_path / "spool")
    emitted: list[list[str]] = [[] for _ in range(THREADS)]

    def produce(t: int) -> None:
        for n in range(PER_THREAD):
            kind = "JOB_STARTED" if n % 2 else "JOB_COMPLETED"
            emitted[t].append(batcher.emit(kind, {"job_id": n, "t": t}, worker=f"w{t}").id)
            if n % 50 == 49:
                time.sleep(0.03)  # paced over ~3 s: the outage lands mid-run

    try:
        threads = [threading.Thread(target=produce, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        time.sleep(0.5)
        proxy.down()
        time.sleep(2.5)
        during = batcher.stats()["sinks"][sink.name]
        proxy.up()
        for th in threads:
            th.join(30)
        assert not any(th.is_alive() for th in threads)
        result = batcher.close(timeout=30)  # no manual step: the lane delivers its spool
        stats = batcher.stats()["sinks"][sink.name]
        ids = [i for per in emitted for i in per]
        stored = stored_ids(pg_conn, unique_name)
        print(f"{len(ids)} emitted, {len(stored)} stored; {stats['spooled']} spooled and "
              f"{stats['redelivered']} redelivered; {stats['retries']} retries; {result}")
        assert during["state"] == "failing" and during["spooled"] > 0  # the outage outlasted the retries
        assert len(ids) == len(set(ids)) == THREADS * PER_THREAD
        assert len(stored) == len(set(stored)) and sorted(stored) == sorted(ids)  # each exactly once
        assert dead.read() == [] and stats["dead_lettered"] == 0
        assert stats["redelivered"] == stats["spooled"] > 0 and stats["spool_events"] == 0
        assert (result.pending, result.spooled) == (0, 0)
        assert spooled(tmp_path / "spool") == {}
    finally:
        batcher.close(timeout=5)
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")


# A root process writes through file permissions: this one first gives up that power
# (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) for itself and every thread it starts.
_DROP_FILE_OVERRIDE = """
    import ctypes, os
    if os.geteuid() == 0:
        class _Head(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
        class _Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                        ("inheritable", ctypes.c_uint32)]
        _libc = ctypes.CDLL(None, use_errno=True)
        _head, _data = _Head(0x20080522, 0), (_Data * 2)()
        assert _libc.capget(ctypes.byref(_head), _data) == 0
        _data[0].effective &= ~0b110
        _data[0].permitted &= ~0b110
        assert _libc.capset(ctypes.byref(_head), _data) == 0, ctypes.get_errno()
"""

_READ_ONLY_PROGRAM = _DROP_FILE_OVERRIDE + """
    import json, sys, threading, time
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    db_dir = sys.argv[1]
    threads, per_thread = int(sys.argv[2]), int(sys.argv[3])
    batcher = EventBatcher([DatabaseSink(f"sqlite:///{db_dir}/events.db", busy_timeout=0.2)],
                           batch_size=50, batch_timeout=0.02, max_retries=2, retry_delay=0.05,
                           retry_max_delay=0.2, max_queue_size=50_000, overflow="block",
                           block_timeout=30, dead_letter="dead.jsonl", spool_dir="spool")

    def produce(t):
        for n in range(per_thread):
            batcher.emit("JOB_STARTED", {"job_id": n, "t": t}, worker=f"w{t}")

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    while batcher.stats()["sinks"]["sqlite:sse_events"]["spool_events"] == 0:
        time.sleep(0.01)
    print("spooling", json.dumps(batcher.stats()["sinks"]["sqlite:sse_events"]), flush=True)
    while not os.access(db_dir, os.W_OK):   # the test makes it writable again
        time.sleep(0.01)
    result = batcher.close(timeout=30)
    print("closed", json.dumps({"pending": result.pending, "spooled": result.spooled,
                                "sink": batcher.stats()["sinks"]["sqlite:sse_events"]}), flush=True)
"""


@pytest.mark.timeout(90)
def test_sqlite_read_only_for_a_while_loses_nothing(tmp_path):
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    made = DatabaseSink(f"sqlite:///{db_dir}/events.db")
    made.ensure_table()
    made.close()
    for path in db_dir.iterdir():
        path.chmod(0o444)
    db_dir.chmod(0o555)
    try:
        with Program(_READ_ONLY_PROGRAM, tmp_path, str(db_dir), str(THREADS), str(PER_THREAD)) as program:
            line = program.wait_for_line("spooling", timeout=60)
            during = json.loads(line.split(" ", 1)[1])
            assert sqlite_rows(db_dir / "events.db") == 0  # nothing got in while read-only
            db_dir.chmod(0o755)
            for path in db_dir.iterdir():
                path.chmod(0o644)
            closed = json.loads(program.wait_for_line("closed", timeout=60).split(" ", 1)[1])
            assert program.wait(timeout=30) == 0, program.stderr()
    finally:
        db_dir.chmod(0o755)
    assert during["state"] == "failing" and during["spooled"] > 0, during
    assert closed["sink"]["state"] == "healthy", (closed, program.stderr_path.read_text()[-3000:])
    assert "readonly" in during["last_error"] or "read-only" in during["last_error"], during["last_error"]
    total = THREADS * PER_THREAD
    assert sqlite_rows(db_dir / "events.db") == total  # each original event once
    assert sqlite_rows(db_dir / "events.db", column="count(DISTINCT event_id)") == sqlite_rows(
        db_dir / "events.db", column="count(*)")
    assert dead_letters(tmp_path / "dead.jsonl") == [] and closed["sink"]["dead_lettered"] == 0
    assert closed["sink"]["redelivered"] == closed["sink"]["spooled"] and closed["spooled"] == 0
    assert spooled(tmp_path / "spool") == {}


_KILLED_PROGRAM = """
    import sys, time
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    # the database's directory does not exist yet: every attempt fails (SQLite cannot open it)
    batcher = EventBatcher([DatabaseSink(f"sqlite:///{sys.argv[1]}/events.db")], batch_size=100,
                           batch_timeout=0.02, max_retries=1, retry_delay=0.01, dead_letter="dead.jsonl",
                           spool_dir="spool")
    for n in range(int(sys.argv[2])):
        batcher.emit("JOB_STARTED", {"job_id": n}, worker=f"w{n % 3}")
    result = batcher.flush(timeout=30)
    print("ready", result.spooled, flush=True)
    time.sleep(600)   # until SIGKILL
"""

_NEXT_PROGRAM = """
    import sys
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    batcher = EventBatcher([DatabaseSink(f"sqlite:///{sys.argv[1]}/events.db")], dead_letter="dead.jsonl",
                           spool_dir="spool")
    print("closed", batcher.close(timeout=30), flush=True)   # emits nothing: delivers the spool
"""


@pytest.mark.timeout(90)
def test_a_spool_outlives_sigkill_and_the_next_process_delivers_it(tmp_path):
    db_dir, count = tmp_path / "db", 3_000
    with Program(_KILLED_PROGRAM, tmp_path, str(db_dir), str(count)) as program:
        assert program.wait_for_line("ready", timeout=60) == f"ready {count}"
        program.proc.send_signal(signal.SIGKILL)
        assert program.wait(timeout=10) == -signal.SIGKILL
    assert spooled(tmp_path / "spool") == {"sqlite:sse_events": count}  # on disk, owner gone
    db_dir.mkdir()  # the database is back
    with Program(_NEXT_PROGRAM, tmp_path, str(db_dir)) as program:
        assert program.wait(timeout=60) == 0, program.stderr()
    assert len(program.lines) == 1 and program.lines[0].endswith("failed=0, pending=0, spooled=0)")
    assert sqlite_rows(db_dir / "events.db") == count
    assert dead_letters(tmp_path / "dead.jsonl") == [] and spooled(tmp_path / "spool") == {}
    assert [p.name for p in (tmp_path / "spool" / "sqlite%3Asse_events").iterdir()] == []
