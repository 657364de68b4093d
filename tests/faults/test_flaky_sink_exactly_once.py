"""8 producer threads, 200,000 events, a sink whose calls fail 20% of the time at random with
transient errors (half of them after the rows were committed, as a lost reply would): every
event is stored exactly once, counted in a real SQLite file."""

from __future__ import annotations

import random
import sqlite3
import threading

from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers import EventBatcher, JsonLinesDeadLetter, TransientSinkError
from timelapser_workers.events import JOB_STARTED

PRODUCERS, PER_PRODUCER = 8, 25_000


class FlakyDatabaseSink(DatabaseSink):
    """A real DatabaseSink; 20% of calls raise TransientSinkError, before or after the write."""

    def __init__(self, url: str, seed: int) -> None:
        super().__init__(url, wants_aggregated=False, name="flaky-db")
        self.rng = random.Random(seed)
        self.failed_before = self.failed_after = self.calls = 0

    def send(self, batch):
        # the first two calls fail, once each way, for sure (how many calls a run makes depends
        # on how much each flush takes), then 20% at random
        self.calls += 1
        roll = {1: 0.05, 2: 0.15}.get(self.calls) or self.rng.random()
        if roll < 0.10:
            self.failed_before += 1
            raise TransientSinkError("injected: connection lost before the write")
        super().send(batch)
        if roll < 0.20:
            self.failed_after += 1
            raise TransientSinkError("injected: reply lost after the commit")


def test_8_threads_200k_events_20pct_transient_failures_stored_exactly_once(tmp_path):
    db = tmp_path / "events.db"
    sink = FlakyDatabaseSink(f"sqlite:///{db}", seed=20240607)
    dead = JsonLinesDeadLetter(tmp_path / "dead.jsonl")
    batcher = EventBatcher(
        [sink], batch_size=500, batch_timeout=0.05, max_queue_size=50_000, overflow="block",
        block_timeout=60, max_retries=30, retry_delay=0.001, retry_max_delay=0.01,
        lane_max_events=1_000_000, dead_letter=dead,
    )
    errors: list[BaseException] = []

    def produce(t: int) -> None:
        try:
            for n in range(PER_PRODUCER):
                batcher.emit(JOB_STARTED, {"job_id": n, "t": t}, worker=f"w{t}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(PRODUCERS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    result = batcher.close(timeout=60)
    assert result.pending == 0 and result.failed == 0, result
    assert dead.read() == []
    assert sink.failed_before > 0 and sink.failed_after > 0  # both kinds of failure happened

    with sqlite3.connect(db) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM sse_events").fetchone()
        pairs = conn.execute(
            "SELECT count(DISTINCT json_extract(data, '$.t') || ':' || json_extract(data, '$.job_id')) "
            "FROM sse_events").fetchone()[0]
    assert total == distinct == PRODUCERS * PER_PRODUCER
    assert pairs == PRODUCERS * PER_PRODUCER
    stats = batcher.stats()["sinks"]["flaky-db"]
    assert stats["events_sent"] == PRODUCERS * PER_PRODUCER and stats["retries"] > 0
