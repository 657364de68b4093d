"""SinkLane: one sink's own queue and thread, with retries, dead letters and delivery stats.

The flush thread hands batches to each lane without ever waiting: a slow, failing or hung
sink fills only its own lane (a WorkQueue bounded in events; when it is full its oldest
batches go to the batcher's dead-letter thread) and delays nobody else. Retries use tenacity: ``max_retries`` after the first attempt,
exponential backoff from ``retry_delay`` with jitter, capped at ``retry_max_delay``; the waits
end early when the batcher shuts down.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Sequence

import tenacity

from timelapser_workers.backoff import exponential_wait
from timelapser_workers.deadletter import DeadLetterWriter
from timelapser_workers.errors import PermanentSinkError
from timelapser_workers.events import Event
from timelapser_workers.threads import DaemonThread, WorkQueue

__all__ = ["SinkLane", "LaneBatch", "Marker", "close_lanes"]

logger = logging.getLogger(__name__)

_LATENCY_SAMPLES = 8192


class LaneBatch:
    """What one send() carries: the events, and how many original events they stand for."""

    __slots__ = ("events", "count")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self.count = sum(e.batch_count for e in events)


class Marker:
    """A place in a lane's queue; set when the lane has finished everything before it."""

    __slots__ = ("target", "done", "delivered", "failed")

    def __init__(self, target: int) -> None:
        self.target = target  # the lane's enqueued count when the marker was placed
        self.done = threading.Event()
        self.delivered = 0
        self.failed = 0


_STOP = object()


class _StopAtDeadline(tenacity.stop.stop_base):
    """Stop retrying once the lane's shutdown deadline (if any) has passed."""

    def __init__(self, lane: "SinkLane") -> None:
        self.lane = lane

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        deadline = self.lane._deadline
        return deadline is not None and time.monotonic() >= deadline


class SinkLane:
    """Deliver batches to one sink from one thread, in order. Built by EventBatcher."""

    def __init__(
        self,
        sink: Any,
        name: str,
        *,
        max_retries: int,
        retry_delay: float,
        retry_max_delay: float,
        max_events: int,
        dead_letter: DeadLetterWriter,
    ) -> None:
        self.sink = sink
        self.name = name
        self.wants_aggregated = bool(getattr(sink, "wants_aggregated", True))
        self.max_retries = max_retries
        self.retry_delay = retry_delay
        self.retry_max_delay = retry_max_delay
        self.max_events = max_events
        self.dead_letter = dead_letter
        self._queue: WorkQueue[Any] = WorkQueue(max_events)
        self._deadline: float | None = None
        self._wake = threading.Event()  # set on shutdown: retry waits end at once
        self._thread = DaemonThread(f"timelapser-lane-{name}", self._run)
        self._in_flight: LaneBatch | None = None
        self._abandoned: LaneBatch | None = None  # dead-lettered at the shutdown deadline
        # counters, in original events unless named batches; written by the lane thread
        # except enqueued/dropped (the flush thread), read anywhere
        self.enqueued = 0
        self.delivered = 0
        self.failed = 0  # dead-lettered: permanent errors, retries exhausted, lane full, shutdown
        self.batches_sent = 0
        self.retries = 0
        self.send_errors = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self.latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max_retries + 1) | _StopAtDeadline(self),
            # retry_delay, 2x, 4x ... capped at retry_max_delay, plus up to retry_delay of jitter
            wait=exponential_wait(retry_delay, retry_max_delay, jitter=retry_delay),
            retry=tenacity.retry_if_not_exception_type(PermanentSinkError),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )

    # --- called by the flush thread (never blocks on the sink) ---------------------------
    def put(self, batch: LaneBatch) -> None:
        """Queue a batch; if the lane is over its bound, dead-letter its oldest batches."""
        with self._queue.cond:
            self.enqueued += batch.count
        overflow: list[LaneBatch] = []
        while not self._queue.put(batch, batch.count, deadline=0.0):
            # the oldest other batch; a lone batch larger than the bound still goes through
            oldest = self._queue.remove_first(lambda item: isinstance(item, LaneBatch))
            if oldest is None:
                break
            overflow.append(oldest)
        for dropped in overflow:  # handed to the dead-letter thread: no I/O here
            self.dropped["lane_full"] += dropped.count
            self._dead_letter(dropped.events, "lane_full", None)
            with self._queue.cond:
                self.failed += dropped.count

    def put_marker(self, marker: Marker) -> None:
        with self._queue.cond:
            marker.target = self.enqueued
            self._queue.put(marker)

    def start(self) -> None:
        self._thread.start()

    # --- the lane thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._queue.cond:  # taken and in flight at once: join() sees it either way
                item = self._queue.get()
                if isinstance(item, LaneBatch):
                    self._in_flight = item
            if item is _STOP:
                return
            if isinstance(item, Marker):
                item.delivered, item.failed = self.delivered, self.failed
                item.done.set()
                continue
            self._deliver(item)
            self._in_flight = None

    def _deliver(self, batch: LaneBatch) -> None:
        events = batch.events
        try:
            self._retrying(self.sink.send, events)
        except PermanentSinkError as exc:
            self._note_error(exc)
            bad = _subset(exc.events, events)
            bad_count = sum(e.batch_count for e in bad)
            self._dead_letter(bad, "permanent_error", exc)
            self._finish(batch, delivered=batch.count - bad_count, failed=bad_count)
        except Exception as exc:  # retries exhausted (or the shutdown deadline passed)
            self._note_error(exc)
            self._dead_letter(events, "retries_exhausted", exc)
            self._finish(batch, delivered=0, failed=batch.count)
        else:
            now = time.monotonic()
            self.latencies.extend(now - m.created_mono for e in events for m in (e.members or (e,)))
            self._finish(batch, delivered=batch.count, failed=0)

    def _finish(self, batch: LaneBatch, *, delivered: int, failed: int) -> None:
        if batch is self._abandoned:  # counted (and dead-lettered) at the shutdown deadline
            logger.warning(
                "sink %r finished a batch of %d event(s) after the shutdown deadline had "
                "dead-lettered it (%d delivered): replaying the dead letter may repeat them",
                self.name, batch.count, delivered,
            )
            return
        with self._queue.cond:
            self.batches_sent += 1 if delivered else 0
            self.delivered += delivered
            self.failed += failed

    def _sleep(self, seconds: float) -> None:
        deadline = self._deadline
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        self._wake.wait(seconds)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        self._note_error(exc)
        logger.info(
            "sink %r failed (attempt %d of %d), retrying: %s",
            self.name, state.attempt_number, self.max_retries + 1, self.last_error,
        )

    def _note_error(self, exc: BaseException | None) -> None:
        self.send_errors += 1
        if exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _dead_letter(self, events: Sequence[Event], reason: str, error: BaseException | None) -> None:
        if events:
            self.dead_letter.submit(events, self.name, reason, error)

    # --- shutdown ------------------------------------------------------------------------
    def stop(self, deadline: float) -> None:
        """Ask the lane to finish what it holds by ``deadline``; waits end early from now on."""
        self._deadline = deadline
        self._wake.set()
        self._queue.put(_STOP)

    def join(self, deadline: float) -> bool:
        """Wait for the lane thread until ``deadline``. If it is still busy (a hung sink),
        dead-letter what it still holds ('shutdown_timeout'), the batch in flight included,
        and return False. The thread ends by itself if the sink ever returns."""
        if self._thread.join(deadline):
            return True
        # _STOP stays queued: the thread still ends after the send
        left = self._queue.remove_all(lambda item: isinstance(item, LaneBatch))
        with self._queue.cond:
            in_flight = self._in_flight
            self._abandoned = in_flight
        held = ([in_flight] if in_flight is not None else []) + left
        for batch in held:
            self._dead_letter(batch.events, "shutdown_timeout", None)
            self.dropped["shutdown_timeout"] += batch.count
            with self._queue.cond:
                self.failed += batch.count
        logger.warning(
            "sink %r did not finish within the shutdown deadline; the %d event(s) it held were "
            "dead-lettered", self.name, sum(b.count for b in held),
        )
        return False

    def close_sink(self, deadline: float) -> None:
        close = getattr(self.sink, "close", None)
        if close is None:
            return
        try:
            close(max(0.0, deadline - time.monotonic()))
        except Exception:
            logger.exception("closing sink %r failed", self.name)

    # --- stats ---------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events enqueued and not yet delivered or dead-lettered."""
        return max(0, self.enqueued - self.delivered - self.failed)

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "batches_sent": self.batches_sent,
            "events_sent": self.delivered,
            "retries": self.retries,
            "failures": self.send_errors,
            "dead_lettered": self.failed,
            "dropped": dict(self.dropped),
            "pending": self.pending,
            "last_error": self.last_error,
            "latency_p50_ms": _percentile(lat, 0.50),
            "latency_p99_ms": _percentile(lat, 0.99),
        }


def close_lanes(lanes: Sequence[SinkLane], deadline: float) -> None:
    """Stop every lane, let each finish by ``deadline`` (what a hung one holds is dead-lettered),
    then close the sinks of those that finished."""
    for lane in lanes:
        lane.stop(deadline)
    for lane in lanes:
        if lane.join(deadline):
            lane.close_sink(deadline)
        else:
            logger.warning("sink %r still busy at the deadline; not closed", lane.name)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return round(sorted_values[index] * 1000.0, 3)


def _subset(named: Any, events: Sequence[Event]) -> Sequence[Event]:
    """The events a PermanentSinkError names (by Event or id), or all when it names none."""
    if not named:
        return events
    ids = {e.id if isinstance(e, Event) else e for e in named}
    # an aggregated event is picked when it or one of its members is named
    picked = [e for e in events if e.id in ids or any(m.id in ids for m in e.members)]
    return picked or events
