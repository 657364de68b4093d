"""Retries as the README's settings table says: the first wait is ``retry_delay``, each next one
doubles, capped at ``retry_max_delay``, plus up to ``retry_delay`` of random jitter; and close()
cuts a retry wait short instead of waiting it out. Real lanes and threads; times measured
with the monotonic clock, lower bounds exact, upper bounds with margins far below what the
broken behaviour would take."""

from __future__ import annotations

import threading
import time
from typing import Sequence

from timelapser_workers import TransientSinkError
from timelapser_workers.backoff import Backoff, exponential_wait
from timelapser_workers.events import Event
from timelapser_workers.sinks import MemorySink


class _Down(MemorySink):
    """Refuses every batch with a transient error and notes when each attempt came."""

    def __init__(self) -> None:
        super().__init__("down")
        self.attempts: list[float] = []
        self.tried = threading.Condition()

    def send(self, batch: Sequence[Event]) -> None:
        with self.tried:
            self.attempts.append(time.monotonic())
            self.tried.notify_all()
        raise TransientSinkError("the database is down")

    def wait_attempts(self, count: int, timeout: float = 10.0) -> bool:
        with self.tried:
            return self.tried.wait_for(lambda: len(self.attempts) >= count, timeout)


def test_the_backoff_policy_doubles_to_its_cap_plus_jitter_up_to_retry_delay() -> None:
    first, cap = 0.5, 3.0  # retry_delay and retry_max_delay, as the lanes build it
    for attempt, base in enumerate([0.5, 1.0, 2.0, 3.0, 3.0, 3.0], start=1):
        samples = []
        for _ in range(400):
            backoff = Backoff(exponential_wait(first, cap, jitter=first))
            for _ in range(attempt):
                delay = backoff.next_delay()
            samples.append(delay)
        assert all(base <= d <= base + first for d in samples), (attempt, min(samples), max(samples))
        # the jitter is spread over the whole range, not a constant
        assert max(samples) - min(samples) > 0.8 * first, (attempt, min(samples), max(samples))
        assert abs(sum(samples) / len(samples) - (base + first / 2)) < 0.05 * first * 2


def test_a_lanes_retries_wait_as_configured_and_stop_growing_at_the_cap(make_batcher, dead_letter) -> None:
    delay, cap, retries = 0.05, 0.12, 7
    sink = _Down()
    # spool_max_bytes=0: the retries' own outcome, the dead letter, not the spool behind them
    batcher = make_batcher([sink], use_batching=False, max_retries=retries, retry_delay=delay,
                           retry_max_delay=cap, spool_max_bytes=0)
    batcher.emit("E", {"n": 0}, worker="w")
    result = batcher.flush(timeout=30)
    assert (result.delivered, result.failed, result.pending) == (0, 1, 0)
    assert len(sink.attempts) == retries + 1
    waits = [b - a for a, b in zip(sink.attempts, sink.attempts[1:])]
    bases = [min(delay * 2 ** i, cap) for i in range(retries)]  # 0.05, 0.1, 0.12, 0.12 ...
    for wait, base in zip(waits, bases):
        assert wait >= base - 0.002, (waits, bases)  # never shorter than the backoff
    excess = [w - b for w, b in zip(waits, bases)]
    assert max(excess) > 0.2 * delay, excess  # jitter: without it every excess would be ~0
    # capped: 0.05 + 0.1 + 5 x 0.12 plus jitter, about 1 s; uncapped it would take 6.35 s
    assert sum(waits) < sum(bases) + retries * delay + 1.5, waits
    assert [r["reason"] for r in dead_letter.read()] == ["retries_exhausted"]


def test_close_cuts_a_retry_wait_short_and_the_lane_finishes_by_itself(make_batcher, dead_letter) -> None:
    sink = _Down()
    batcher = make_batcher([sink], use_batching=False, max_retries=3, retry_delay=30, retry_max_delay=60,
                           spool_max_bytes=0)  # the retries' own outcome, not the spool behind them
    batcher.emit("E", {"n": 0}, worker="w")
    assert sink.wait_attempts(1)  # failed once: the lane now waits 30 to 60 s before the next try
    start = time.monotonic()
    result = batcher.close(timeout=0.5)
    took = time.monotonic() - start
    assert took < 0.5 + 0.5, took
    assert (result.delivered, result.failed, result.pending) == (0, 1, 0)
    # the wait ended at once: the next attempt came right after close(), not 30 s later ...
    assert len(sink.attempts) >= 2 and sink.attempts[1] - start < 0.25, [t - start for t in sink.attempts]
    # ... and the lane finished its batch and closed its sink itself: it was not abandoned
    assert sink.closed
    assert [r["reason"] for r in dead_letter.read()] == ["retries_exhausted"]
    assert "shutdown_timeout" not in batcher.stats()["sinks"]["down"]["dropped"]
