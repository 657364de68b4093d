"""ThreadWorker: a polling worker on its own thread, with concurrency, retries and lifecycle
events, that users subclass with two methods.

    class ThumbnailWorker(ThreadWorker):
        def fetch_jobs(self, limit):            # up to `limit` pending jobs (any objects)
            return inbox.take(limit)
        def process_job(self, job):             # raise to fail; returns are ignored
            make_thumbnail(job.path)

Every job emits JOB_STARTED, then JOB_COMPLETED (``processing_time_ms``) or
JOB_RETRY_SCHEDULED / JOB_FAILED (``error_message``, ``is_permanent``). The worker emits
WORKER_STARTED and WORKER_STOPPED exactly once each, WORKER_ERROR when its own loop fails
(it backs off and goes on), and WORKER_STATISTICS every ``stats_interval`` seconds from start.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import Any, Callable, Iterable, Sequence

from timelapser_workers.backoff import Backoff, exponential_wait
from timelapser_workers.batcher import EventBatcher
from timelapser_workers.broadcaster import SSEBroadcaster

__all__ = ["ThreadWorker", "RetryPolicy", "PermanentJobError"]

logger = logging.getLogger(__name__)


class PermanentJobError(Exception):
    """Raise from process_job for a failure that retrying cannot fix (bad input file ...)."""


class RetryPolicy:
    """How failed jobs are retried: ``max_attempts`` in all, waiting ``delays[i]`` seconds
    before attempt i+2 (the last delay repeats). ``max_attempts=1`` never retries."""

    def __init__(self, max_attempts: int = 3, delays: Sequence[float] = (1.0, 5.0, 30.0)) -> None:
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
            raise ValueError(f"max_attempts={max_attempts!r} must be an integer >= 1")
        delays = tuple(delays)
        if not delays or any(
            isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0 for d in delays
        ):
            raise ValueError(f"delays={delays!r} must be a non-empty sequence of seconds >= 0")
        self.max_attempts = max_attempts
        self.delays = delays

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before ``attempt`` (2, 3, ...)."""
        return float(self.delays[min(attempt - 2, len(self.delays) - 1)])


def _positive(name: str, value: Any, *, integer: bool = False) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a {'whole ' if integer else ''}number > 0")
    return value


class ThreadWorker:
    """Subclass and implement :meth:`fetch_jobs` and :meth:`process_job`.

    ``interval``: seconds between polls when there was nothing (more) to do. ``concurrency``:
    jobs run at once. ``stats_interval``: seconds between WORKER_STATISTICS, from start.
    ``batcher``: defaults to the process-wide shared one. ``clock``: a monotonic clock
    (injectable for tests of the statistics cadence).
    """

    #: default name and event source; override in the subclass or pass to __init__
    name: str = ""
    event_source: str | None = None
    max_error_backoff: float = 30.0

    def __init__(
        self,
        name: str | None = None,
        *,
        interval: float = 1.0,
        concurrency: int = 1,
        retry_policy: RetryPolicy | None = None,
        stats_interval: float = 300.0,
        event_source: str | None = None,
        use_batching: bool = True,
        batcher: EventBatcher | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name or self.name or type(self).__name__.lower()
        self.event_source = event_source or self.event_source or self.name
        self.interval = float(_positive("interval", interval))
        self.concurrency: int = _positive("concurrency", concurrency, integer=True)
        self.stats_interval = float(_positive("stats_interval", stats_interval))
        self.retry_policy = retry_policy or RetryPolicy()
        self.use_batching = use_batching
        self.clock = clock
        self.broadcaster = SSEBroadcaster(
            worker_name=self.name, event_source=self.event_source,
            use_batching=use_batching, batcher=batcher, sender=self,
        )
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: set[Future[Any]] = set()
        self._retries: list[tuple[float, int, Any, int]] = []  # (due, seq, job, next attempt)
        self._seq = itertools.count()
        self._started_at: float | None = None
        self._stop_deadline: float | None = None  # time.monotonic(), set by stop()
        self._left_running = 0  # jobs still running when the loop ended (past stop's timeout)
        self.jobs_done = 0
        self.jobs_failed = 0
        self.jobs_retried = 0
        self.last_error: str | None = None

    # --- what a subclass supplies ----------------------------------------------------------
    def fetch_jobs(self, limit: int) -> Iterable[Any]:
        """Return up to ``limit`` pending jobs (an empty iterable when there are none)."""
        raise NotImplementedError(f"{type(self).__name__} must implement fetch_jobs(limit)")

    def process_job(self, job: Any) -> None:
        """Do one job; raise to fail it (PermanentJobError: no retry)."""
        raise NotImplementedError(f"{type(self).__name__} must implement process_job(job)")

    def job_id(self, job: Any) -> Any:
        """The id put in events: ``job.id``, ``job['id']``, or the job itself if it is a scalar."""
        if isinstance(job, dict):
            return job.get("id")
        jid = getattr(job, "id", None)
        if jid is not None:
            return jid
        return job if isinstance(job, (str, int)) else None

    def queue_length(self) -> int | None:
        """Jobs waiting, if the worker knows (shown in status()); None when unknown."""
        return None

    def statistics(self) -> dict[str, Any]:
        """The WORKER_STATISTICS payload; extend it in a subclass with super()."""
        return {
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "jobs_retried": self.jobs_retried,
            "in_flight": len(self._in_flight),
            "retries_waiting": len(self._retries),
            "uptime_seconds": self.uptime,
        }

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ThreadWorker":
        """Start the loop on its own thread (once)."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"worker {self.name!r} was already started")
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix=f"{self.name}-job")
            self._started_at = self.clock()
            self._thread = threading.Thread(target=self._run, name=f"worker-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop at once (no waiting out an interval); let in-flight jobs finish for up to
        ``timeout`` seconds. True if everything finished in time."""
        deadline = time.monotonic() + timeout
        if self._stop_deadline is None or deadline < self._stop_deadline:
            self._stop_deadline = deadline
        self._stopping.set()
        self._wake.set()
        ended = self.join(max(0.0, deadline - time.monotonic()))
        return ended and not self._left_running

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the loop (and its in-flight jobs) to end; False if ``timeout`` passed."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def __enter__(self) -> "ThreadWorker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def uptime(self) -> float:
        return 0.0 if self._started_at is None else round(self.clock() - self._started_at, 3)

    def status(self) -> dict[str, Any]:
        """A health summary: running, counts, last error, uptime, queue length if known."""
        return {
            "name": self.name,
            "running": self.running,
            "jobs_done": self.jobs_done,
            "jobs_failed": self.jobs_failed,
            "jobs_retried": self.jobs_retried,
            "in_flight": len(self._in_flight),
            "last_error": self.last_error,
            "uptime_seconds": self.uptime,
            "queue_length": self.queue_length(),
        }

    # --- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._pool is not None and self._started_at is not None
        self.broadcaster.broadcast_worker_started(concurrency=self.concurrency, interval=self.interval)
        next_stats = self._started_at + self.stats_interval
        errors = Backoff(exponential_wait(self.interval, self.max_error_backoff))
        try:
            while not self._stopping.is_set():
                busy, backoff = False, self.interval
                try:
                    busy = self._poll()
                    errors.reset()
                except Exception as exc:  # the loop itself failed (fetch_jobs raised ...)
                    backoff = errors.next_delay()  # interval, 2x, 4x ... up to max_error_backoff
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    logger.exception("worker %r loop failed; backing off %.1fs", self.name, backoff)
                    self.broadcaster.broadcast_worker_error(self.last_error, backoff_seconds=backoff)
                now = self.clock()
                if now >= next_stats:
                    self.broadcaster.broadcast_worker_statistics(self.statistics())
                    while next_stats <= now:  # a fixed cadence from start, missed ticks skipped
                        next_stats += self.stats_interval
                wait = 0.0 if busy else backoff
                wait = min(wait, max(0.0, next_stats - now))
                with self._lock:
                    if self._retries:
                        wait = min(wait, max(0.0, self._retries[0][0] - now))
                self._wake.wait(wait)
                self._wake.clear()
        finally:
            self._finish()

    def _finish(self) -> None:
        """Let in-flight jobs end until the stop deadline, say what was abandoned, stop once."""
        assert self._pool is not None
        deadline = self._stop_deadline if self._stop_deadline is not None else time.monotonic()
        with self._lock:
            in_flight = set(self._in_flight)
        _, still_running = wait_futures(in_flight, timeout=max(0.0, deadline - time.monotonic()))
        self._left_running = len(still_running)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            retries, self._retries = self._retries, []
        for _, _, job, attempt in retries:  # a retry that will now never run is a failure
            with self._lock:
                self.jobs_failed += 1
            self.broadcaster.broadcast_job_failed(
                self.job_id(job), "worker stopped before the retry was due",
                is_permanent=False, attempt=attempt - 1,
            )
        self.broadcaster.broadcast_worker_stopped(
            jobs_done=self.jobs_done, jobs_failed=self.jobs_failed,
            jobs_still_running=len(still_running), uptime_seconds=self.uptime,
        )
        self.broadcaster.shutdown(timeout=max(0.0, deadline - time.monotonic()))

    def _poll(self) -> bool:
        """Start due retries and new jobs up to the free slots; True if it should poll again
        at once (slots were filled and more work may be waiting)."""
        assert self._pool is not None
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return False  # a finishing job wakes the loop
        now = self.clock()
        started = 0
        while started < free:
            with self._lock:
                if not self._retries or self._retries[0][0] > now:
                    break
                _, _, job, attempt = heapq.heappop(self._retries)
            self._launch(job, attempt)
            started += 1
        if started < free:
            for job in itertools.islice(self.fetch_jobs(free - started) or (), free - started):
                self._launch(job, 1)
                started += 1
        return started == free

    def _launch(self, job: Any, attempt: int) -> None:
        assert self._pool is not None
        future = self._pool.submit(self._do_job, job, attempt)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._job_finished)

    def _job_finished(self, future: Future[Any]) -> None:
        with self._lock:
            self._in_flight.discard(future)
        self._wake.set()

    def _do_job(self, job: Any, attempt: int) -> None:
        job_id = self.job_id(job)
        self.broadcaster.broadcast_job_started(job_id, attempt=attempt)
        started = time.perf_counter()
        try:
            self.process_job(job)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            self.last_error = error
            permanent = isinstance(exc, PermanentJobError) or attempt >= self.retry_policy.max_attempts
            if permanent or self._stopping.is_set():
                with self._lock:
                    self.jobs_failed += 1
                self.broadcaster.broadcast_job_failed(
                    job_id, error, is_permanent=permanent, attempt=attempt
                )
                return
            delay = self.retry_policy.delay_before(attempt + 1)
            with self._lock:
                self.jobs_retried += 1
                heapq.heappush(self._retries, (self.clock() + delay, next(self._seq), job, attempt + 1))
            self.broadcaster.broadcast_job_retry_scheduled(
                job_id, attempt=attempt + 1, retry_in_seconds=delay, error_message=error
            )
            return
        elapsed_ms = round((time.perf_counter() - started) * 1000.0, 3)
        with self._lock:
            self.jobs_done += 1
        self.broadcaster.broadcast_job_completed(job_id, elapsed_ms, attempt=attempt)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} running={self.running}>"
