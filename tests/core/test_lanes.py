"""What a lane does when its sink is slow, failing, hung or misbehaving: backpressure for a
healthy sink, isolation (dead letters, the others at full speed) for a failing or hung one,
and a lane thread that never dies. Real threads and sinks; every wait has a deadline."""

from __future__ import annotations

import gc
import threading
import time
from typing import Sequence

import blinker
import pytest

from tests.conftest import eventually
from timelapser_workers import EventBatcher, QueueFullError, TransientSinkError, signals
from timelapser_workers.events import Event
from timelapser_workers.sinks import MemorySink


def test_a_slow_healthy_sink_holds_back_the_producers_and_loses_nothing(make_batcher, gate_sink, dead_letter):
    slow = gate_sink("slow")
    batcher = make_batcher([slow], use_batching=False, lane_max_events=5, max_queue_size=5,
                           overflow="block", block_timeout=0.2)
    batcher.emit("E", {"n": 0}, worker="w")
    assert slow.entered.wait(5)  # n=0 is in flight and stays there until the gate opens
    accepted = 1
    with pytest.raises(QueueFullError):
        for n in range(1, 200):  # the lane fills, the flush thread waits, the ingress fills
            batcher.emit("E", {"n": n}, worker="w")
            accepted += 1
    # in memory: the lane (5), what the flush thread drained (<= 5), the ingress (5)
    assert accepted <= 1 + 5 + 5 + 5
    assert batcher.stats()["events_dropped"] == {"block_timeout": 1}
    assert batcher.stats()["sinks"]["slow"]["state"] == "healthy"
    slow.gate.set()
    assert batcher.flush(timeout=10).complete
    assert [e.data["n"] for e in slow.events] == list(range(accepted))
    assert dead_letter.read() == []


def test_a_hung_sink_is_isolated_after_send_timeout_and_the_others_go_on(make_batcher, gate_sink, dead_letter):
    hung, fast = gate_sink("hung"), MemorySink("fast")
    batcher = make_batcher([hung, fast], use_batching=False, lane_max_events=5, send_timeout=0.3)
    ids = [batcher.emit("E", {"n": 0}, worker="w").id]
    assert hung.entered.wait(5)
    ids += [batcher.emit("E", {"n": n}, worker="w").id for n in range(1, 101)]
    assert fast.wait_for(101, timeout=10), "the healthy sink waited for the hung one"
    result = batcher.flush(timeout=10)
    assert result.complete and result.spooled == 101  # in flight + every later one: on disk
    stats = batcher.stats()["sinks"]["hung"]
    assert stats["state"] == "hung"
    assert (stats["spooled"], stats["dead_lettered"], stats["pending"]) == (101, 0, 0)
    assert dead_letter.read() == []
    hung.gate.set()  # the send returns at last: the lane delivers its spool, oldest first
    ids.append(batcher.emit("E", {"n": 101}, worker="w").id)
    assert hung.wait_for(1 + 102, timeout=10)  # n=0 went through late: the spool has it too
    assert eventually(lambda: batcher.stats()["sinks"]["hung"]["state"] == "healthy")
    assert batcher.flush(timeout=10).complete
    assert [e.data["n"] for e in hung.events] == [0] + list(range(102))
    assert {e.id for e in hung.events} == set(ids)  # a sink that dedupes by id stores each once
    stats = batcher.stats()["sinks"]["hung"]
    assert (stats["events_sent"], stats["dead_lettered"], stats["spool_events"]) == (102, 0, 0)
    assert stats["redelivered"] >= 101  # n=101 too, if the spool was not empty yet


def test_a_send_that_outlasts_send_timeout_is_hung_for_a_flush_without_new_events(make_batcher, gate_sink, dead_letter):
    """No batch after the one that hangs: flush() finds the lane hung itself (spooled, complete)
    instead of waiting out its whole timeout on a send that will not return."""
    hung = gate_sink("hung")
    batcher = make_batcher([hung], use_batching=False, send_timeout=0.3)
    batcher.emit("E", {"n": 0}, worker="w")
    assert hung.entered.wait(5)
    start = time.monotonic()
    result = batcher.flush(timeout=20)
    assert result.complete and result.spooled == 1
    assert time.monotonic() - start < 10  # about send_timeout; the old lane waited all 20 s
    assert batcher.stats()["sinks"]["hung"]["state"] == "hung"
    hung.gate.set()
    assert batcher.flush(timeout=10).complete and dead_letter.read() == []


def test_a_retry_that_succeeds_as_the_lane_fills_is_not_spooled_again(make_batcher, monkeypatch):
    """The flush thread finds the lane full while its batch waits for a retry; before it acts,
    the retry succeeds. The delivered batch must not be taken for failing and sent twice."""
    from timelapser_workers.lane import SinkLane

    finished, acted = threading.Event(), threading.Event()
    real_finish, real_fail = SinkLane._finish, SinkLane._fail_while_retrying
    failed_calls = []

    def finish(self, batch, **kw):  # the lane thread pauses right after counting its first batch
        real_finish(self, batch, **kw)
        if not finished.is_set():
            finished.set()
            acted.wait(5)

    def fail(self):  # the flush thread acts only once the retry has succeeded
        failed_calls.append(1)
        finished.wait(5)
        try:
            real_fail(self)
        finally:
            acted.set()

    monkeypatch.setattr(SinkLane, "_finish", finish)
    monkeypatch.setattr(SinkLane, "_fail_while_retrying", fail)
    calls = []

    class OnceDown(MemorySink):
        def send(self, batch):
            calls.append([e.data["n"] for e in batch])
            if len(calls) == 1:
                raise TransientSinkError("down once")
            super().send(batch)

    sink = OnceDown("once")
    batcher = make_batcher([sink], use_batching=False, lane_max_events=1, retry_delay=1.0)
    batcher.emit("E", {"n": 0}, worker="w")
    assert eventually(lambda: batcher.stats()["sinks"]["once"]["retries"] == 1)  # n=0 waits >= 1 s for its retry
    for n in (1, 2):  # n=1 fills the lane; n=2 finds it full while retrying
        batcher.emit("E", {"n": n}, worker="w")
    assert batcher.flush(timeout=10).complete
    assert failed_calls, "the flush thread never found the lane full while its batch waited"
    assert [e.data["n"] for e in sink.events] == [0, 1, 2]  # each once, in order
    stats = batcher.stats()["sinks"]["once"]
    assert (stats["state"], stats["spooled"], stats["pending"]) == ("healthy", 0, 0)


class _BrokenSink(MemorySink):
    """Refuses every batch while ``broken`` is set (a database that is down)."""

    def __init__(self, name: str = "broken") -> None:
        super().__init__(name)
        self.broken = threading.Event()
        self.broken.set()
        self.calls = 0

    def send(self, batch: Sequence[Event]) -> None:
        self.calls += 1
        if self.broken.is_set():
            raise TransientSinkError("the database is down")
        super().send(batch)


def test_a_failing_sink_is_isolated_spooled_in_order_then_delivered(make_batcher, dead_letter):
    down, fast = _BrokenSink(), MemorySink("fast")
    batcher = make_batcher([down, fast], use_batching=False, lane_max_events=3, max_retries=2,
                           retry_delay=0.01, retry_max_delay=0.05)
    for n in range(50):
        batcher.emit("E", {"n": n}, worker="w")
    assert fast.wait_for(50, timeout=10)
    result = batcher.flush(timeout=10)
    assert result.complete and result.spooled == 50
    stats = batcher.stats()["sinks"]["broken"]
    assert stats["state"] == "failing" and stats["events_sent"] == 0 and stats["dead_lettered"] == 0
    assert stats["spooled"] == 50 and dead_letter.read() == []
    calls = down.calls  # the first batch's attempts, then probes with backoff, not a try per batch
    down.broken.clear()  # back up: the spool is delivered, oldest first, then the queue again
    batcher.emit("E", {"n": 50}, worker="w")
    assert down.wait_for(51, timeout=10)
    assert [e.data["n"] for e in down.events] == list(range(51))
    assert eventually(lambda: batcher.stats()["sinks"]["broken"]["spool_events"] == 0)
    assert batcher.stats()["sinks"]["broken"]["state"] == "healthy"
    assert calls < 50


def test_without_a_spool_a_failing_sink_dead_letters_then_recovers(make_batcher, dead_letter):
    down, fast = _BrokenSink(), MemorySink("fast")
    batcher = make_batcher([down, fast], use_batching=False, lane_max_events=3, max_retries=2,
                           retry_delay=0.01, spool_max_bytes=0)
    for n in range(50):
        batcher.emit("E", {"n": n}, worker="w")
    assert fast.wait_for(50, timeout=10)
    assert batcher.flush(timeout=10).complete
    stats = batcher.stats()["sinks"]["broken"]
    assert stats["state"] == "failing" and stats["events_sent"] == 0 and stats["dead_lettered"] == 50
    # the first batch spent its retries; after that one try each, or none when the lane was full
    reasons = [r["reason"] for r in dead_letter.read()]
    assert sorted(reasons) == ["retries_exhausted"] + ["sink_failing"] * 49
    assert len(reasons) == 50 and down.calls <= 3 + 49
    down.broken.clear()  # back up: the next batch goes through and the lane is healthy
    batcher.emit("E", {"n": 50}, worker="w")
    assert batcher.flush(timeout=10).complete
    assert batcher.stats()["sinks"]["broken"]["state"] == "healthy"
    assert [e.data["n"] for e in down.events] == [50]


def test_while_its_batch_waits_for_a_retry_a_full_lane_spools_and_the_producers_do_not_wait(
        make_batcher, dead_letter):
    down = _BrokenSink()
    # the batch in flight waits 1-2 s for its next attempt; a producer waits 0.2 s at most
    batcher = make_batcher([down], use_batching=False, lane_max_events=3, max_queue_size=5,
                           overflow="block", block_timeout=0.2, max_retries=5, retry_delay=1.0,
                           retry_max_delay=1.0)
    batcher.emit("E", {"n": 0}, worker="w")
    assert eventually(lambda: batcher.stats()["sinks"]["broken"]["retries"] >= 1)
    for n in range(1, 100):  # waiting out the retries, this would raise QueueFullError
        batcher.emit("E", {"n": n}, worker="w")
    result = batcher.flush(timeout=10)
    assert result.complete and result.spooled == 100  # n=0 too: taken from its retries
    assert batcher.stats()["events_dropped"] == {} and dead_letter.read() == []
    assert batcher.stats()["sinks"]["broken"]["state"] == "failing"  # spooling: never "healthy"
    down.broken.clear()
    assert down.wait_for(100, timeout=10)
    assert eventually(lambda: batcher.stats()["sinks"]["broken"]["spool_events"] == 0)
    # in order, and each once: the batch taken away was not sent again by its retries
    assert [e.data["n"] for e in down.events] == list(range(100))


def test_an_error_of_the_lanes_own_costs_its_batch_not_the_lane(make_batcher, dead_letter, monkeypatch, caplog):
    sink = MemorySink("mem")
    batcher = make_batcher([sink], use_batching=False, spool_max_bytes=0)
    batcher.emit("E", {"n": 0}, worker="w")
    assert batcher.flush(timeout=10).complete
    lane = batcher._slot.pipe.lanes[0]
    finish = lane._finish

    def broken_once(*args, **kwargs):  # a bug in the lane's bookkeeping, once
        monkeypatch.setattr(lane, "_finish", finish)
        raise RuntimeError("lane bug")

    monkeypatch.setattr(lane, "_finish", broken_once)
    batcher.emit("E", {"n": 1}, worker="w")
    assert eventually(lambda: [r["reason"] for r in dead_letter.read()] == ["internal_error"])
    assert "the lane failed on its own" in caplog.text
    batcher.emit("E", {"n": 2}, worker="w")
    result = batcher.flush(timeout=10)
    assert result.complete and result.pending == 0
    assert [e.data["n"] for e in sink.events] == [0, 1, 2]  # n=1 reached the sink before the bug
    stats = batcher.stats()["sinks"]["mem"]
    assert (stats["events_sent"], stats["dead_lettered"], stats["dropped"]) == (2, 1, {"internal_error": 1})


class _ExitingSink(MemorySink):
    """Raises ``error`` on every call while ``failing`` (a bug: SystemExit from a sink)."""

    def __init__(self, error: type[BaseException]) -> None:
        super().__init__("exiting")
        self.error = error
        self.failing = True

    def send(self, batch: Sequence[Event]) -> None:
        if self.failing:
            raise self.error("sink bug")
        super().send(batch)


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt, GeneratorExit])
def test_any_base_exception_from_a_sink_is_a_failed_send_and_the_lane_lives(make_batcher, dead_letter, error):
    sink = _ExitingSink(error)
    batcher = make_batcher([sink], use_batching=False, max_retries=1, retry_delay=0.01, retry_max_delay=0.05)
    batcher.emit("E", {"n": 0}, worker="w")
    batcher.emit("E", {"n": 1}, worker="w")
    result = batcher.flush(timeout=10)
    assert (result.delivered, result.failed, result.pending, result.spooled) == (0, 0, 0, 2)
    assert batcher.stats()["sinks"]["exiting"]["last_error"].split(":")[0] == error.__name__
    sink.failing = False
    batcher.emit("E", {"n": 2}, worker="w")
    assert sink.wait_for(3, timeout=10)  # the lane thread is alive
    assert [e.data["n"] for e in sink.events] == [0, 1, 2]
    assert batcher.close(timeout=5).pending == 0 and dead_letter.read() == []


def test_each_sink_gets_an_immutable_batch_of_its_own(make_batcher):
    seen: list[object] = []

    class Clearing(MemorySink):
        def send(self, batch: Sequence[Event]) -> None:
            seen.append(batch)
            batch[:] = []  # type: ignore[index]  # would empty it for the next sink, if it could

    other = MemorySink("other")
    batcher = make_batcher([Clearing("clearing"), other], use_batching=False, max_retries=0)
    for n in range(5):
        batcher.emit("E", {"n": n}, worker="w")
    assert batcher.flush(timeout=10).pending == 0
    assert [e.data["n"] for e in other.events] == list(range(5))
    assert seen and all(isinstance(b, tuple) for b in seen)


def test_a_sink_whose_close_blocks_is_abandoned_at_the_deadline(make_batcher):
    release = threading.Event()

    class StuckOnClose(MemorySink):
        def close(self, timeout: float | None = None) -> None:
            release.wait(60)

    sink = StuckOnClose("stuck")
    batcher = make_batcher([sink], batch_timeout=0.01)
    batcher.emit("E", worker="w")
    assert sink.wait_for(1, timeout=5)
    start = time.monotonic()
    result = batcher.close(timeout=0.5)
    assert time.monotonic() - start < 0.5 + 0.5
    assert result.pending == 0 and sink.count == 1
    release.set()


def test_close_from_inside_a_sink_returns_and_a_later_close_finishes_promptly(make_batcher):
    results = []

    class Closing(MemorySink):
        def send(self, batch: Sequence[Event]) -> None:
            super().send(batch)
            if not results:
                results.append(batcher.close(timeout=10))  # from the lane thread itself

    sink = Closing("closing")
    batcher = make_batcher([sink], use_batching=False)
    batcher.emit("E", {"n": 0}, worker="w")
    assert eventually(lambda: bool(results), timeout=5), "close() from inside the sink did not return"
    start = time.monotonic()
    assert batcher.close(timeout=10).pending == 0
    assert time.monotonic() - start < 2.0  # not the full timeout
    assert sink.closed and [e.data["n"] for e in sink.events] == [0]


def _thread_count() -> int:
    return threading.active_count()


def test_batchers_nobody_references_are_closed_and_deliver(tmp_path):
    receivers_before = {s: len(s.receivers) for s in signals.standard_signals()}
    threads_before = _thread_count()
    sinks = [MemorySink(f"m{n}") for n in range(300)]
    for n, sink in enumerate(sinks):
        batcher = EventBatcher([sink], dead_letter=tmp_path / "dead.jsonl", name=f"orphan{n}",
                               batch_timeout=60)
        batcher.connect()
        signals.job_started.send(f"w{n}", job_id=n)
    del batcher
    gc.collect()
    assert all(s.wait_for(1, timeout=20) for s in sinks), "an orphaned batcher lost its event"
    assert eventually(lambda: _thread_count() <= threads_before + 2, timeout=20), _thread_count()
    assert {s: len(s.receivers) for s in signals.standard_signals()} == receivers_before
    assert all(s.closed for s in sinks)
    start = time.perf_counter()
    signals.job_started.send("nobody", job_id=0)  # no receivers left to run
    assert time.perf_counter() - start < 0.01
    assert isinstance(signals.job_started, blinker.NamedSignal)


def test_a_sink_never_gets_an_empty_batch_or_an_internal_wrapper(make_batcher):
    """Unbatched events among batched ones (one producer with use_batching=False), into a raw
    sink: every batch holds 1..n real Events."""
    seen: list[tuple[object, ...]] = []

    class Recording(MemorySink):
        def send(self, batch: Sequence[Event]) -> None:
            seen.append(tuple(batch))
            super().send(batch)

    sink = Recording("raw", wants_aggregated=False)
    batcher = make_batcher([sink], batch_timeout=0.01)
    batcher.connect()
    for n in range(2_000):
        signals.job_started.send("w", job_id=n, use_batching=(n % 7 != 0))
    assert batcher.flush(timeout=10).complete
    assert seen and all(batch and all(type(e) is Event for e in batch) for batch in seen)
    assert sink.count == 2_000


def test_submit_refuses_an_event_not_built_by_make_event(make_batcher):
    batcher = make_batcher([MemorySink()])
    with pytest.raises(TypeError, match="payload dict"):
        batcher.submit(Event(id="e1", type="X", payload={"i": 4}))  # type: ignore[arg-type]
