"""ThreadWorker and SSEBroadcaster through the real signals, batcher and a MemorySink."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from timelapser_workers.sinks import MemorySink
from timelapser_workers import PermanentJobError, RetryPolicy, SSEBroadcaster, ThreadWorker
from timelapser_workers.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_RETRY_SCHEDULED,
    JOB_STARTED,
    WORKER_ERROR,
    WORKER_STARTED,
    WORKER_STATISTICS,
    WORKER_STOPPED,
)


class InboxWorker(ThreadWorker):
    """Jobs are dicts put on an inbox; behaviour per job: 'ok', 'fail', 'fail-once', 'fatal'."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inbox: queue.Queue = queue.Queue()
        self.attempts: dict[int, int] = {}
        self.fetches = 0  # loop iterations run: a test waits for them instead of sleeping

    def fetch_jobs(self, limit):
        self.fetches += 1
        jobs = []
        while len(jobs) < limit:
            try:
                jobs.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return jobs

    def process_job(self, job):
        n = self.attempts[job["id"]] = self.attempts.get(job["id"], 0) + 1
        kind = job.get("kind", "ok")
        if kind == "fatal":
            raise PermanentJobError("corrupt frame")
        if kind == "fail" or (kind == "fail-once" and n == 1):
            raise RuntimeError("disk busy")
        if kind == "slow":
            time.sleep(job["seconds"])

    def queue_length(self):
        return self.inbox.qsize()


@pytest.fixture
def sink():
    return MemorySink("raw", wants_aggregated=False)


def _types(sink, job_id=None):
    return [e.type for e in sink.events if job_id is None or e.data.get("job_id") == job_id]


def test_lifecycle_events_exactly_once_and_stop_while_sleeping_returns_at_once(make_batcher, sink):
    batcher = make_batcher([sink], batch_timeout=0.01)
    worker = InboxWorker("thumbs", interval=30, batcher=batcher)
    worker.start()
    deadline = time.monotonic() + 5
    while WORKER_STARTED not in _types(sink) and time.monotonic() < deadline:
        batcher.flush(1)
    start = time.monotonic()
    assert worker.stop(timeout=5)
    assert time.monotonic() - start < 1.0  # not waiting out the 30 s interval
    batcher.flush(5)
    types = _types(sink)
    assert types.count(WORKER_STARTED) == 1 and types.count(WORKER_STOPPED) == 1
    assert types[0] == WORKER_STARTED and types[-1] == WORKER_STOPPED
    assert not worker.running
    worker.stop(timeout=1)  # idempotent: no second WORKER_STOPPED
    batcher.flush(5)
    assert _types(sink).count(WORKER_STOPPED) == 1


def test_job_success_retry_and_permanent_failure_emit_their_events(make_batcher, sink):
    batcher = make_batcher([sink], batch_timeout=0.01)
    worker = InboxWorker("thumbs", interval=0.01, concurrency=2, batcher=batcher,
                         retry_policy=RetryPolicy(max_attempts=2, delays=[0.05]))
    for job in ({"id": 1}, {"id": 2, "kind": "fail-once"}, {"id": 3, "kind": "fail"}, {"id": 4, "kind": "fatal"}):
        worker.inbox.put(job)
    with worker:
        deadline = time.monotonic() + 10
        while worker.jobs_done + worker.jobs_failed < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    batcher.flush(5)
    assert _types(sink, 1) == [JOB_STARTED, JOB_COMPLETED]
    assert _types(sink, 2) == [JOB_STARTED, JOB_RETRY_SCHEDULED, JOB_STARTED, JOB_COMPLETED]
    assert _types(sink, 3) == [JOB_STARTED, JOB_RETRY_SCHEDULED, JOB_STARTED, JOB_FAILED]
    assert _types(sink, 4) == [JOB_STARTED, JOB_FAILED]
    by = {(e.type, e.data["job_id"]): e for e in sink.events if "job_id" in e.data}
    assert by[(JOB_FAILED, 3)].data["is_permanent"] is True
    assert "disk busy" in by[(JOB_FAILED, 3)].data["error_message"]
    assert by[(JOB_FAILED, 4)].data["is_permanent"] is True
    assert by[(JOB_COMPLETED, 1)].data["processing_time_ms"] >= 0
    assert by[(JOB_RETRY_SCHEDULED, 2)].data["retry_in_seconds"] == 0.05
    assert (worker.jobs_done, worker.jobs_failed, worker.jobs_retried) == (2, 2, 2)
    status = worker.status()
    assert status["running"] is False and "disk busy" in status["last_error"] and status["queue_length"] == 0


def test_concurrency_runs_jobs_at_once(make_batcher, sink):
    batcher = make_batcher([sink], batch_timeout=0.01)
    worker = InboxWorker("thumbs", interval=0.01, concurrency=4, batcher=batcher)
    for i in range(4):
        worker.inbox.put({"id": i, "kind": "slow", "seconds": 0.5})
    start = time.monotonic()
    with worker:
        deadline = time.monotonic() + 10
        while worker.jobs_done < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert worker.jobs_done == 4
    assert time.monotonic() - start < 4 * 0.5  # serial would take 2 s


def test_a_failing_loop_survives_reports_and_backs_off(make_batcher, sink):
    class Broken(InboxWorker):
        calls = 0

        def fetch_jobs(self, limit):
            self.calls += 1
            if self.calls <= 2:
                raise ConnectionError("jobs table unreachable")
            return super().fetch_jobs(limit)

    batcher = make_batcher([sink], batch_timeout=0.01)
    worker = Broken("thumbs", interval=0.01, batcher=batcher)
    worker.inbox.put({"id": 1})
    with worker:
        deadline = time.monotonic() + 10
        while worker.jobs_done < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    batcher.flush(5)
    errors = [e for e in sink.events if e.type == WORKER_ERROR]
    assert len(errors) == 2 and "unreachable" in errors[0].data["error_message"]
    assert errors[1].data["backoff_seconds"] > errors[0].data["backoff_seconds"]
    assert worker.jobs_done == 1


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            return self.now

    def advance(self, seconds):
        with self.lock:
            self.now += seconds


def test_statistics_on_a_fixed_cadence_from_start(make_batcher, sink):
    clock = FakeClock()
    batcher = make_batcher([sink], batch_timeout=0.01)
    worker = InboxWorker("thumbs", interval=0.01, stats_interval=300, batcher=batcher, clock=clock)

    def stats_count():
        batcher.flush(5)
        return _types(sink).count(WORKER_STATISTICS)

    def wait_stats(n):
        deadline = time.monotonic() + 5
        while stats_count() < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return stats_count()

    def iterations(n):  # the worker's loop ran n more times (it fetches once per turn)
        target = worker.fetches + n + 1
        deadline = time.monotonic() + 5
        while worker.fetches < target and time.monotonic() < deadline:
            time.sleep(0.01)
        assert worker.fetches >= target, f"the worker loop ran {worker.fetches} times, not {target}"

    with worker:
        clock.advance(299)
        iterations(10)  # many loop iterations: none may emit statistics yet
        assert stats_count() == 0
        clock.advance(1)
        assert wait_stats(1) == 1
        iterations(10)  # more iterations within the same period: still one
        assert stats_count() == 1
        clock.advance(650)  # two periods passed at once: one snapshot now, next at start + 900
        assert wait_stats(2) == 2
        iterations(10)
        assert stats_count() == 2
        clock.advance(300)
        assert wait_stats(3) == 3
    snapshot = [e for e in sink.events if e.type == WORKER_STATISTICS][-1].data
    assert {"jobs_done", "jobs_failed", "uptime_seconds"} <= snapshot.keys()


def test_broadcaster_seed_api_and_stats_keys(make_batcher):
    agg = MemorySink("agg")
    batcher = make_batcher([agg], batch_timeout=30)
    b = SSEBroadcaster(worker_name="thumbnailworker", event_source="thumbnail_worker", batcher=batcher)
    for job in (123, 124, 125):
        assert b.broadcast_job_started(job) is True
    batcher.flush(5)
    [batch] = agg.events
    assert (batch.type, batch.data["job_ids"], batch.data["batch_count"]) == ("JOBS_BATCH_STARTED", [123, 124, 125], 3)
    assert batch.worker == "thumbnailworker" and batch.source == "thumbnail_worker"
    stats = b.get_broadcast_stats()
    assert {"worker_name", "event_source", "batching_enabled", "failed_broadcast_count",
            "batcher_events_batched", "batcher_events_saved", "batcher_batches_created"} <= stats.keys()
    assert (stats["batcher_events_batched"], stats["batcher_events_saved"], stats["batcher_batches_created"]) == (3, 2, 1)
    assert b.broadcast_job_started(1, frame=object()) is False  # refused, counted, not raised
    assert b.get_broadcast_stats()["failed_broadcast_count"] == 1


def test_broadcaster_without_batching_sends_each_event_alone_on_a_shared_batcher(make_batcher):
    agg = MemorySink("agg")
    batcher = make_batcher([agg], batch_timeout=30)
    batched = SSEBroadcaster(worker_name="a", batcher=batcher)
    alone = SSEBroadcaster(worker_name="b", batcher=batcher, use_batching=False)
    for job in (1, 2, 3):
        alone.broadcast_job_started(job)
    assert agg.wait_for(3, timeout=5), "unbatched events waited for the 30 s window"
    assert [[e.type for e in b] for b in agg.batches] == [["JOB_STARTED"]] * 3
    for job in (1, 2):
        batched.broadcast_job_started(job)
    batcher.flush(5)
    assert agg.events[-1].type == "JOBS_BATCH_STARTED"
    assert alone.get_broadcast_stats()["batching_enabled"] is False


def test_workers_share_one_default_batcher(sink):
    from timelapser_workers import get_default_batcher, set_default_batcher

    old = set_default_batcher(None)
    shared = get_default_batcher()
    try:
        a, b = InboxWorker("a"), InboxWorker("b")
        assert a.broadcaster.batcher is b.broadcaster.batcher is shared
    finally:
        set_default_batcher(old)
        shared.close(timeout=5)  # its threads end here, not at interpreter exit
    assert shared.closed


def test_two_connections_to_one_sender_do_not_duplicate(make_batcher, sink):
    batcher = make_batcher([sink], batch_timeout=0.01)
    b = SSEBroadcaster(worker_name="a", batcher=batcher)
    batcher.connect()  # ANY: replaces the narrower connection
    batcher.connect(sender=b)  # already heard through ANY
    b.broadcast_job_started(1)
    batcher.flush(5)
    assert _types(sink) == [JOB_STARTED]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="concurrency=0"):
        InboxWorker("x", concurrency=0)
    with pytest.raises(ValueError, match="max_attempts=0"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="interval=-1"):
        InboxWorker("x", interval=-1)


def test_rollback_switch_works_with_a_plain_string_sender(make_batcher):
    agg = MemorySink("agg")
    batcher = make_batcher([agg], batch_timeout=30)
    b = SSEBroadcaster(worker_name="thumbs", batcher=batcher, use_batching=False, sender="thumbnailworker")
    for job in (1, 2, 3):
        assert b.broadcast_job_started(job)
    assert agg.wait_for(3, timeout=5)
    assert [[e.type for e in batch] for batch in agg.batches] == [["JOB_STARTED"]] * 3
