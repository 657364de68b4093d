"""Process-level behaviour: the atexit flush, exit with a hung sink, fork, and a stress run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from timelapser_workers.sinks import MemorySink
from timelapser_workers.events import JOB_STARTED

# A sink that appends each event as a JSON line, flushed per batch: what a real process leaves
# behind on disk is the evidence.
_FILE_SINK = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from timelapser_workers import EventBatcher

    class FileSink:
        name = "file"
        wants_aggregated = False
        def __init__(self, path, hang=False):
            self.path, self.hang = path, hang
        def send(self, batch):
            if self.hang:
                threading.Event().wait(3600)
            with open(self.path, "a") as f:
                for e in batch:
                    f.write(json.dumps({"pid": os.getpid(), "id": e.id, "n": e.data.get("n")}) + "\\n")
    """
)


def _run(script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _FILE_SINK + textwrap.dedent(script), *args],
        capture_output=True, text=True, timeout=timeout,
    )


def _lines(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_atexit_delivers_what_a_program_never_closed(tmp_path):
    out = tmp_path / "events.jsonl"
    proc = _run(
        """
        b = EventBatcher([FileSink(sys.argv[1])], batch_timeout=60, batch_size=1000,
                         dead_letter=sys.argv[2])
        for n in range(500):
            b.emit("JOB_STARTED", {"n": n}, worker="w")
        # no close(): the atexit hook must deliver
        """,
        str(out), str(tmp_path / "dead.jsonl"),
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["n"] for r in _lines(out)) == list(range(500))


def test_a_hung_sink_does_not_hold_the_exit_past_shutdown_timeout(tmp_path):
    dead, spool, out = tmp_path / "dead.jsonl", tmp_path / "spool", tmp_path / "events.jsonl"
    proc = _run(
        """
        b = EventBatcher([FileSink(sys.argv[1], hang=True)], batch_timeout=0.01,
                         shutdown_timeout=1.0, dead_letter=sys.argv[2], spool_dir=sys.argv[3])
        for n in range(10):
            b.emit("JOB_STARTED", {"n": n}, worker="w")
        print(time.monotonic(), flush=True)   # the last statement: the exit starts here
        """,
        str(tmp_path / "never.jsonl"), str(dead), str(spool),
    )
    ended = time.monotonic()  # the monotonic clock is the same in every process of this machine
    assert proc.returncode == 0, proc.stderr
    took = ended - float(proc.stdout.split()[-1])
    assert took < 1.0 + 0.5, took  # the README: shutdown_timeout + 0.5 s
    assert "shutdown deadline" in proc.stderr and not dead.exists()
    # what the hung sink held is in its spool: the next program with that sink delivers it
    proc = _run(
        """
        b = EventBatcher([FileSink(sys.argv[1])], dead_letter=sys.argv[2], spool_dir=sys.argv[3])
        b.close()
        """,
        str(out), str(dead), str(spool),
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["n"] for r in _lines(out)) == list(range(10)) and not dead.exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_starts_empty_and_both_keep_delivering(tmp_path):
    out = tmp_path / "events.jsonl"
    proc = _run(
        """
        b = EventBatcher([FileSink(sys.argv[1])], batch_timeout=0.01, dead_letter=sys.argv[2])
        for n in range(2000):          # keep the flush thread busy while we fork
            b.emit("E", {"n": n}, worker="parent")
        pid = os.fork()
        if pid == 0:
            for n in range(100):
                b.emit("E", {"n": 10000 + n}, worker="child")
            r = b.close(timeout=10)
            os._exit(0 if r.pending == 0 and r.delivered == 100 else 3)
        for n in range(2000, 2100):
            b.emit("E", {"n": n}, worker="parent")
        _, status = os.waitpid(pid, 0)
        r = b.close(timeout=10)
        sys.exit(os.waitstatus_to_exitcode(status) or (0 if r.pending == 0 else 4))
        """,
        str(out), str(tmp_path / "dead.jsonl"),
    )
    assert proc.returncode == 0, proc.stderr
    rows = _lines(out)
    parent = sorted(r["n"] for r in rows if r["n"] < 10000)
    child = sorted(r["n"] for r in rows if r["n"] >= 10000)
    assert parent == list(range(2100))  # nothing lost, nothing twice (the child did not resend)
    assert child == list(range(10000, 10100))
    assert len({r["pid"] for r in rows}) == 2


def test_stress_8_threads_100k_events_counted_exactly(make_batcher):
    raw, agg = MemorySink("raw", wants_aggregated=False), MemorySink("agg")
    batcher = make_batcher([raw, agg], max_queue_size=200_000, lane_max_events=200_000,
                           overflow="block", block_timeout=30)
    per_thread = 12_500

    def produce(t: int) -> None:
        for n in range(per_thread):
            batcher.emit(JOB_STARTED, {"job_id": n}, worker=f"w{t}")

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    result = batcher.flush(timeout=30)
    assert result.pending == 0
    for sink in (raw, agg):
        ids = [e.id for e in sink.raw_events]
        assert len(ids) == 100_000 and len(set(ids)) == 100_000
    stats = batcher.stats()
    assert stats["events_received"] == 100_000 and stats["events_dropped"] == {}
    assert stats["events_saved"] > 0
