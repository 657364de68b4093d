"""What producers get, as the README promises it: no producer ever waits on a sink's I/O,
add_sink() on a running batcher (and on the shared default one), use_batching=False on one
signal send, JOB_FAILED aggregated into JOBS_BATCH_FAILED, and WORKER_ERROR and
WORKER_STATISTICS never merged. Through the real signals, batcher and sinks."""

from __future__ import annotations

import threading
import time

import pytest

from timelapser_workers import BatcherClosedError, signals
from timelapser_workers.sinks import MemorySink

OFFERED = 30_000


@pytest.mark.parametrize("send_timeout", [30.0, 0.2], ids=["slow-healthy", "hung"])
def test_no_producer_waits_on_a_sink_that_never_returns(make_batcher, gate_sink, dead_letter, send_timeout) -> None:
    """The sink's send() blocks for the whole test. Producers, through emit() and through a
    signal, still finish everything they offer: what does not fit is dropped and counted
    (drop_newest), never waited for. A sink slower than the producers holds them back only
    with overflow='block', which this is not."""
    stuck = gate_sink("stuck")
    # spool_max_bytes=0: an isolated sink's events are dead-lettered, so they can be counted here
    batcher = make_batcher([stuck], spool_max_bytes=0, batch_size=50, batch_timeout=0.01, max_queue_size=1000,
                           lane_max_events=1000, send_timeout=send_timeout)
    batcher.connect()
    batcher.emit("E", {"n": -1}, worker="first")
    assert stuck.entered.wait(5)  # from here on the sink is inside send() and stays there
    offered = 1
    deadline = time.monotonic() + 10
    while send_timeout < 1 and batcher.stats()["sinks"]["stuck"]["state"] != "hung":
        assert time.monotonic() < deadline, "the lane never noticed the hung send"
        batcher.emit("E", {"n": -1}, worker="first")  # a flush meets the lane: it checks the send
        offered += 1
        time.sleep(0.02)
    slowest = [0.0, 0.0]

    def produce(t: int) -> None:
        for n in range(OFFERED // 2):
            start = time.monotonic()
            if t == 0:
                batcher.emit("JOB_STARTED", {"job_id": n}, worker="emit")
            else:
                signals.job_started.send("signal", job_id=n)
            slowest[t] = max(slowest[t], time.monotonic() - start)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert stuck.count == 0 and not stuck.gate.is_set()  # the sink never returned meanwhile
    assert max(slowest) < 1.0, slowest  # waiting on the sink would have meant the gate's 60 s
    stats = batcher.stats()
    dropped = sum(stats["events_dropped"].values())
    assert set(stats["events_dropped"]) <= {"drop_newest"} and dropped > 0
    stuck.gate.set()
    assert batcher.flush(timeout=30).pending == 0
    delivered = {e.id for e in stuck.raw_events}
    dead = {item["id"] for r in dead_letter.read() for item in r["event"]["data"].get("items", [r["event"]])}
    # every offered event: delivered, dead-lettered (hung: isolated) or dropped at the edge,
    # counted (the batch in flight when the lane was isolated is in both places: the README says so)
    assert len(delivered | dead) + dropped == OFFERED + offered, (len(delivered), len(dead), dropped)
    assert bool(dead) == (send_timeout < 1) and len(delivered & dead) <= 1


def test_add_sink_on_a_running_batcher_and_on_the_default_one(make_batcher) -> None:
    from timelapser_workers import ThreadWorker, get_default_batcher, set_default_batcher

    batcher = make_batcher([], batch_timeout=0.01)
    batcher.emit("E", {"n": 0}, worker="w")  # nowhere to go yet: counted, not silent
    assert batcher.flush(timeout=5).pending == 0
    assert batcher.stats()["events_dropped"] == {"no_sinks": 1}
    first = MemorySink("first")
    batcher.add_sink(first)  # the flush thread runs already: the new lane starts at once
    for n in (1, 2):
        batcher.emit("E", {"n": n}, worker="w")
    assert batcher.flush(timeout=5).pending == 0
    second = MemorySink("second")
    batcher.add_sink(second)
    batcher.emit("E", {"n": 3}, worker="w")
    assert batcher.flush(timeout=5).pending == 0
    assert [e.data["n"] for e in first.raw_events] == [1, 2, 3]
    assert [e.data["n"] for e in second.raw_events] == [3]  # from when it was added
    assert list(batcher.stats()["sinks"]) == ["first", "second"]
    with pytest.raises(TypeError, match="no send"):
        batcher.add_sink(object())  # type: ignore[arg-type]
    batcher.close(timeout=5)
    with pytest.raises(BatcherClosedError, match="'third'"):
        batcher.add_sink(MemorySink("third"))

    class Once(ThreadWorker):
        def fetch_jobs(self, limit):
            return [] if self.jobs_done else [{"id": 7}]

        def process_job(self, job):
            pass

    old = set_default_batcher(None)
    shared = get_default_batcher(dead_letter_path="dead.jsonl", batch_timeout=0.01)  # in tmp_path
    try:
        sink = MemorySink("shared", wants_aggregated=False)
        shared.add_sink(sink)  # "give it sinks with add_sink()"
        with Once("once", interval=0.01):  # no batcher given: the shared default one
            assert sink.wait_for(3, timeout=5)
    finally:
        set_default_batcher(old)
        shared.close(timeout=5)
    assert [e.type for e in sink.events][:3] == ["WORKER_STARTED", "JOB_STARTED", "JOB_COMPLETED"]
    assert [e.type for e in sink.events][-1] == "WORKER_STOPPED"


def test_use_batching_false_on_one_signal_send_delivers_that_event_alone(make_batcher) -> None:
    sink = MemorySink()  # aggregates
    batcher = make_batcher([sink], batch_timeout=30)
    batcher.connect()
    signals.job_started.send("thumbs", job_id=1)
    signals.job_started.send("thumbs", job_id=2)
    signals.job_failed.send("thumbs", job_id=3, error_message="disk full", use_batching=False)
    # within the 30 s window: the unbatched event went at once, after what its worker had pending
    assert sink.wait_for(3, timeout=5), "the unbatched event waited for the batching window"
    assert [[(e.type, e.data.get("job_ids", e.data.get("job_id"))) for e in b] for b in sink.batches] == [
        [("JOBS_BATCH_STARTED", [1, 2])], [("JOB_FAILED", 3)]]
    assert "use_batching" not in sink.events[-1].data
    signals.job_started.send("thumbs", job_id=4)  # the next send is batched again: only
    result = batcher.flush(timeout=5)  # the flush delivers it (delivered before: 0 here)
    assert (result.delivered, result.pending, sink.count) == (1, 0, 4)


def test_job_failed_events_aggregate_into_jobs_batch_failed(make_batcher) -> None:
    sink = MemorySink()
    batcher = make_batcher([sink], batch_timeout=30)
    batcher.connect()
    for job_id in (11, 12, 13):
        signals.job_failed.send("overlay", job_id=job_id, error_message=f"bad frame {job_id}", is_permanent=True)
    assert batcher.flush(timeout=5).pending == 0
    [event] = sink.events
    assert (event.type, event.data["job_ids"], event.data["batch_count"]) == ("JOBS_BATCH_FAILED", [11, 12, 13], 3)
    assert [item["data"]["error_message"] for item in event.data["items"]] == ["bad frame 11", "bad frame 12", "bad frame 13"]
    assert all(item["data"]["is_permanent"] is True for item in event.data["items"])


def test_worker_error_and_statistics_never_merge(make_batcher) -> None:
    sink = MemorySink()
    batcher = make_batcher([sink], batch_timeout=30)
    batcher.connect()
    for n in range(3):
        signals.worker_error.send("capture", error_message=f"camera {n} offline", backoff_seconds=n)
        signals.worker_statistics.send("capture", jobs_done=n)
        signals.job_started.send("capture", job_id=n)
    assert batcher.flush(timeout=5).pending == 0  # one flush: all nine together
    types = [e.type for e in sink.events]
    assert types.count("WORKER_ERROR") == 3 and types.count("WORKER_STATISTICS") == 3
    assert types.count("JOBS_BATCH_STARTED") == 1  # the jobs did merge, in the same flush
    errors = [e for e in sink.events if e.type == "WORKER_ERROR"]
    assert [e.data["error_message"] for e in errors] == [f"camera {n} offline" for n in range(3)]
    assert all(e.batch_count == 1 and "items" not in e.data for e in errors)
