"""SinkLane: one sink's own queue and thread, with retries, isolation, dead letters and stats.

A lane is in one of three states, and its state decides what a full lane does to the flush
thread that hands it a batch:

- ``healthy`` (the sink answers, however slowly): the flush thread waits for room. It stops
  taking from the ingress meanwhile, so the ingress fills and its overflow policy decides
  (``block``: producers wait). A slow sink slows intake instead of losing events.
- ``failing`` (a batch spent its retries): the sink is isolated. Batches that do not fit go
  to the dead letter at once; queued ones get one attempt each, until one succeeds and the
  lane is healthy again.
- ``hung`` (one ``send`` has lasted longer than ``send_timeout``): the sink is isolated. What
  it holds, the batch in flight included, goes to the dead letter; so does every new batch
  until the send returns.

Retries use tenacity: ``max_retries`` after the first attempt, exponential backoff from
``retry_delay`` with jitter, capped at ``retry_max_delay``, ended early by the shutdown
deadline. Any exception from a sink, BaseException included, is a failed send: the lane
thread never dies. On stop, the lane thread closes its sink itself (under the deadline).
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
from timelapser_workers.threads import DaemonThread, WorkQueue, remaining

__all__ = ["SinkLane", "LaneBatch", "Marker", "close_lanes", "HEALTHY", "FAILING", "HUNG"]

logger = logging.getLogger(__name__)

HEALTHY, FAILING, HUNG = "healthy", "failing", "hung"
_LATENCY_SAMPLES = 8192


class LaneBatch:
    """What one send() carries: the events (a tuple: no sink can change what another sees),
    and how many original events they stand for."""

    __slots__ = ("events", "count")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events: tuple[Event, ...] = tuple(events)
        self.count = sum(e.batch_count for e in self.events)


class Marker:
    """A place in a lane's queue; set when the lane has finished everything before it."""

    __slots__ = ("target", "done", "delivered", "failed")

    def __init__(self, target: int) -> None:
        self.target = target  # the lane's enqueued count when the marker was placed
        self.done = threading.Event()
        self.delivered = 0
        self.failed = 0


_STOP = object()


class _StopRetrying(tenacity.stop.stop_base):
    """No more attempts once the lane is failing (one try each), its batch was dead-lettered
    (hung), or the shutdown deadline has passed."""

    def __init__(self, lane: "SinkLane") -> None:
        self.lane = lane

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        lane, deadline = self.lane, self.lane._deadline
        if lane.state == FAILING or lane._in_flight is lane._abandoned:  # one try; or dead-lettered
            return True
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
        send_timeout: float,
        dead_letter: DeadLetterWriter,
    ) -> None:
        self.sink = sink
        self.name = name
        self.wants_aggregated = bool(getattr(sink, "wants_aggregated", True))
        self.max_retries = max_retries
        self.send_timeout = send_timeout
        self.dead_letter = dead_letter
        self.state = HEALTHY
        self._queue: WorkQueue[Any] = WorkQueue(max_events)
        self._deadline: float | None = None  # the shutdown deadline: waits end there
        self._wake = threading.Event()  # set on shutdown: retry waits end at once
        self._stop_sent = False
        self._thread = DaemonThread(f"timelapser-lane-{name}", self._run)
        self._in_flight: LaneBatch | None = None
        self._send_started: float | None = None  # monotonic start of the send in progress
        self._abandoned: LaneBatch | None = None  # dead-lettered while still in flight
        self._check_every = min(0.25, send_timeout / 4)
        # counters, in original events unless named batches; written under the queue's lock
        self.enqueued = 0
        self.delivered = 0
        self.failed = 0  # dead-lettered: permanent errors, retries spent, isolated, shutdown
        self.batches_sent = 0
        self.retries = 0
        self.send_errors = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self.latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max_retries + 1) | _StopRetrying(self),
            wait=exponential_wait(retry_delay, retry_max_delay, jitter=retry_delay),
            retry=tenacity.retry_if_not_exception_type(PermanentSinkError),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )

    # --- called by the flush thread -------------------------------------------------------
    def put(self, batch: LaneBatch) -> None:
        """Queue ``batch``. While the lane is healthy and full, wait for room (backpressure);
        a failing or hung lane, or the passed shutdown deadline, sends it to the dead letter."""
        with self._queue.cond:
            self.enqueued += batch.count
        while True:
            self._check_hung()
            if self.state == HUNG:
                self._divert([batch], "sink_hung")
                return
            healthy = self.state == HEALTHY
            wait_until = 0.0
            if healthy:
                wait_until = time.monotonic() + self._check_every
                if self._deadline is not None:
                    wait_until = min(wait_until, self._deadline)
            if self._queue.put(batch, batch.count, deadline=wait_until):
                return
            if not healthy:
                self._divert([batch], "sink_failing")
                return
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._divert([batch], "shutdown_timeout")
                return

    def put_marker(self, marker: Marker) -> None:
        with self._queue.cond:
            marker.target = self.enqueued
            if self.state == HUNG:  # everything before it went to the dead letter already
                self._reach(marker)
            else:
                self._queue.put(marker)

    def _reach(self, marker: Marker) -> None:
        marker.delivered, marker.failed = self.delivered, self.failed
        marker.done.set()

    def start(self) -> None:
        self._thread.start()

    def _check_hung(self) -> None:
        started = self._send_started
        if started is None or self.state == HUNG or time.monotonic() - started <= self.send_timeout:
            return
        with self._queue.cond:
            if self.state == HUNG or self._send_started != started:
                return
            self.state = HUNG
        logger.error("sink %r has been in one send for more than send_timeout=%.1fs: isolated; its "
                     "events go to the dead letter until the send returns", self.name, self.send_timeout)
        self._abandon("sink_hung")

    def _abandon(self, reason: str) -> int:
        """Dead-letter what the lane holds, the batch in flight included; return the count."""
        with self._queue.cond:
            held = self._queue.remove_all(lambda item: isinstance(item, LaneBatch))
            markers = self._queue.remove_all(lambda item: isinstance(item, Marker))
            in_flight = self._in_flight
            if in_flight is not None and in_flight is not self._abandoned:
                self._abandoned = in_flight
                held.insert(0, in_flight)
        self._divert(held, reason)
        with self._queue.cond:
            for marker in markers:  # what they wait for has just been dead-lettered
                self._reach(marker)
        return sum(b.count for b in held)

    def _divert(self, batches: Sequence[LaneBatch], reason: str) -> None:
        """Count ``batches`` as failed and hand them to the dead-letter thread."""
        for batch in batches:
            with self._queue.cond:
                self.failed += batch.count
                self.dropped[reason] += batch.count
            self._dead_letter(batch.events, reason, None)

    # --- the lane thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._queue.cond:  # taken and in flight at once: _abandon() sees it either way
                item = self._queue.get()
                if isinstance(item, LaneBatch):
                    self._in_flight = item
            if item is _STOP:
                self._close_sink()
                return
            if isinstance(item, Marker):
                with self._queue.cond:
                    self._reach(item)
                continue
            self._deliver(item)
            with self._queue.cond:
                self._in_flight = None

    def _send(self, events: Sequence[Event]) -> None:
        self._send_started = time.monotonic()
        try:
            self.sink.send(events)
        finally:
            self._send_started = None

    def _deliver(self, batch: LaneBatch) -> None:
        events = batch.events
        try:
            self._retrying(self._send, events)
        except PermanentSinkError as exc:  # the sink is up; the data is refused
            self._note_error(exc)
            bad = _subset(exc.events, events)
            bad_count = sum(e.batch_count for e in bad)
            self._finish(batch, delivered=batch.count - bad_count, failed=bad_count, dead=bad,
                         reason="permanent_error", error=exc, state=HEALTHY)
        except BaseException as exc:  # retries spent, or the deadline: any exception at all
            self._note_error(exc)
            reason = "sink_failing" if self.state == FAILING else "retries_exhausted"
            self._finish(batch, delivered=0, failed=batch.count, dead=events, reason=reason,
                         error=exc, state=FAILING)
        else:
            now = time.monotonic()
            self.latencies.extend(now - m.created_mono for e in events for m in (e.members or (e,)))
            self._finish(batch, delivered=batch.count, failed=0, dead=(), reason="", error=None,
                         state=HEALTHY)

    def _finish(self, batch: LaneBatch, *, delivered: int, failed: int, dead: Sequence[Event],
                reason: str, error: BaseException | None, state: str) -> None:
        with self._queue.cond:
            was = self.state
            self.state = state
            abandoned = batch is self._abandoned
            if not abandoned:
                self.batches_sent += 1 if delivered else 0
                self.delivered += delivered
                self.failed += failed
        if state != was:
            log = logger.warning if state == FAILING else logger.info
            log("sink %r is %s (was %s)", self.name, state, was)
        if abandoned:  # counted and dead-lettered when it was abandoned
            logger.warning("sink %r finished a batch of %d event(s) after it had been dead-lettered "
                           "(%d delivered): replaying the dead letter may repeat them",
                           self.name, batch.count, delivered)
            return
        self._dead_letter(dead, reason, error)

    def _sleep(self, seconds: float) -> None:
        deadline = self._deadline
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        self._wake.wait(seconds)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        self._note_error(exc)
        logger.info("sink %r failed (attempt %d of %d), retrying: %s",
                    self.name, state.attempt_number, self.max_retries + 1, self.last_error)

    def _note_error(self, exc: BaseException | None) -> None:
        self.send_errors += 1
        if exc is not None:
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _dead_letter(self, events: Sequence[Event], reason: str, error: BaseException | None) -> None:
        if events:
            self.dead_letter.submit(events, self.name, reason, error)

    def _close_sink(self) -> None:
        close = getattr(self.sink, "close", None)
        if close is None:
            return
        try:
            close(remaining(self._deadline))
        except BaseException:
            logger.exception("closing sink %r failed", self.name)

    # --- shutdown ------------------------------------------------------------------------
    def set_deadline(self, deadline: float) -> None:
        """From now on, waits for room, retries and their waits end at ``deadline``."""
        self._deadline = deadline
        self._wake.set()
        with self._queue.cond:
            self._queue.cond.notify_all()

    def stop(self) -> None:
        """Finish what is queued, close the sink, end the thread (once)."""
        with self._queue.cond:
            if self._stop_sent:
                return
            self._stop_sent = True
            self._queue.put(_STOP)

    def join(self, deadline: float) -> bool:
        """Wait for the lane thread until ``deadline``. If it is still busy (a hung sink),
        dead-letter what it still holds ('shutdown_timeout'), the batch in flight included,
        and return False. The thread ends by itself if the sink ever returns."""
        if not self._thread.started:
            self._close_sink()  # never started: nothing was queued, only the sink to close
            return True
        if self._thread.join(deadline):
            return True
        if self._thread.is_current():
            return False  # close() called from inside this sink: it finishes on its own
        count = self._abandon("shutdown_timeout")
        if count:
            logger.warning("sink %r did not finish within the shutdown deadline; the %d event(s) "
                           "it held were dead-lettered", self.name, count)
        else:
            logger.warning("sink %r did not close within the shutdown deadline; abandoned", self.name)
        return False

    def is_current_thread(self) -> bool:
        """True when called from this lane's own thread (from inside its sink)."""
        return self._thread.is_current()

    # --- stats ---------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Events enqueued and not yet delivered or dead-lettered."""
        return max(0, self.enqueued - self.delivered - self.failed)

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "state": self.state,
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


def close_lanes(lanes: Sequence[SinkLane], deadline: float) -> list[SinkLane]:
    """Stop every lane and wait for each until ``deadline`` (each closes its own sink); what
    a lane still holds then is dead-lettered. Returns the lanes that did not finish."""
    for lane in lanes:
        lane.set_deadline(deadline)
        lane.stop()
    return [lane for lane in lanes if not lane.join(deadline)]


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
