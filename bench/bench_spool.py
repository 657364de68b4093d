#!/usr/bin/env python3
"""The spool's storage, measured: append-only checksummed segments (what timelapser_workers.spool
uses) against a SQLite file in WAL mode, the alternative the issue named. Prints tables.

    python bench/bench_spool.py [--batches 200] [--events 100] [--rounds 3]

Each contender stores the same pre-encoded batch lines (spool.spool_line: one line per batch),
so only the storage is measured, then reads them back oldest first, decoding each record into
Events and acknowledging it, as a lane does when its sink is back:

- ``segments``: Spool.reserve + Spool.append (one write + fsync a batch); Spool.next + ack (a
  17-byte pwrite watermark, no fsync: a lost watermark means a batch delivered twice).
- ``sqlite-wal full``: INSERT + COMMIT a batch, ``synchronous=FULL`` (the WAL is fsynced at each
  commit: as durable as the segments); SELECT the oldest, DELETE + COMMIT it.
- ``sqlite-wal normal``: the same with ``synchronous=NORMAL`` (no fsync per commit: survives a
  killed process, not a power cut; the segments' guarantee is the stronger one).

Also: what the dead letter's fsync costs, and what a torn tail (a crash mid-write) does on the
next start.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from common import alternate, machine, median, print_table  # noqa: E402
from timelapser_workers.events import make_event  # noqa: E402
from timelapser_workers.records import encode_event, event_from_record, unframe  # noqa: E402
from timelapser_workers.spool import Spool, spool_line  # noqa: E402


def make_lines(batches: int, per_batch: int) -> list[bytes]:
    lines = []
    for b in range(batches):
        events = [make_event("JOB_COMPLETED", {"job_id": b * per_batch + i, "camera": f"cam{i % 7}",
                                               "frame": f"/srv/frames/{b:05d}/{i:04d}.jpg", "ms": i * 1.5},
                             worker="camera-1", source="bench") for i in range(per_batch)]
        lines.append(spool_line([encode_event(e) for e in events], per_batch))
    return lines


def decode(line_body: bytes) -> int:
    obj = orjson.loads(line_body)
    return len([event_from_record(r) for r in obj["events"]])


def run_segments(lines: list[bytes]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp), "bench", 1 << 40)
        t0 = time.perf_counter()
        for line in lines:
            spool.reserve(len(line), 1)
            spool.append(line, 1)
        t1 = time.perf_counter()
        read = 0
        while True:
            record = spool.next(0)
            if record is None:
                break
            read += len(record.events)
            spool.ack(record)
        t2 = time.perf_counter()
        spool.close()
        return {"append": (t1 - t0) / len(lines), "drain": (t2 - t1) / len(lines), "read": read}


def run_sqlite(lines: list[bytes], synchronous: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(os.path.join(tmp, "spool.db"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("CREATE TABLE spool (id INTEGER PRIMARY KEY, owner TEXT, n INTEGER, line BLOB)")
        t0 = time.perf_counter()
        for line in lines:
            conn.execute("BEGIN")
            conn.execute("INSERT INTO spool (owner, n, line) VALUES (?, ?, ?)", ("bench", 1, line))
            conn.execute("COMMIT")
        t1 = time.perf_counter()
        read = 0
        while True:
            row = conn.execute("SELECT id, line FROM spool ORDER BY id LIMIT 1").fetchone()
            if row is None:
                break
            body = unframe(row[1])
            assert body is not None
            read += decode(body)
            conn.execute("BEGIN")
            conn.execute("DELETE FROM spool WHERE id = ?", (row[0],))
            conn.execute("COMMIT")
        t2 = time.perf_counter()
        conn.close()
        return {"append": (t1 - t0) / len(lines), "drain": (t2 - t1) / len(lines), "read": read}


def torn_tail(lines: list[bytes]) -> list[tuple[str, str]]:
    """Write some records, tear the last one in half, and see what the next start makes of it."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp), "bench", 1 << 40)
        for line in lines[:10]:
            spool.reserve(len(line), 1)
            spool.append(line, 1)
        seg = next(Path(tmp).glob("*/*.seg"))
        spool._forget()  # as if killed: the lock goes with the process
        with open(seg, "ab") as f:
            f.write(lines[10][: len(lines[10]) // 2])
        later = Spool(Path(tmp), "bench", 1 << 40)
        later.adopt()
        got = 0
        while (record := later.next(0)) is not None:
            got += 1
            later.ack(record)
        out.append(("segments", f"{got} of 10 whole records read back, {later.corrupt} torn line skipped"))
        later.close()
    return out


def dead_letter_cost(per_batch: int, calls: int) -> list[tuple[str, int, int, str]]:
    """One dead-letter call (``per_batch`` events: one record each, one write) with and
    without its fsync."""
    from timelapser_workers.deadletter import dead_letter_record
    from timelapser_workers.records import append_records

    events = [make_event("JOB_FAILED", {"job_id": i, "error": "x" * 80}, worker="w") for i in range(per_batch)]
    rows = []
    base = 0.0
    for sync in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "dead.jsonl"
            t0 = time.perf_counter()
            for _ in range(calls):
                records = [dead_letter_record(e, "sink", "permanent_error", "bad", time.time()) for e in events]
                append_records(path, records, sync=sync)
            took = (time.perf_counter() - t0) / calls
        base = base or took
        rows.append(("write + fsync (ours)" if sync else "write, no fsync", round(took * 1e6),
                     round(per_batch / took), f"{base / took:.2f}x"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--events", type=int, default=100, help="events per batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}; SQLite {sqlite3.sqlite_version}; {args.batches} batches of "
          f"{args.events} events, median of {args.rounds} rounds\n")
    for per_batch in sorted({args.events, 10}):
        lines = make_lines(args.batches, per_batch)
        size = sum(map(len, lines)) / len(lines)
        results = alternate({
            "segments (ours)": lambda: run_segments(lines),
            "sqlite-wal full": lambda: run_sqlite(lines, "FULL"),
            "sqlite-wal normal": lambda: run_sqlite(lines, "NORMAL"),
        }, args.rounds)
        base_a = median(results["segments (ours)"], "append")
        base_d = median(results["segments (ours)"], "drain")
        rows = []
        for name, samples in results.items():
            a, d = median(samples, "append"), median(samples, "drain")
            rows.append((name, round(a * 1e6), f"{base_a / a:.2f}x", round(d * 1e6), f"{base_d / d:.2f}x",
                         round(per_batch / (a + d))))
        print_table(f"{per_batch} events a batch ({size / 1024:.1f} KiB a line)",
                    ["storage", "append us/batch", "vs segments", "read+decode+ack us/batch", "vs segments",
                     "events/s through (append + drain)"], rows)
    print_table(f"Dead letters: one call of {args.events} events (one record each, one write)",
                ["policy", "us/call", "events/s", "vs ours"], dead_letter_cost(args.events, args.batches))
    print_table("A torn tail (killed mid-write) on the next start", ["storage", "what happens"],
                torn_tail(make_lines(11, args.events)) + [
                    ("sqlite-wal", "the torn transaction is rolled back by WAL recovery (whole records only)")])


if __name__ == "__main__":
    main()
