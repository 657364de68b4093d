"""`timelapser-workers dead-letters`, run as a real command: list, show, replay (idempotent,
what is refused again stays), purge; rewrites keep what a running batcher appends meanwhile."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import pytest

from timelapser_workers import EventBatcher, TransientSinkError
from timelapser_workers.deadletter import JsonLinesDeadLetter, dead_letter_record
from timelapser_workers.events import JOB_STARTED, Event, make_event
from timelapser_workers.records import append_records, read_lines, rewrite_records
from timelapser_workers.sinks import MemorySink


class Down(MemorySink):
    """The database during an outage (dead-lettered whole, as the spool is off here)."""

    def send(self, batch: Sequence[Event]) -> None:
        raise TransientSinkError("connection refused")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "timelapser_workers", "dead-letters", *args],
                          capture_output=True, text=True, timeout=60)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def dead_lettered(tmp_path) -> list[str]:
    """25 events dead-lettered by a batcher into the default file (the state directory): 20 raw,
    and 5 aggregated into one event, one of which carries a 'poison' value."""
    batcher = EventBatcher([Down("sqlite:sse_events")], batch_size=5, batch_timeout=0.01, max_retries=0,
                           spool_max_bytes=0)
    ids = [batcher.emit("E", {"n": n}, worker=f"w{n}").id for n in range(20)]
    ids += [batcher.emit(JOB_STARTED, {"job_id": n, "v": "poison" if n == 2 else "ok"}, worker="cam").id
            for n in range(5)]
    assert batcher.flush(timeout=10).failed == 25
    batcher.close(timeout=5)
    return ids


def _stored(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT event_id, batch_count, data FROM sse_events").fetchall()
    finally:
        conn.close()
    return [item["id"] for eid, n, data in rows for item in (json.loads(data)["items"] if n > 1 else [{"id": eid}])]


def test_list_and_show(dead_lettered):
    out = cli("list").stdout
    path = Path(os.environ["XDG_STATE_HOME"]) / "timelapser-workers" / "dead-letters.jsonl"
    assert f"dead letters in {path}: 21 record(s), 25 event(s)" in out
    row = [line.split() for line in out.splitlines() if line.startswith("sqlite:sse_events")]
    assert row and row[0][:3] == ["sqlite:sse_events", "retries_exhausted", "25"] and "ago" in out
    assert len(cli("show", "--limit", "3").stdout.splitlines()) == 3
    shown = [json.loads(line) for line in cli("show", "--reason", "retries_exhausted").stdout.splitlines()]
    assert len(shown) == 21 and {r["error"] for r in shown} == {"TransientSinkError: connection refused"}
    assert sorted(r["event"]["data"]["n"] for r in shown if r["event"]["type"] == "E") == list(range(20))
    merged = [r["event"] for r in shown if r["event"]["type"] == "JOBS_BATCH_STARTED"]
    assert len(merged) == 1 and [m["data"]["job_id"] for m in merged[0]["members"]] == list(range(5))
    assert cli("show", "--sink", "nobody").stdout == ""


def test_replay_is_idempotent_and_keeps_what_is_refused_again(dead_lettered, tmp_path):
    db = tmp_path / "replay.db"
    conn = sqlite3.connect(db)  # the table, with a trigger that still refuses the poison
    conn.executescript("""
        CREATE TABLE sse_events (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, type TEXT NOT NULL,
          data JSON NOT NULL, priority TEXT NOT NULL, source TEXT, worker TEXT, created_at DATETIME NOT NULL,
          inserted_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP, batch_count INTEGER NOT NULL DEFAULT 1);
        CREATE TRIGGER refuse BEFORE INSERT ON sse_events WHEN NEW.data LIKE '%poison%'
          BEGIN SELECT RAISE(ABORT, 'poison refused'); END;""")
    conn.close()
    first = cli("replay", "--to", f"sqlite:///{db}")
    assert "20 record(s) delivered and removed, 1 event(s) refused again and kept, 0 not sent" in first.stdout
    assert "poison refused" in first.stderr
    poison = dead_lettered[22]
    assert sorted(_stored(db)) == sorted(i for i in dead_lettered if i != poison)  # members raw
    records = JsonLinesDeadLetter(Path(os.environ["XDG_STATE_HOME"]) / "timelapser-workers" / "dead-letters.jsonl").read()
    # the rest are gone from the file; the aggregated event partly refused stays whole
    assert [[m["id"] for m in r["event"]["members"]] for r in records] == [dead_lettered[20:]]
    again = cli("replay", "--to", f"sqlite:///{db}")  # nothing stored twice
    assert "0 record(s) delivered and removed, 1 event(s) refused again" in again.stdout
    assert len(_stored(db)) == 24
    assert cli("replay", "--to", "nonsense://x", check=False).returncode == 2


def test_purge_older_than(tmp_path):
    path = tmp_path / "dead.jsonl"
    now = time.time()
    events = [make_event("E", {"n": n}) for n in range(4)]
    append_records(path, [dead_letter_record(e, "s", "permanent_error", None, now - 10 * 86400) for e in events[:3]]
                   + [dead_letter_record(events[3], "s", "permanent_error", None, now)])
    assert "nothing older" in cli("purge", "--older-than", "30d", "--file", str(path)).stdout
    assert "purged 3 record(s)" in cli("purge", "--older-than", "7d", "--file", str(path)).stdout
    assert [r["event"]["data"]["n"] for r in JsonLinesDeadLetter(path).read()] == [3]
    assert os.stat(path).st_mode & 0o777 == 0o600
    bad = cli("purge", "--older-than", "soon", "--file", str(path), check=False)
    assert bad.returncode == 2 and "'soon' is not an age" in bad.stderr


def test_a_rewrite_keeps_what_was_appended_after_the_file_was_read(tmp_path):
    path = tmp_path / "dead.jsonl"
    events = [make_event("E", {"n": n}) for n in range(3)]
    append_records(path, [dead_letter_record(e, "s", "r", None, 0.0) for e in events[:2]])
    inode = os.stat(path).st_ino
    replayed = {line.start for line in read_lines(path)}  # read by the command: both lines
    append_records(path, [dead_letter_record(events[2], "s", "r", None, 0.0)])  # a batcher, meanwhile
    assert rewrite_records(path, lambda line: line.start not in replayed, inode=inode) == (1, 2)
    assert [r["event"]["data"]["n"] for r in JsonLinesDeadLetter(path).read()] == [2]
    with pytest.raises(OSError, match="rewritten since it was read"):
        rewrite_records(path, lambda line: True, inode=inode)
