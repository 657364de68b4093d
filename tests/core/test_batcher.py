"""EventBatcher behaviour: triggers, order, retries, dead letters, isolation, backpressure,
flush/close deadlines. Real threads, real sinks; waits have deadlines, timing bounds margins."""

from __future__ import annotations

import os
import threading
import time

import pytest

from timelapser_workers.threads import DaemonThread

from timelapser_workers.sinks import MemorySink
from timelapser_workers import (
    AggregationPolicy,
    BatcherClosedError,
    PermanentSinkError,
    QueueFullError,
    signals,
)
from timelapser_workers.events import JOB_COMPLETED, JOB_STARTED, Priority, make_event


# --- flush triggers ---------------------------------------------------------------------------
def test_size_trigger_flushes_without_waiting_for_the_timeout(make_batcher):
    sink = MemorySink()
    batcher = make_batcher([sink], batch_size=10, batch_timeout=60)
    for i in range(10):
        batcher.emit(JOB_STARTED, {"job_id": i}, worker="w")
    assert sink.wait_for(10, timeout=5), "size trigger did not flush (timeout is 60 s)"
    [batch] = sink.events
    assert batch.data["batch_count"] == 10


def test_age_trigger_delivers_a_lone_event_about_batch_timeout_after_it_arrived(make_batcher):
    sink = MemorySink()
    batcher = make_batcher([sink], batch_size=1000, batch_timeout=0.3)
    batcher.emit("PING", worker="w")  # starts the threads
    assert sink.wait_for(1, timeout=5)
    start = time.monotonic()
    batcher.emit("PING", worker="w")
    assert sink.wait_for(2, timeout=5)
    took = time.monotonic() - start
    # not before the window closes; and nowhere near the 2x a fixed polling loop gives
    assert 0.29 <= took < 0.3 + 0.25, took


def test_priority_event_flushes_at_once_with_what_was_pending_before_it(make_batcher):
    sink = MemorySink("raw", wants_aggregated=False)
    batcher = make_batcher([sink], batch_size=1000, batch_timeout=60)
    first = batcher.emit(JOB_STARTED, {"job_id": 1}, worker="a")
    other = batcher.emit("NOTE", worker="b")
    urgent = batcher.emit("WORKER_ERROR", {"error": "disk full"}, worker="a", priority=Priority.HIGH)
    assert sink.wait_for(3, timeout=5), "HIGH priority did not flush (timeout is 60 s)"
    assert {e.id for e in sink.events} == {first.id, other.id, urgent.id}
    assert [e.id for e in sink.events if e.worker == "a"] == [first.id, urgent.id]


def _cpu_ticks(thread: DaemonThread) -> int:
    with open(f"/proc/self/task/{thread.ident}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="needs Linux /proc")
def test_idle_batcher_uses_no_cpu(make_batcher):
    sink = MemorySink()
    batcher = make_batcher([sink], batch_timeout=0.05)
    batcher.emit("PING", worker="w")
    assert sink.wait_for(1, timeout=5)
    before = _cpu_ticks(batcher._pipe.thread)
    time.sleep(1.0)
    assert _cpu_ticks(batcher._pipe.thread) - before <= 1  # a polling loop would keep ticking


# --- order ------------------------------------------------------------------------------------
def test_each_sink_sees_each_workers_events_in_emission_order(make_batcher):
    raw, agg = MemorySink("raw", wants_aggregated=False), MemorySink("agg")
    batcher = make_batcher([raw, agg], batch_size=7, batch_timeout=0.05)
    emitted: dict[str, list[str]] = {f"w{n}": [] for n in range(4)}

    def produce(worker: str) -> None:
        for job in range(300):
            for etype in (JOB_STARTED, JOB_COMPLETED):
                emitted[worker].append(batcher.emit(etype, {"job_id": job}, worker=worker).id)

    threads = [threading.Thread(target=produce, args=(w,)) for w in emitted]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert batcher.flush(timeout=10).pending == 0
    for worker, ids in emitted.items():
        assert [e.id for e in raw.events if e.worker == worker] == ids
        # aggregated: every event once, and no job's COMPLETED before its STARTED
        members = [m for e in agg.events if e.worker == worker for m in (e.members or (e,))]
        assert sorted(m.id for m in members) == sorted(ids)
        seen_started = set()
        for m in members:
            if m.type == JOB_STARTED:
                seen_started.add(m.data["job_id"])
            else:
                assert m.data["job_id"] in seen_started


# --- retries and dead letters -----------------------------------------------------------------
def test_transient_failure_is_retried_then_delivered(make_batcher, flaky_sink, dead_letter):
    sink = flaky_sink(failures=2)
    batcher = make_batcher([sink], max_retries=2, retry_delay=0.01, batch_timeout=0.01)
    batcher.emit("PING", worker="w")
    assert sink.wait_for(1, timeout=5)
    stats = batcher.stats()["sinks"]["flaky"]
    assert (stats["retries"], stats["failures"], stats["dead_lettered"]) == (2, 2, 0)
    assert dead_letter.read() == []


def test_retries_exhausted_go_to_the_spool_and_are_delivered_when_the_sink_is_back(
        make_batcher, flaky_sink, dead_letter):
    sink = flaky_sink(failures=10**9)
    batcher = make_batcher([sink], max_retries=2, retry_delay=0.01, retry_max_delay=0.05, batch_timeout=0.01)
    ids = [batcher.emit(JOB_STARTED, {"job_id": i}, worker="w").id for i in range(3)]
    result = batcher.flush(timeout=5)
    assert (result.delivered, result.failed, result.pending, result.spooled) == (0, 0, 0, 3)
    stats = batcher.stats()["sinks"]["flaky"]
    assert stats["state"] == "failing" and stats["spooled"] == stats["spool_events"] == 3
    assert "TransientSinkError: flaky" in stats["last_error"] and sink.calls >= 3
    sink.failures = 0  # back: the lane's next probe delivers the spool
    assert sink.wait_for(3, timeout=10)
    assert sorted(m.id for m in sink.raw_events) == sorted(ids)
    deadline = time.monotonic() + 5  # counted once the send has returned
    while batcher.stats()["sinks"]["flaky"]["redelivered"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stats = batcher.stats()["sinks"]["flaky"]
    assert (stats["redelivered"], stats["spool_events"], stats["dead_lettered"]) == (3, 0, 0)
    assert dead_letter.read() == []


def test_without_a_spool_retries_exhausted_go_to_the_dead_letter(make_batcher, flaky_sink, dead_letter):
    sink = flaky_sink(failures=10**9)
    batcher = make_batcher([sink], max_retries=2, retry_delay=0.01, batch_timeout=0.01, spool_max_bytes=0)
    ids = [batcher.emit(JOB_STARTED, {"job_id": i}, worker="w").id for i in range(3)]
    result = batcher.flush(timeout=5)
    assert (result.delivered, result.failed, result.pending, result.spooled) == (0, 3, 0, 0)
    assert sink.calls == 3  # first attempt + max_retries
    records = dead_letter.read()
    assert {r["reason"] for r in records} == {"retries_exhausted"}
    dead_ids = [m["id"] for r in records for m in r["event"].get("members", [r["event"]])]
    assert sorted(dead_ids) == sorted(ids)
    stats = batcher.stats()["sinks"]["flaky"]
    assert stats["dead_lettered"] == 3 and "TransientSinkError: flaky" in stats["last_error"]


def test_permanent_error_is_not_retried(make_batcher, flaky_sink, dead_letter):
    sink = flaky_sink(failures=1, error=lambda: PermanentSinkError("bad row"))
    batcher = make_batcher([sink], max_retries=5, batch_timeout=0.01)
    batcher.emit("PING", worker="w")
    assert batcher.flush(timeout=5).failed == 1
    assert sink.calls == 1 and [r["reason"] for r in dead_letter.read()] == ["permanent_error"]


def test_permanent_error_naming_some_events_dead_letters_only_those(make_batcher, dead_letter):
    class PickySink(MemorySink):
        def send(self, batch):
            bad = [e for e in batch if e.data.get("bad")]
            super().send([e for e in batch if not e.data.get("bad")])
            if bad:
                raise PermanentSinkError("rows refused", events=bad)

    sink = PickySink("picky", wants_aggregated=False)
    batcher = make_batcher([sink], batch_timeout=0.01)
    for i in range(5):
        batcher.emit("ROW", {"n": i, "bad": i == 2}, worker="w")
    result = batcher.flush(timeout=5)
    assert (result.delivered, result.failed) == (4, 1)
    assert [r["event"]["data"]["n"] for r in dead_letter.read()] == [2]


def test_a_slow_sink_does_not_delay_a_fast_one(make_batcher, gate_sink):
    slow, fast = gate_sink("slow"), MemorySink("fast")
    batcher = make_batcher([slow, fast], batch_timeout=0.01)
    for i in range(50):
        batcher.emit(JOB_STARTED, {"job_id": i}, worker="w")
    assert fast.wait_for(50, timeout=5), "the fast sink waited for the slow one"
    assert slow.entered.wait(5) and slow.count == 0
    slow.gate.set()
    assert slow.wait_for(50, timeout=5)


# --- backpressure -----------------------------------------------------------------------------
class _StalledPolicy(AggregationPolicy):
    """Holds the flush thread inside aggregate() until released, so the queue fills up."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.stalled = threading.Event()

    def aggregate(self, events):
        self.stalled.set()
        self.release.wait(30)
        return super().aggregate(events)


def _fill(batcher, policy, capacity):
    first = batcher.emit("E", {"n": -1}, worker="w")
    assert policy.stalled.wait(5)
    accepted = [batcher.emit("E", {"n": n}, worker="w") for n in range(capacity)]
    return first, accepted


@pytest.mark.parametrize("mode", ["drop_newest", "drop_oldest"])
def test_drop_modes_count_every_drop_exactly(make_batcher, mode):
    policy, sink = _StalledPolicy(), MemorySink("raw", wants_aggregated=False)
    # the aggregated sink makes the flush thread call (and stall in) the policy
    batcher = make_batcher([sink, MemorySink("agg")], batch_size=1, max_queue_size=20,
                           overflow=mode, aggregation=policy)
    first, accepted = _fill(batcher, policy, 20)
    extra = [make_event("E", {"n": 100 + n}, worker="w") for n in range(7)]
    results = [batcher.submit(e) for e in extra]  # never raises in a drop mode
    assert results == [False] * 7
    assert batcher.stats()["events_dropped"] == {mode: 7}
    policy.release.set()
    assert batcher.flush(timeout=5).pending == 0
    got = [e.data["n"] for e in sink.events]
    if mode == "drop_newest":
        assert got == [-1] + list(range(20))
    else:
        assert got == [-1] + list(range(7, 20)) + [100 + n for n in range(7)]


def test_block_mode_waits_then_raises_and_counts(make_batcher):
    policy = _StalledPolicy()
    batcher = make_batcher([MemorySink()], batch_size=1, max_queue_size=5, overflow="block",
                           block_timeout=0.2, aggregation=policy)
    _fill(batcher, policy, 5)
    start = time.monotonic()
    with pytest.raises(QueueFullError, match="block_timeout=0.2"):
        batcher.emit("E", worker="w")
    assert time.monotonic() - start >= 0.19
    assert batcher.stats()["events_dropped"] == {"block_timeout": 1}
    policy.release.set()


def test_block_mode_succeeds_when_space_frees_up_in_time(make_batcher):
    policy, sink = _StalledPolicy(), MemorySink()
    batcher = make_batcher([sink], batch_size=1, max_queue_size=5, overflow="block",
                           block_timeout=10, aggregation=policy)
    _fill(batcher, policy, 5)
    threading.Timer(0.2, policy.release.set).start()
    assert batcher.submit(make_event("E", worker="w")) is True
    assert batcher.flush(timeout=5).pending == 0 and sink.count == 7


# --- flush, close, refusal --------------------------------------------------------------------
def test_flush_and_close_keep_their_deadlines_with_a_hung_sink(make_batcher, gate_sink, dead_letter):
    hung, ok = gate_sink("hung"), MemorySink("ok")
    batcher = make_batcher([hung, ok], batch_timeout=60)
    for i in range(5):
        batcher.emit(JOB_STARTED, {"job_id": i}, worker="w")
    start = time.monotonic()
    result = batcher.flush(timeout=0.3)
    assert 0.29 <= time.monotonic() - start < 0.3 + 0.5
    assert result.pending == 5 and result.delivered == 5  # the healthy sink got them all
    batcher.emit(JOB_STARTED, {"job_id": 99}, worker="w")
    start = time.monotonic()
    closed = batcher.close(timeout=0.5)
    assert time.monotonic() - start < 0.5 + 0.5
    # in flight + queued: on disk in the hung sink's spool, for the next start
    assert (closed.pending, closed.failed, closed.spooled) == (0, 0, 6)
    assert dead_letter.read() == []
    assert ok.closed and not hung.closed


def test_close_delivers_pending_refuses_new_events_and_is_idempotent(make_batcher):
    sink = MemorySink()
    batcher = make_batcher([sink], batch_timeout=60)
    batcher.connect()
    for i in range(3):
        batcher.emit(JOB_STARTED, {"job_id": i}, worker="w")
    result = batcher.close(timeout=5)
    assert (result.delivered, result.pending) == (3, 0) and sink.closed
    with pytest.raises(BatcherClosedError, match="closed"):
        batcher.emit(JOB_STARTED, worker="w")
    signals.job_started.send("w", job_id=9)  # disconnected: nothing happens, nothing raises
    assert batcher.stats()["events_rejected"] == {"closed": 1}
    assert batcher.close(timeout=1) == result


def test_bad_payload_through_a_signal_is_refused_without_raising_into_the_worker(make_batcher, caplog):
    sink = MemorySink("raw", wants_aggregated=False)
    batcher = make_batcher([sink], batch_timeout=0.01)
    batcher.connect()
    signals.job_started.send("w", job_id=1, when=object())
    signals.job_started.send("w", job_id=2)
    assert batcher.flush(timeout=5).pending == 0
    assert [e.data["job_id"] for e in sink.events] == [2]
    assert batcher.stats()["events_rejected"] == {"invalid": 1}
    assert "data['when']" in caplog.text
    with pytest.raises(TypeError, match=r"data\['when'\]"):
        batcher.emit(JOB_STARTED, {"when": object()})


def test_signal_kwargs_sender_and_custom_signals(make_batcher):
    class Worker:
        name = "thumbs"
        event_source = "thumbnail_worker"

    sink = MemorySink("raw", wants_aggregated=False)
    batcher = make_batcher([sink], batch_timeout=0.01)
    frame = signals.declare("FRAME_CAPTURED")
    batcher.connect(frame, signals.job_failed)
    frame.send(Worker(), camera=3, priority="low", data={"source": "a field, not the source"})
    signals.job_failed.send("other", job_id=1, error_message="boom", is_permanent=True, source="s")
    signals.job_started.send("other", job_id=2)  # not connected
    assert batcher.flush(timeout=5).pending == 0
    a, b = sink.events
    assert (a.type, a.worker, a.source, a.priority) == ("FRAME_CAPTURED", "thumbs", "thumbnail_worker", Priority.LOW)
    assert a.data == {"camera": 3, "source": "a field, not the source"}
    assert (b.type, b.worker, b.source, b.data["is_permanent"]) == ("JOB_FAILED", "other", "s", True)


def test_use_batching_false_delivers_every_event_on_its_own(make_batcher):
    sink = MemorySink()
    batcher = make_batcher([sink], use_batching=False, batch_timeout=60)
    for i in range(3):
        batcher.emit(JOB_STARTED, {"job_id": i}, worker="w")
    assert sink.wait_for(3, timeout=5)
    assert [[e.type for e in b] for b in sink.batches] == [[JOB_STARTED]] * 3
    stats = batcher.stats()
    assert stats["batches_created"] == 0 and stats["sinks"]["memory"]["batches_sent"] == 3


def test_stats_report_latency_and_queue(make_batcher):
    sink = MemorySink()
    batcher = make_batcher([sink], batch_timeout=0.05)
    for i in range(20):
        batcher.emit(JOB_STARTED, {"job_id": i}, worker="w")
    assert batcher.flush(timeout=5).pending == 0
    stats = batcher.stats()
    lane = stats["sinks"]["memory"]
    assert stats["events_received"] == 20 and stats["queue_depth"] == 0
    assert 1 <= stats["queue_high_water"] <= 20
    assert lane["events_sent"] == 20 and lane["latency_p50_ms"] is not None
    assert lane["latency_p50_ms"] <= lane["latency_p99_ms"]


def test_two_sinks_with_the_same_name_get_distinct_lanes(make_batcher):
    batcher = make_batcher([MemorySink(), MemorySink()])
    assert list(batcher.stats()["sinks"]) == ["memory", "memory#2"]


def test_a_broken_aggregation_policy_delivers_unmerged_instead_of_stopping(make_batcher, caplog):
    class Broken(AggregationPolicy):
        def aggregate(self, events):
            raise RuntimeError("policy bug")

    sink = MemorySink()
    batcher = make_batcher([sink], aggregation=Broken(), batch_timeout=0.01)
    for i in range(3):
        batcher.emit(JOB_STARTED, {"job_id": i}, worker="w")
    assert batcher.flush(timeout=5).pending == 0
    assert [e.data["job_id"] for e in sink.events] == [0, 1, 2]
    assert "policy bug" in caplog.text
    batcher.emit(JOB_STARTED, {"job_id": 3}, worker="w")  # the flush thread is still alive
    assert sink.wait_for(4, timeout=5)


def test_close_racing_producers_loses_nothing_silently(make_batcher, dead_letter):
    sink = MemorySink("raw", wants_aggregated=False)
    batcher = make_batcher([sink], batch_timeout=0.01, max_queue_size=100_000)
    accepted = [0] * 4
    started = threading.Barrier(5)

    def produce(t: int) -> None:
        started.wait(5)
        while True:
            try:
                batcher.emit("E", {"t": t}, worker=f"w{t}")
            except BatcherClosedError:
                return
            accepted[t] += 1

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    started.wait(5)
    time.sleep(0.05)
    result = batcher.close(timeout=10)
    for t in threads:
        t.join(10)
    stats = batcher.stats()
    # every accepted event was delivered or dead-lettered; none sits in the queue
    assert result.pending == 0 and stats["queue_depth"] == 0
    assert sink.count + len(dead_letter.read()) == sum(accepted)
    assert stats["events_rejected"]["closed"] == 4  # each producer's refused event, counted


def test_a_full_queue_in_block_mode_is_never_raised_into_a_signal_sender(make_batcher):
    policy = _StalledPolicy()
    batcher = make_batcher([MemorySink()], batch_size=1, max_queue_size=2, overflow="block",
                           block_timeout=0.05, aggregation=policy)
    batcher.connect()
    signals.job_started.send("w", job_id=0)
    assert policy.stalled.wait(5)
    results = [signals.job_started.send("w", job_id=n) for n in range(1, 5)]
    assert [value for r in results for _, value in r] == [True, True, False, False]
    assert batcher.stats()["events_dropped"] == {"block_timeout": 2}
    policy.release.set()


def test_a_hung_sink_at_close_is_spooled_once_its_thread_ends_and_the_next_batcher_delivers(
        make_batcher, gate_sink, dead_letter, tmp_path):
    hung = gate_sink("hung")
    batcher = make_batcher([hung], batch_timeout=0.01, use_batching=False, spool_dir=tmp_path / "spool")
    batcher.emit("E", {"n": 0}, worker="w")
    assert hung.entered.wait(5)
    batcher.emit("E", {"n": 1}, worker="w")
    result = batcher.close(timeout=0.3)
    assert (result.failed, result.pending, result.spooled) == (0, 0, 2)
    assert dead_letter.read() == []
    lane = batcher._pipe.lanes[0]
    hung.gate.set()  # the sink returns after all: not counted twice, and the thread ends
    assert lane._thread.join(time.monotonic() + 5)
    assert (lane.delivered, lane.failed, lane.spooled) == (0, 0, 2)
    later = MemorySink("hung")  # the same sink name and spool directory: delivered at start
    make_batcher([later], spool_dir=tmp_path / "spool")
    assert later.wait_for(2, timeout=5)
    assert [e.data["n"] for e in later.events] == [0, 1]
