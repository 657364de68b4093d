"""A process killed with SIGKILL loses at most what it held in memory: the README's bound
("What can be lost, exactly"), computed by tests/faults/holders.py from the same settings the
program uses. Everything a sink committed before the kill survives it (SQLite in WAL mode),
and so does every dead letter and every spooled batch written (fsynced); only the line being
written at the kill may be torn.

The program emits as fast as it can (one producer, three workers, overflow='block') into a
DatabaseSink on SQLite, counting what emit() accepted in a shared page that outlives it. It is
killed at three points: at start-up (before or around its first commit), in a steady state
(tens of thousands of rows stored, the queue and the lane full), and during a sink outage (the
test holds the database's write lock: the sink is failing and its events go to its spool).
"""

from __future__ import annotations

import json
import mmap
import random
import signal
import sqlite3
import struct
import time
from pathlib import Path

import pytest

from tests.faults.holders import Holders
from tests.faults.programs import Program, spooled

HOLDERS = Holders(max_queue_size=2_000, lane_max_events=4_000, batch_size=200, producers=1, workers=3,
                  aggregating=False)  # the sink stores raw events: one buffer in the flush thread

_CHILD = """
    import mmap, struct, sys
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    counter_path = sys.argv[1]
    max_queue, lane_max, batch, workers = map(int, sys.argv[2:6])
    with open(counter_path, "r+b") as f:
        counter = mmap.mmap(f.fileno(), 8)
    sink = DatabaseSink("sqlite:///events.db", wants_aggregated=False, busy_timeout=0.05)
    b = EventBatcher([sink], batch_size=batch, batch_timeout=0.02, max_queue_size=max_queue,
                     overflow="block", block_timeout=60, lane_max_events=lane_max, max_retries=2,
                     retry_delay=0.01, retry_max_delay=0.02, dead_letter="dead.jsonl", spool_dir="spool")
    n = 0
    while True:   # until SIGKILL
        b.emit("JOB_STARTED", {"n": n}, worker=f"w{n % workers}")
        n += 1
        struct.pack_into("<q", counter, 0, n)   # n events accepted
"""


def _rows(db: Path) -> int:
    """Rows committed so far (0 before the table exists)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return int(conn.execute("SELECT count(*) FROM sse_events").fetchone()[0])
    except sqlite3.Error:
        return 0


def _on_disk(dead_path: Path, spool_dir: Path) -> tuple[set[int], set[int], int]:
    """The event numbers in the dead-letter file and in the spool's segments, and how many
    lines failed their checksum: only the last line of a file, torn by the kill, may."""
    from timelapser_workers.records import read_lines

    dead: set[int] = set()
    spooled: set[int] = set()
    torn = 0
    files = [(dead_path, dead)] + [(seg, spooled) for seg in sorted(spool_dir.rglob("*.seg"))]
    for path, into in files:
        lines = list(read_lines(path))
        for i, line in enumerate(lines):
            if line.body is None:
                assert i == len(lines) - 1, f"{path}: a line other than the last failed its checksum"
                torn += 1
                continue
            record = json.loads(line.body)
            for event in record.get("events", [record.get("event", record)]):
                data = event["data"]
                into.update(m["data"]["n"] for m in data["items"]) if "items" in data else into.add(data["n"])
    return dead, spooled, torn


def _wait(predicate, program: Program, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert program.proc.poll() is None, f"the program ended:\n{program.stderr()}"
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout}s:\n{program.stderr()}"
        time.sleep(0.005)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.parametrize("phase", ["start-up", "steady", "outage"])
def test_sigkill_loses_at_most_what_the_readme_bound_allows(tmp_path: Path, phase: str) -> None:
    h = HOLDERS
    db, dead_path, counter_path = tmp_path / "events.db", tmp_path / "dead.jsonl", tmp_path / "accepted"
    counter_path.write_bytes(b"\0" * 8)
    lock: sqlite3.Connection | None = None
    with open(counter_path, "r+b") as f:
        counter = mmap.mmap(f.fileno(), 8)
    accepted = lambda: struct.unpack_from("<q", counter, 0)[0]  # noqa: E731
    with Program(_CHILD, tmp_path, str(counter_path), str(h.max_queue_size), str(h.lane_max_events),
                 str(h.batch_size), str(h.workers)) as program:
        try:
            if phase == "start-up":
                _wait(lambda: accepted() >= 300, program, "the first events")
            elif phase == "steady":
                _wait(lambda: accepted() >= 40_000 and _rows(db) >= 20_000, program, "a steady state")
            else:
                _wait(lambda: _rows(db) >= 5_000, program, "the first commits")
                lock = sqlite3.connect(db, timeout=10, isolation_level=None)
                lock.execute("BEGIN EXCLUSIVE")  # the sink's writes now fail: it spools
                _wait(lambda: sum(spooled(tmp_path / "spool").values()) > 5_000, program,
                      "spooling during the outage")
            if phase != "start-up":
                time.sleep(random.uniform(0, 0.1))  # somewhere in a flush cycle, not always the same place
            program.proc.send_signal(signal.SIGKILL)
            assert program.wait(timeout=30) == -signal.SIGKILL, program.stderr()
        finally:
            if lock is not None:
                lock.execute("ROLLBACK")
                lock.close()
    emitted = accepted()
    counter.close()

    ns: list[int] = []
    if _rows(db):  # a kill at start-up may come before the table exists
        with sqlite3.connect(db) as conn:
            ns = [r[0] for r in conn.execute("SELECT json_extract(data, '$.n') FROM sse_events")]
    stored = set(ns)
    assert len(ns) == len(stored), "an event was stored twice"
    dead, spool, torn = _on_disk(dead_path, tmp_path / "spool")
    assert not stored & dead, "an event was both stored and dead-lettered"
    kept = stored | dead | spool  # a spooled batch may also be stored (acknowledged lazily)
    # the event being emitted when the signal came may be stored without being counted
    assert kept <= set(range(emitted + 1))
    lost = emitted - len(kept & set(range(emitted)))
    print(f"SIGKILL {phase}: accepted {emitted}, stored {len(stored)}, dead-lettered {len(dead)}, "
          f"spooled {len(spool)}, lost {lost}, bound {h.bound}{f', {torn} torn last line(s)' if torn else ''} ({h})")
    assert lost <= h.bound, f"lost {lost} events; the README's bound is {h}"
    if phase == "steady":
        assert len(stored) >= 20_000
    if phase == "outage":
        assert spool, "the kill came during the outage: some events were spooled"
