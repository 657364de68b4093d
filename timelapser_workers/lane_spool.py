"""The spool side of a SinkLane: sending batches to the sink's spool, and delivering them back.

While a lane is *spooling*, every batch for its sink goes to the spool (in order, behind what
is there), and the lane thread delivers from the spool, oldest first: each record is sent
with tenacity backoff between attempts (``retry_delay`` doubling up to ``retry_max_delay``,
with jitter) until the sink takes it, then acknowledged on disk. A permanent refusal is
settled as in the queue (refusals.py): only the events at fault are dead-lettered. When the
spool is empty the lane goes back to its queue. At shutdown a lane delivers from the spool
until the deadline while its sink accepts; one whose sink is down gets one more try, then stops:
the spool stays on disk, and the next batcher with the same sink name and spool directory
delivers it.

A flush marker in a spooling lane is reached once the records before it are delivered, or at
once when the sink is down (what it waits for is on disk then: ``FlushResult.spooled``).
This is a mixin: :class:`~timelapser_workers.lane.SinkLane` is the only class built from it.
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
from timelapser_workers.lane_items import FAILING, HEALTHY, STOP, WAKE, LaneBatch, Marker
from timelapser_workers.refusals import Refused, settle
from timelapser_workers.spool import Spool, SpoolRecord
from timelapser_workers.threads import WorkQueue

__all__ = ["SpoolDrain"]

logger = logging.getLogger("timelapser_workers.lane")


class _StopProbing(tenacity.stop.stop_base):
    """Probe until the sink takes the record, except once closing (one attempt: what the sink
    does not take stays on disk) or when the spool is closed."""

    def __init__(self, lane: "SpoolDrain") -> None:
        self.lane = lane

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        spool = self.lane.spool
        return spool is None or spool.closed or self.lane._deadline is not None


class SpoolDrain:
    """The spool half of SinkLane (see the module docstring)."""

    # provided by SinkLane
    name: str
    state: str
    delivered: int
    settled: int
    _failed: int
    batches_sent: int
    retries: int
    dropped: collections.Counter[str]
    dead_letter: DeadLetterWriter
    _queue: WorkQueue[Any]
    _deadline: float | None
    _check_every: float
    last_error: str | None

    def _send(self, events: Sequence[Event]) -> None: ...
    def _sleep(self, seconds: float) -> None: ...
    def _reach(self, marker: Marker) -> None: ...
    def _note_error(self, exc: BaseException | None) -> None: ...
    def _refused(self, refused: list[Refused]) -> None: ...
    def _sample(self, events: Sequence[Event]) -> None: ...

    def _init_spool(self, spool: Spool | None, retry_delay: float, retry_max_delay: float) -> None:
        self.spool = spool
        self._spooling = spool is not None and not spool.empty  # what an earlier process left
        self._stopping = False
        self._last_try_closing = False  # the last attempt was made while closing
        self._spool_markers: list[tuple[int, Marker]] = []
        self.spooled = 0  # events sent to the spool
        self.redelivered = 0  # events delivered from the spool
        self.spool_full = 0  # events dead-lettered because the spool was full
        self.spool_errors = 0  # events dead-lettered because the disk refused them
        self._errors_lock = threading.Lock()
        self._probing = tenacity.Retrying(
            stop=_StopProbing(self),
            wait=exponential_wait(retry_delay, retry_max_delay, jitter=retry_delay),
            retry=tenacity.retry_if_not_exception_type(PermanentSinkError),
            sleep=self._sleep,
            before_sleep=self._before_probe,
            reraise=True,
        )

    @property
    def spool_events(self) -> int:
        """Events in this lane's spool now (on disk, or on the way there)."""
        return self.spool.events if self.spool is not None else 0

    @property
    def has_backlog(self) -> bool:
        """True while the lane delivers from its spool (start its thread now)."""
        return self._spooling

    # --- into the spool (any thread, holding the queue's lock; no I/O) -----------------------
    def _spool_locked(self, before: Sequence[LaneBatch], after: Sequence[LaneBatch] = (), *,
                      from_queue: bool = True) -> int:
        """Spool ``before``, then the batches still queued, then ``after``: from now on the lane
        is spooling. ``from_queue``: the batches were counted in by put() (settled here).
        Returns the events handed over."""
        spool = self.spool
        assert spool is not None
        was = self._spooling
        self._spooling = True
        queued = self._queue.remove_all(lambda item: isinstance(item, LaneBatch))
        markers = self._queue.remove_all(lambda item: isinstance(item, Marker))
        total = 0
        for batch in (*before, *queued, *after):
            total += batch.count
            if from_queue:
                self.settled += batch.count
            line = batch.spool_line()
            if spool.reserve(len(line), batch.count):
                self.spooled += batch.count
                self.dead_letter.spool(spool, line, batch.events, self.name, batch.count, self._spool_refused)
            else:
                self._failed += batch.count
                self.spool_full += batch.count
                self.dropped["spool_full"] += batch.count
                self.dead_letter.submit(batch.events, self.name, "spool_full", None)
        for marker in markers:
            self._spool_marker_locked(marker)
        if not was:
            self._queue.put(WAKE)  # the lane thread may be waiting on its empty queue
        return total

    def _spool_refused(self, count: int) -> None:
        """The disk writer could not append ``count`` events (they went to the dead letter)."""
        with self._errors_lock:
            self.spool_errors += count

    def _spool_marker_locked(self, marker: Marker) -> None:
        spool = self.spool
        if self.state != HEALTHY or spool is None or spool.closed:
            self._reach(marker)  # the sink is down: what the marker waits for is on disk
        else:
            self._spool_markers.append((spool.entered, marker))

    def _reach_spool_markers(self, force: bool = False) -> None:
        left = self.spool.left if self.spool is not None else 0
        waiting = []
        for target, marker in self._spool_markers:
            if force or left >= target:
                self._reach(marker)
            else:
                waiting.append((target, marker))
        self._spool_markers = waiting

    # --- out of the spool (the lane thread) --------------------------------------------------
    def _drain(self) -> bool:
        """Deliver from the spool until it is empty (False: back to the queue) or the lane is
        stopping and cannot go on (True)."""
        spool = self.spool
        assert spool is not None
        while True:
            with self._queue.cond:
                for item in self._queue.remove_all(lambda item: not isinstance(item, LaneBatch)):
                    if isinstance(item, Marker):
                        self._spool_marker_locked(item)
                    elif item is STOP:
                        self._stopping = True
                if self.state != HEALTHY:
                    self._reach_spool_markers(force=True)
                deadline = self._deadline
                if deadline is not None and (time.monotonic() >= deadline or (
                        self.state != HEALTHY and self._last_try_closing)):
                    if self._stopping:
                        return True  # what the sink did not take stays on disk
                    self._queue.cond.wait(self._check_every)  # the stop follows the deadline
                    continue
            record = spool.next(self._check_every)
            if record is not None:
                self._last_try_closing = deadline is not None  # closing: one more try, if down
                self._redeliver(record)
                continue
            if spool.empty and not spool.closed and spool.adopt():
                continue  # another process left events behind meanwhile
            with self._queue.cond:
                if spool.empty or spool.closed:
                    self._spooling = False
                    self._reach_spool_markers(force=True)
                    logger.info("sink %r: its spool is delivered; back to its queue", self.name)
                    return self._stopping

    def _redeliver(self, record: SpoolRecord) -> None:
        spool = self.spool
        assert spool is not None
        events = record.events
        try:
            self._probing(self._send, events)
        except PermanentSinkError as exc:
            self._note_error(exc)
            found = settle(self._send, events, exc)
            self._refused(found.refused)
            with self._queue.cond:
                if found.unsent:  # down again on the way: behind the others
                    self._spool_locked([LaneBatch(found.unsent)], from_queue=False)
            spool.ack(record)
            with self._queue.cond:
                ok = record.originals - found.refused_count - found.unsent_count
                self._count(ok, failed=found.refused_count, state=FAILING if found.unsent else HEALTHY)
        except BaseException as exc:  # closing, or the spool closed: it stays on disk
            self._note_error(exc)
            with self._queue.cond:
                self._count(0, failed=0, state=FAILING)
        else:
            spool.ack(record)
            self._sample(events)
            with self._queue.cond:
                self._count(record.originals, failed=0, state=HEALTHY)

    def _count(self, delivered: int, *, failed: int, state: str) -> None:
        """(holding the queue's lock) Count a record's outcome; reach the markers it passed."""
        was = self.state
        self.state = state
        self.delivered += delivered
        self.redelivered += delivered
        self.batches_sent += 1 if delivered else 0
        self._failed += failed
        self._reach_spool_markers(force=state != HEALTHY)
        if state != was:
            log = logger.warning if state == FAILING else logger.info
            log("sink %r is %s (was %s)%s", self.name, state, was,
                "; delivering its spool" if state == HEALTHY else "")

    def _before_probe(self, retry_state: tenacity.RetryCallState) -> None:
        self.retries += 1
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        self._note_error(exc)
        with self._queue.cond:
            if self.state == HEALTHY:
                self.state = FAILING
                self._reach_spool_markers(force=True)
                logger.warning("sink %r is failing (%s); its spool is delivered when it is back",
                               self.name, self.last_error)

    # --- the end, and stats ----------------------------------------------------------------
    def close_spool(self) -> None:
        """Close the spool (after the disk writer): what it still holds stays for the next start."""
        if self.spool is not None:
            self.spool.close()

    def spool_stats(self) -> dict[str, Any]:
        stats = {"spooled": self.spooled, "redelivered": self.redelivered, "spool_full": self.spool_full,
                 "spool_errors": self.spool_errors}
        if self.spool is not None:
            stats.update(self.spool.stats())
        else:
            stats.update(spool_events=0, spool_bytes=0, spool_adopted=0, spool_corrupt=0)
        return stats
