"""SinkLane: one sink's own queue and thread, with retries, isolation, the spool and stats.

A lane is in one of three states, and its state decides what a full lane does to the flush
thread that hands it a batch:

- ``healthy`` (the sink answers, however slowly): the flush thread waits for room. It stops
  taking from the ingress meanwhile, so the ingress fills and its overflow policy decides
  (``block``: producers wait). A slow sink slows intake instead of losing events. Except
  when the lane fills while its batch waits for a retry and the lane has a spool: the sink is
  probably down, so it is taken for failing at once (the flush thread does not wait out the
  retries), and the batch in flight, the queue and the new batch go to the spool, in order.
- ``failing`` (a batch spent its retries) and ``hung`` (one ``send`` has lasted longer than
  ``send_timeout``): the sink is isolated. The batch (or the one in flight), what the lane
  holds and every new batch go to the sink's spool on disk, in order; the lane delivers them
  from there when it can (lane_spool.py).

Only a permanent refusal goes to the dead letter, and only the events at fault
(refusals.py). With no spool (``spool_max_bytes=0``), what would be spooled is dead-lettered
instead (``retries_exhausted``, ``sink_failing``, ``sink_hung``, ``shutdown_timeout``) and a
failing lane gives each queued batch one try. Retries use tenacity: ``max_retries`` after the
first attempt, exponential backoff from ``retry_delay`` with jitter, capped at
``retry_max_delay``, ended early by the shutdown deadline. Any exception from a sink,
BaseException included, is a failed send; an error of the lane's own (a bug) is logged and
its batch spooled or dead-lettered: the lane thread never dies. On stop, the lane
thread closes its sink itself (under the deadline).
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
from timelapser_workers.lane_items import FAILING, HEALTHY, HUNG, STOP, WAKE, LaneBatch, Marker
from timelapser_workers.lane_spool import SpoolDrain
from timelapser_workers.refusals import Refused, settle
from timelapser_workers.spool import Spool
from timelapser_workers.threads import DaemonThread, WorkQueue, remaining

__all__ = ["SinkLane", "LaneBatch", "Marker", "close_lanes", "HEALTHY", "FAILING", "HUNG"]

logger = logging.getLogger(__name__)

_LATENCY_SAMPLES = 8192  # the last this many delivery latencies make p50 and p99
_LATENCY_PER_BATCH = 32  # a large batch is sampled evenly, not measured event by event


class _TakenAway(Exception):
    """The batch in flight was spooled (or dead-lettered) between two attempts: not sent again."""


class _StopRetrying(tenacity.stop.stop_base):
    """No more attempts once the lane is failing (one try each), its batch was dead-lettered
    (hung), or the shutdown deadline has passed."""

    def __init__(self, lane: "SinkLane") -> None:
        self.lane = lane

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        lane, deadline = self.lane, self.lane._deadline
        if lane.state == FAILING or lane._in_flight is lane._abandoned:  # one try; or taken away
            return True
        return deadline is not None and time.monotonic() >= deadline


class SinkLane(SpoolDrain):
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
        spool: Spool | None = None,
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
        self._abandoned: LaneBatch | None = None  # spooled or dead-lettered while in flight
        self._finished: LaneBatch | None = None  # the last batch _finish() counted
        self._retrying_now = False  # the batch in flight failed and waits for its next attempt
        self._check_every = min(0.25, send_timeout / 4)
        # counters, in original events unless named batches; written under the queue's lock
        self.enqueued = 0
        self.settled = 0  # of those: delivered, dead-lettered or spooled (the rest is pending)
        self.delivered = 0  # to the sink, from the queue or from the spool
        self._failed = 0  # dead-lettered
        self.batches_sent = 0
        self.retries = 0
        self.send_errors = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.last_error: str | None = None
        self.latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_SAMPLES)
        self._retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(max_retries + 1) | _StopRetrying(self),
            wait=exponential_wait(retry_delay, retry_max_delay, jitter=retry_delay),
            retry=tenacity.retry_if_not_exception_type((PermanentSinkError, _TakenAway)),
            sleep=self._sleep,
            before_sleep=self._before_retry,
            reraise=True,
        )
        self._init_spool(spool, retry_delay, retry_max_delay)

    # --- called by the flush thread -------------------------------------------------------
    def put(self, batch: LaneBatch) -> None:
        """Queue ``batch``. While the lane is healthy and full, wait for room (backpressure).
        A failing or hung lane spools it (dead-letters it without a spool); so does the
        passed shutdown deadline."""
        with self._queue.cond:
            self.enqueued += batch.count
        if self._spooling:
            batch.spool_line()  # encoded before the lock is taken
        while True:
            self._check_hung()
            with self._queue.cond:  # reentrant: held across the check and the put
                if self._spooling:
                    self._spool_locked([batch])
                    return
                if self.state == HUNG:
                    self._divert([batch], "sink_hung")
                    return
                healthy = self.state == HEALTHY and not (self._retrying_now and self.spool is not None)
                wait_until = 0.0
                if healthy:
                    wait_until = time.monotonic() + self._check_every
                    if self._deadline is not None:
                        wait_until = min(wait_until, self._deadline)
                if self._queue.put(batch, batch.count, deadline=wait_until, abort=self._is_spooling):
                    return
                if self._is_spooling():
                    continue  # the lane began spooling meanwhile: behind what it spooled
            if not healthy:
                if self.state == HEALTHY:  # retrying, with a spool: in flight, queued, then this
                    self._fail_while_retrying()
                    continue
                self._divert([batch], "sink_failing")
                return
            if self._deadline is not None and time.monotonic() >= self._deadline:
                self._divert([batch], "shutdown_timeout", behind_queue=True)
                return

    def _fail_while_retrying(self) -> None:
        """The lane filled while its batch waited for a retry: the sink is taken for failing
        now, and the batch in flight and the queue go to the spool (its retries end)."""
        with self._queue.cond:
            if self.state != HEALTHY or not self._retrying_now:  # or the retry has just ended
                return
            self.state = FAILING
            self._spool_locked(self._take_in_flight_locked())
        logger.warning("sink %r is failing (was healthy; its lane filled while a batch waited for "
                       "a retry): its events go to its spool (%s)", self.name,
                       self.spool.directory if self.spool is not None else "")

    def _is_spooling(self) -> bool:
        return self._spooling

    def put_marker(self, marker: Marker) -> None:
        self._check_hung()
        with self._queue.cond:
            marker.target = self.enqueued
            if self._spooling:
                self._spool_marker_locked(marker)
            elif self.state == HUNG:  # everything before it went to the dead letter already
                self._reach(marker)
            else:
                self._queue.put(marker)

    def wait_marker(self, marker: Marker, deadline: float | None) -> bool:
        """Wait until ``marker`` is reached or ``deadline``; a send that outlasts
        ``send_timeout`` meanwhile isolates the lane (so its marker is reached), as a new batch
        would."""
        while not marker.done.wait(self._check_every if deadline is None else
                                   min(self._check_every, max(0.0, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                return marker.done.is_set()
            self._check_hung()
        return True

    def _reach(self, marker: Marker) -> None:
        marker.delivered, marker.failed, marker.spool_errors = self.delivered, self.failed, self.spool_errors
        marker.done.set()

    def start(self) -> None:
        self._thread.start()

    def _check_hung(self) -> None:
        started = self._send_started
        if started is None or self.state == HUNG or time.monotonic() - started <= self.send_timeout:
            return
        with self._queue.cond:  # hung, and what it holds taken, at once: the send may return
            if self.state == HUNG or self._send_started != started:
                return
            self.state = HUNG
            taken = self._take_all_locked()
        logger.error("sink %r has been in one send for more than send_timeout=%.1fs: isolated; its "
                     "events go to the %s until the send returns", self.name, self.send_timeout,
                     "spool" if self.spool is not None else "dead letter")
        self._dead_letter_taken(taken, "sink_hung")

    def _abandon(self, reason: str) -> int:
        """Spool (or dead-letter) what the lane holds, the batch in flight included; return the
        count."""
        with self._queue.cond:
            taken = self._take_all_locked()
        return self._dead_letter_taken(taken, reason)

    def _take_all_locked(self) -> tuple[list[LaneBatch], list[Marker], int]:
        """Take the batch in flight and the queue away: spooled now, or returned (batches and
        markers) for _dead_letter_taken(), with their count."""
        first = self._take_in_flight_locked()
        if self.spool is not None:
            return [], [], self._spool_locked(first)
        held = first + self._queue.remove_all(lambda item: isinstance(item, LaneBatch))
        markers = self._queue.remove_all(lambda item: isinstance(item, Marker))
        return held, markers, sum(b.count for b in held)

    def _take_in_flight_locked(self) -> list[LaneBatch]:
        """The batch in flight, marked as taken away (once): [] or [batch]."""
        in_flight = self._in_flight
        if in_flight is None or in_flight is self._abandoned or in_flight is self._finished:
            return []  # none; taken already; or counted by _finish() already
        self._abandoned = in_flight
        return [in_flight]

    def _dead_letter_taken(self, taken: tuple[list[LaneBatch], list[Marker], int], reason: str) -> int:
        held, markers, count = taken
        self._divert(held, reason)
        if markers:
            with self._queue.cond:
                for marker in markers:  # what they wait for has just been dead-lettered
                    self._reach(marker)
        return count

    def _divert(self, batches: Sequence[LaneBatch], reason: str, behind_queue: bool = False,
                error: BaseException | None = None) -> None:
        """Spool ``batches`` (after what is queued, if ``behind_queue``), or without a spool,
        count them as failed and hand them to the dead letter (with ``error``, if known)."""
        if self.spool is not None:
            with self._queue.cond:
                if behind_queue:
                    self._spool_locked([], batches)
                else:
                    self._spool_locked(batches)
            return
        for batch in batches:
            with self._queue.cond:
                self.settled += batch.count
                self._failed += batch.count
                self.dropped[reason] += batch.count
            self._dead_letter(batch.events, reason, error)

    # --- the lane thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                self._serve()
                return
            except BaseException:  # not the sink's errors (_deliver takes those): a bug of ours
                logger.critical("sink %r: the lane failed on its own; it carries on", self.name, exc_info=True)
                self._rescue()
                time.sleep(0.1)  # not a busy loop, should the error repeat

    def _rescue(self) -> None:
        """After an error of the lane's own: spool (or dead-letter) the batch it had in flight,
        unless that batch was counted already."""
        with self._queue.cond:
            batch, self._in_flight = self._in_flight, None
            self._retrying_now = False
            if batch is None or batch is self._abandoned or batch is self._finished:
                return
        try:
            self._divert([batch], "internal_error")
        except BaseException:
            logger.critical("sink %r: %d event(s) could not be spooled or dead-lettered", self.name,
                            batch.count, exc_info=True)

    def _serve(self) -> None:
        while True:
            if self._spooling and self._drain():
                self._close_sink()
                return
            with self._queue.cond:  # taken and in flight at once: _abandon() sees it either way
                if self._spooling:
                    continue
                item = self._queue.get()
                if isinstance(item, LaneBatch):
                    self._in_flight = item
            if item is STOP:
                self._close_sink()
                return
            if isinstance(item, Marker):
                with self._queue.cond:
                    self._reach(item)
                continue
            if item is WAKE:
                continue
            self._deliver(item)  # _finish() ends it in flight

    def _send_in_flight(self, batch: LaneBatch) -> None:
        if batch is self._abandoned:
            raise _TakenAway()
        self._send(batch.events)

    def _send(self, events: Sequence[Event]) -> None:
        self._send_started = time.monotonic()
        try:
            self.sink.send(events)
        finally:
            self._send_started = None

    def _deliver(self, batch: LaneBatch) -> None:
        events = batch.events
        try:
            self._retrying(self._send_in_flight, batch)
        except _TakenAway:  # spooled while it waited for its next attempt: the drain retries it
            self._finish(batch, delivered=0, refused=[], unsent=list(events), state=FAILING)
        except PermanentSinkError as exc:  # the sink is up; some of the data is refused
            self._note_error(exc)
            found = settle(self._send, events, exc)
            self._finish(batch, delivered=batch.count - found.refused_count - found.unsent_count,
                         refused=found.refused, unsent=found.unsent,
                         state=FAILING if found.unsent else HEALTHY, error=exc)
        except BaseException as exc:  # retries spent, or the deadline: any exception at all
            self._note_error(exc)
            self._finish(batch, delivered=0, refused=[], unsent=list(events), state=FAILING, error=exc)
        else:
            self._sample(events)
            self._finish(batch, delivered=batch.count, refused=[], unsent=[], state=HEALTHY)

    def _sample(self, events: Sequence[Event]) -> None:
        now, step = time.monotonic(), max(1, len(events) // _LATENCY_PER_BATCH)
        self.latencies.extend(now - m.created_mono for e in events[::step] for m in (e.members or (e,)))

    def _finish(self, batch: LaneBatch, *, delivered: int, refused: list[Refused], unsent: list[Event],
                state: str, error: BaseException | None = None) -> None:
        refused_count = sum(r.event.batch_count for r in refused)
        rest = None
        if unsent:
            rest = batch if len(unsent) == len(batch.events) else LaneBatch(unsent)
        with self._queue.cond:
            was = self.state
            self.state = state
            self._retrying_now = False
            self._finished = batch
            if self._in_flight is batch:
                self._in_flight = None  # counted here: nobody may take it away after this
            abandoned = batch is self._abandoned
            if not abandoned:
                self.batches_sent += 1 if delivered else 0
                self.delivered += delivered
                self._failed += refused_count
                self.settled += batch.count - (rest.count if rest is not None else 0)
                if rest is not None and self.spool is not None:
                    self._spool_locked([rest])  # with the state: put() spools behind it
        if state != was:
            spool = self.spool
            where = f": its events go to its spool ({spool.directory})" if spool and state == FAILING else ""
            (logger.warning if state == FAILING else logger.info)(
                "sink %r is %s (was %s)%s", self.name, state, was, where)
        if abandoned and delivered:  # counted, and spooled or dead-lettered, when taken away
            logger.warning("sink %r finished a batch of %d event(s) after it had been taken away "
                           "(%d delivered): the sink may receive them twice (it dedupes by event id)",
                           self.name, batch.count, delivered)
        if abandoned:
            return
        self._refused(refused)
        if rest is not None and self.spool is None:
            self._divert([rest], "sink_failing" if was == FAILING else "retries_exhausted", error=error)

    def _refused(self, refused: list[Refused]) -> None:
        """Dead-letter refused events, each with its own error."""
        by_error: dict[str, list[Event]] = {}
        for item in refused:
            by_error.setdefault(item.error, []).append(item.event)
        for error, events in by_error.items():
            self._dead_letter(events, "permanent_error", PermanentSinkError(error))

    def _sleep(self, seconds: float) -> None:
        deadline = self._deadline
        if deadline is not None:
            seconds = min(seconds, max(0.0, deadline - time.monotonic()))
        self._wake.wait(seconds)

    def _before_retry(self, state: tenacity.RetryCallState) -> None:
        self.retries += 1
        self._retrying_now = True
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
            self._queue.put(STOP)

    def join(self, deadline: float) -> bool:
        """Wait for the lane thread until ``deadline``. If it is still busy (a hung sink),
        spool (or dead-letter: 'shutdown_timeout') what it still holds, the batch in flight
        included, and return False. The thread ends by itself if the sink ever returns."""
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
                           "it held were %s", self.name, count,
                           "spooled" if self.spool is not None else "dead-lettered")
        else:
            logger.warning("sink %r did not close within the shutdown deadline; abandoned", self.name)
        return False

    def is_current_thread(self) -> bool:
        """True when called from this lane's own thread (from inside its sink)."""
        return self._thread.is_current()

    # --- stats ---------------------------------------------------------------------------
    @property
    def failed(self) -> int:
        """Events dead-lettered (refused, or with nowhere else to go)."""
        return self._failed + self.spool_errors

    @property
    def pending(self) -> int:
        """Events enqueued and not yet delivered, dead-lettered or spooled."""
        return max(0, self.enqueued - self.settled)

    def stats(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "state": self.state,
            "batches_sent": self.batches_sent,
            "events_sent": self.delivered,
            "retries": self.retries,
            "failures": self.send_errors,
            "dead_lettered": self.failed,
            "dropped": {**self.dropped, **({"spool_error": self.spool_errors} if self.spool_errors else {})},
            "pending": self.pending,
            "last_error": self.last_error,
            "latency_p50_ms": _percentile(lat, 0.50),
            "latency_p99_ms": _percentile(lat, 0.99),
            **self.spool_stats(),
        }


def close_lanes(lanes: Sequence[SinkLane], deadline: float) -> list[SinkLane]:
    """Stop every lane and wait for each until ``deadline`` (each closes its own sink); what
    a lane still holds then is spooled or dead-lettered. Returns the lanes that did not finish."""
    for lane in lanes:
        lane.set_deadline(deadline)
        lane.stop()
    return [lane for lane in lanes if not lane.join(deadline)]


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return round(sorted_values[index] * 1000.0, 3)
