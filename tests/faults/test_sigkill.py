"""A process killed with SIGKILL mid-run loses at most what it held in memory.

The bound the README states, all of it memory: the ingress queue (max_queue_size); what the
flush thread holds (a drained queue plus the per-worker buffers); the sink's lane
(lane_max_events); the batch in flight; and the dead letters not yet written (the dead-letter
thread's bound, lane_max_events, plus the batch it is writing).
Everything a sink committed before the kill survives it (SQLite in WAL mode), and so does every
dead letter written (a lane that overflows dead-letters its oldest batches: counted, not lost).
"""

from __future__ import annotations

import json
import mmap
import os
import signal
import sqlite3
import struct
import subprocess
import sys
import textwrap
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MAX_QUEUE, LANE_MAX, BATCH, WORKERS = 2_000, 4_000, 200, 3

_CHILD = textwrap.dedent(
    """
    import mmap, struct, sys
    sys.path.insert(0, sys.argv[1])
    from timelapser_workers.sinks.database import DatabaseSink
    from timelapser_workers import EventBatcher

    db, counter_path = sys.argv[2], sys.argv[3]
    max_queue, lane_max, batch, workers = map(int, sys.argv[4:8])
    with open(counter_path, "r+b") as f:
        counter = mmap.mmap(f.fileno(), 8)
    b = EventBatcher([DatabaseSink(f"sqlite:///{db}", wants_aggregated=False)], batch_size=batch,
                     batch_timeout=0.02, max_queue_size=max_queue, overflow="block",
                     block_timeout=60, lane_max_events=lane_max, dead_letter=db + ".dead")
    n = 0
    while True:   # until SIGKILL
        b.emit("JOB_STARTED", {"n": n}, worker=f"w{n % workers}")
        n += 1
        struct.pack_into("<q", counter, 0, n)   # n events emitted (the page outlives the process)
    """
)


def _rows(db) -> int:
    """Rows committed so far (0 before the table exists)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT count(*) FROM sse_events").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_loses_at_most_the_in_memory_queue(tmp_path):
    db, counter_path = tmp_path / "events.db", tmp_path / "emitted"
    counter_path.write_bytes(b"\0" * 8)
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, ROOT, str(db), str(counter_path),
         str(MAX_QUEUE), str(LANE_MAX), str(BATCH), str(WORKERS)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        with open(counter_path, "r+b") as f:
            counter = mmap.mmap(f.fileno(), 8)
            # let it run until it has stored a good number of batches, then kill it mid-stream
            while struct.unpack_from("<q", counter, 0)[0] < 20_000 or not _rows(db):
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "the child emitted or stored too slowly"
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            emitted = struct.unpack_from("<q", counter, 0)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    with sqlite3.connect(db) as conn:
        ns = [r[0] for r in conn.execute("SELECT json_extract(data, '$.n') FROM sse_events")]
    stored = set(ns)
    assert len(ns) == len(stored), "an event was stored twice"
    dead_path = tmp_path / "events.db.dead"
    dead = set()
    if dead_path.exists():
        for line in dead_path.read_text().splitlines():
            try:
                dead.add(json.loads(line)["event"]["data"]["n"])
            except ValueError:  # the line being written when the signal came
                pass
    assert not stored & dead, "an event was both stored and dead-lettered"
    # the one being emitted when the signal came may be stored without being counted
    assert stored | dead <= set(range(emitted + 1))
    lost = emitted - len((stored | dead) & set(range(emitted)))
    dispatch = MAX_QUEUE + WORKERS * BATCH  # the most one flush cycle hands to the lane
    # in memory at the kill: the ingress queue, the flush thread's hands (a drained queue plus
    # buffers), the lane, the batch in flight, and the dead letters not yet written (the
    # writer's bound, lane_max_events, plus the batch it is writing)
    bound = MAX_QUEUE + dispatch + LANE_MAX + dispatch + LANE_MAX + dispatch
    print(f"emitted {emitted}, stored {len(stored)}, dead-lettered {len(dead)}, lost {lost}, bound {bound}")
    assert len(stored) > 0
    assert lost <= bound, f"lost {lost} events; the stated bound is {bound}"
