"""ThreadWorker.stop(): it wakes the loop at once and lets in-flight jobs finish up to its
timeout (the README); past the timeout it returns False and WORKER_STOPPED says how many jobs
were still running. A real worker, real threads, a MemorySink behind a real batcher."""

from __future__ import annotations

import threading
import time
from typing import Iterator

import pytest

from timelapser_workers import EventBatcher, ThreadWorker
from timelapser_workers.sinks import MemorySink


class _Blocking(ThreadWorker):
    """One job, which runs until ``release`` is set."""

    def __init__(self, **kwargs) -> None:
        super().__init__("blocking", **kwargs)
        self.started = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.handed_out = False

    def fetch_jobs(self, limit):
        if self.handed_out:
            return []
        self.handed_out = True
        return [{"id": 1}]

    def process_job(self, job) -> None:
        self.started.set()
        self.release.wait(30)
        self.finished.set()


@pytest.fixture
def running(make_batcher) -> Iterator[tuple[_Blocking, MemorySink, EventBatcher]]:
    """A _Blocking worker whose one job has started, and where its events go."""
    sink = MemorySink("raw", wants_aggregated=False)
    batcher = make_batcher([sink], batch_timeout=0.01)
    worker = _Blocking(interval=30, batcher=batcher)
    worker.start()
    assert worker.started.wait(5)
    yield worker, sink, batcher
    worker.release.set()
    worker.stop(timeout=5)


def test_stop_lets_an_in_flight_job_finish_within_the_timeout(running) -> None:
    worker, sink, batcher = running
    threading.Timer(0.3, worker.release.set).start()  # the job needs 0.3 s more
    start = time.monotonic()
    assert worker.stop(timeout=10) is True
    took = time.monotonic() - start
    assert worker.finished.is_set() and worker.jobs_done == 1
    assert 0.25 <= took < 5, took  # it waited for the job, not for the 10 s timeout
    assert batcher.flush(timeout=5).pending == 0
    types = [e.type for e in sink.events]
    assert types == ["WORKER_STARTED", "JOB_STARTED", "JOB_COMPLETED", "WORKER_STOPPED"]
    assert sink.events[-1].data["jobs_still_running"] == 0 and sink.events[-1].data["jobs_done"] == 1


def test_stop_returns_at_its_timeout_and_says_what_was_still_running(running) -> None:
    worker, sink, batcher = running
    start = time.monotonic()
    try:
        stopped = worker.stop(timeout=0.3)
        took = time.monotonic() - start
        assert not worker.finished.is_set()
        assert stopped is False  # not everything finished in time
        assert 0.29 <= took < 0.3 + 0.5, took
        assert worker.join(5)  # the loop itself ends at the timeout; the job is left running
        assert batcher.flush(timeout=5).pending == 0
        [stopped_event] = [e for e in sink.events if e.type == "WORKER_STOPPED"]
        assert stopped_event.data["jobs_still_running"] == 1 and worker.jobs_done == 0
    finally:
        worker.release.set()
    assert worker.finished.wait(5)
