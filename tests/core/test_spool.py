"""The spool and the dead-letter file on disk: one record format (checksummed lines, 0600,
0700 directories), a torn tail skipped and counted, an absolute default place in the state
directory checked when the batcher is built, a bounded spool, and a spool left behind adopted
by the next batcher with the same sink name (never while its owner lives)."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Sequence

import orjson
import pytest

from timelapser_workers import EventBatcher, JsonLinesDeadLetter, TransientSinkError
from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.events import JOB_STARTED, Event, make_event
from timelapser_workers.records import decode_event, encode_event, frame, read_lines
from timelapser_workers.sinks import MemorySink
from timelapser_workers.spool import Spool, spool_line
from timelapser_workers.spool_files import spooled_events


class Down(MemorySink):
    """Refuses every batch (transiently) while ``down`` is set."""

    def __init__(self, name: str = "target") -> None:
        super().__init__(name)
        self.down = threading.Event()
        self.down.set()

    def send(self, batch: Sequence[Event]) -> None:
        if self.down.is_set():
            raise TransientSinkError("the database is down")
        super().send(batch)


def _read_all(spool: Spool) -> list[int]:
    """Read and acknowledge every record the spool holds: the ``n`` of each event, in order."""
    got = []
    while (record := spool.next(0)) is not None:
        got += [e.data["n"] for e in record.events]
        spool.ack(record)
    return got


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_event_comes_back_whole_aggregated_members_included():
    members = [make_event(JOB_STARTED, {"job_id": n, "x": [1.5, "é", None]}, worker="w", source="s")
               for n in range(3)]
    merged = AggregationPolicy().aggregate(members).events[0]
    back = decode_event(encode_event(merged))
    assert back.payload == merged.payload and back.members[1].payload == members[1].payload
    keep = ("id", "type", "payload", "source", "worker", "priority", "created_at", "job_id")
    for old, new in zip((merged, *members), (back, *back.members)):
        assert [getattr(new, k) for k in keep] == [getattr(old, k) for k in keep]
    assert back.batch_count == 3 and back.members[0].members == ()


def test_the_dead_letter_file_is_private_and_a_torn_tail_costs_one_line(tmp_path):
    path = tmp_path / "new" / "dead.jsonl"
    path.parent.mkdir(mode=0o700)
    dead = JsonLinesDeadLetter(path)
    events = [make_event("E", {"n": n}) for n in range(3)]
    dead(events[:2], "sink", "permanent_error", ValueError("no"))
    assert _mode(path) == 0o600
    with open(path, "ab") as f:  # a crash (or a full disk) in the middle of a record
        f.write(frame(b'{"dead_lettered_at":1,"sink":"x","reason":"y"}')[:20])
    dead(events[2:], "sink", "permanent_error", None)  # starts on a line of its own
    lines = list(read_lines(path))
    assert [line.body is None for line in lines] == [False, False, True, False]
    assert [r["event"]["data"]["n"] for r in dead.read()] == [0, 1, 2]
    assert dead.read()[0]["error"] == "ValueError: no"


def test_by_default_dead_letters_go_to_the_state_directory_named_in_the_first_warning(
        make_batcher, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)

    class Refusing(MemorySink):
        def send(self, batch: Sequence[Event]) -> None:
            from timelapser_workers import PermanentSinkError

            raise PermanentSinkError("never", events=list(batch))

    batcher = EventBatcher([Refusing("refusing")], batch_timeout=0.01)
    try:
        with caplog.at_level(logging.WARNING, logger="timelapser_workers.deadletter"):
            batcher.emit("E", {"token": "s3cret"}, worker="w")
            assert batcher.flush(timeout=5).failed == 1
    finally:
        batcher.close(timeout=5)
    home = tmp_path / "state" / "timelapser-workers"
    path = home / "dead-letters.jsonl"
    assert path.is_absolute() and [r["event"]["data"] for r in JsonLinesDeadLetter(path).read()] == [{"token": "s3cret"}]
    assert _mode(path) == 0o600 and _mode(home) == 0o700 and _mode(home / "spool") == 0o700
    assert str(path) in caplog.text and "timelapser-workers dead-letters" in caplog.text


@pytest.mark.parametrize("setting,value,env", [
    ("dead_letter_path", "", None),
    ("dead_letter_path", "", "TIMELAPSER_DEAD_LETTER_PATH"),
    ("dead_letter_path", "{file}/dead.jsonl", None),
    ("dead_letter_path", "{file}/dead.jsonl", "TIMELAPSER_DEAD_LETTER_PATH"),
    ("dead_letter_path", "{dir}", None),
    ("spool_dir", "", "TIMELAPSER_SPOOL_DIR"),
    ("spool_dir", "{file}/spool", None),
    ("spool_dir", "{file}/spool", "TIMELAPSER_SPOOL_DIR"),
])
def test_a_place_that_cannot_be_written_fails_when_the_batcher_is_built(tmp_path, monkeypatch, setting, value, env):
    (tmp_path / "a-file").write_text("not a directory")
    value = value.format(file=tmp_path / "a-file", dir=tmp_path)
    if env:
        monkeypatch.setenv(env, value)
        kwargs = {}
    else:
        kwargs = {setting: value}
    with pytest.raises(ValueError) as info:
        EventBatcher([MemorySink()], **kwargs)
    assert setting in str(info.value) and (env is None or env in str(info.value)), info.value


def test_an_empty_dead_letter_argument_is_refused(tmp_path):
    with pytest.raises(ValueError, match="dead_letter=''"):
        EventBatcher([MemorySink()], dead_letter="")


def test_a_full_spool_dead_letters_what_does_not_fit_and_counts_it(make_batcher, dead_letter, tmp_path):
    sink = Down()
    batcher = make_batcher([sink], use_batching=False, max_retries=0, spool_max_bytes=3_000,
                           spool_dir=tmp_path / "spool", retry_max_delay=0.05)
    ids = [batcher.emit("E", {"n": n, "pad": "x" * 200}, worker="w").id for n in range(40)]
    result = batcher.flush(timeout=10)
    stats = batcher.stats()["sinks"]["target"]
    assert 0 < stats["spool_events"] < 40 and stats["spool_bytes"] <= 3_000
    assert stats["spool_full"] == stats["dropped"]["spool_full"] == result.failed == 40 - result.spooled
    assert {r["reason"] for r in dead_letter.read()} == {"spool_full"}
    sink.down.clear()
    assert sink.wait_for(result.spooled, timeout=10)
    dead_ids = {r["event"]["id"] for r in dead_letter.read()}
    assert sorted(dead_ids | {e.id for e in sink.events}) == sorted(ids)  # every one, once


def test_a_spool_left_behind_is_delivered_by_the_next_batcher_with_that_sink_name(make_batcher, tmp_path):
    first = make_batcher([Down()], use_batching=False, max_retries=0, spool_dir=tmp_path / "spool")
    ids = [first.emit("E", {"n": n}, worker="w").id for n in range(30)]
    assert first.close(timeout=5).spooled == 30
    assert spooled_events(tmp_path / "spool") == {"target": 30}
    assert _mode(next((tmp_path / "spool" / "target").glob("*.seg"))) == 0o600
    later = MemorySink("target")
    second = make_batcher([later], spool_dir=tmp_path / "spool")  # delivers without a first event
    assert later.wait_for(30, timeout=5)
    assert [e.id for e in later.events] == ids  # oldest first
    assert second.stats()["sinks"]["target"]["spool_adopted"] == 30
    second.close(timeout=5)
    assert list((tmp_path / "spool" / "target").iterdir()) == []  # delivered: nothing left


def test_a_live_batchers_spool_is_never_taken_by_another(make_batcher, tmp_path):
    down = Down()
    first = make_batcher([down], use_batching=False, max_retries=0, retry_max_delay=0.05,
                         spool_dir=tmp_path / "spool")
    for n in range(10):
        first.emit("E", {"n": n}, worker="w")
    assert first.flush(timeout=5).spooled == 10
    other = MemorySink("target")
    make_batcher([other], spool_dir=tmp_path / "spool")
    time.sleep(0.2)  # margin: the other lane would have delivered by now if it had taken them
    assert other.count == 0 and first.stats()["sinks"]["target"]["spool_events"] == 10
    down.down.clear()  # its owner delivers them itself
    assert down.wait_for(10, timeout=10) and other.count == 0


def test_a_torn_spool_record_is_skipped_and_the_whole_ones_delivered(tmp_path):
    events = [make_event("E", {"n": n}) for n in range(5)]
    spool = Spool(tmp_path, "target", 1 << 20)
    for e in events:
        line = spool_line([encode_event(e)], 1)
        assert spool.reserve(len(line), 1)
        spool.append(line, 1)
    segment = next((tmp_path / "target").glob("*.seg"))
    spool._forget()  # as if the process were killed: its lock goes with it
    with open(segment, "ab") as f:
        f.write(spool_line([encode_event(make_event("E", {"n": 5}))], 1)[:30])
    later = Spool(tmp_path, "target", 1 << 20)
    assert later.adopt() == 5
    got = _read_all(later)
    assert got == [0, 1, 2, 3, 4] and later.corrupt == 1 and later.empty
    later.close()
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == []


def test_a_checked_record_this_version_cannot_read_is_kept_aside_and_counted_out(tmp_path):
    """A whole line that does not decode (a newer version's priority, say) is skipped, kept in
    undecodable.jsonl, and its events counted out: the spool empties, so flushes end."""
    spool = Spool(tmp_path, "target", 1 << 20)
    for n in range(2):
        line = spool_line([encode_event(make_event("E", {"n": n}))], 1)
        assert spool.reserve(len(line), 1)
        spool.append(line, 1)
    spool._forget()
    record = orjson.loads(encode_event(make_event("E", {"n": 2})))
    record["priority"] = "URGENT"
    odd = spool_line([orjson.dumps(record)], 3)  # stands for 3 events (an aggregate)
    with open(next((tmp_path / "target").glob("*.seg")), "ab") as f:
        f.write(odd)
    later = Spool(tmp_path, "target", 1 << 20)
    assert later.adopt() == 5
    got = _read_all(later)
    assert got == [0, 1] and later.corrupt == 1
    assert later.empty and later.left == later.entered == 5
    kept = (tmp_path / "target" / "undecodable.jsonl").read_bytes()
    assert b'"URGENT"' in kept and kept.count(b"\n") == 1
    later.close()


def test_a_close_that_comes_while_the_disk_writer_appends_leaves_the_line_for_the_next_start(tmp_path, monkeypatch):
    """A shutdown that overran closes the spool while the disk writer is in its write: the
    writer finishes with its own descriptor and the line stays on disk for the next start."""
    import timelapser_workers.spool as spool_module

    spool = Spool(tmp_path, "target", 1 << 20)
    first = spool_line([encode_event(make_event("E", {"n": 0}))], 1)
    assert spool.reserve(len(first), 1)
    spool.append(first, 1)
    real_write = spool_module.write_once

    def close_then_write(fd, data):
        spool.close()
        real_write(fd, data)

    monkeypatch.setattr(spool_module, "write_once", close_then_write)
    second = spool_line([encode_event(make_event("E", {"n": 1}))], 1)
    assert spool.reserve(len(second), 1)
    spool.append(second, 1)  # no error: the line is written
    monkeypatch.setattr(spool_module, "write_once", real_write)
    later = Spool(tmp_path, "target", 1 << 20)
    assert later.adopt() == 2
    got = _read_all(later)
    assert got == [0, 1]
    later.close()


def test_a_spool_the_disk_refuses_dead_letters_its_events_and_counts_them(make_batcher, dead_letter, tmp_path):
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "target").write_text("a file where the sink's spool directory would be")
    batcher = make_batcher([Down()], use_batching=False, max_retries=0, spool_dir=tmp_path / "spool")
    ids = [batcher.emit("E", {"n": n}, worker="w").id for n in range(5)]
    result = batcher.flush(timeout=10)
    stats = batcher.stats()["sinks"]["target"]
    assert (result.failed, result.spooled) == (5, 0)
    assert stats["spool_errors"] == stats["dropped"]["spool_error"] == stats["dead_lettered"] == 5
    records = dead_letter.read()
    assert sorted(r["event"]["id"] for r in records) == sorted(ids)
    assert {r["reason"] for r in records} == {"spool_error"} and "Not a directory" in records[0]["error"]
