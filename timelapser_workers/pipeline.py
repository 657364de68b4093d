"""Pipeline: a batcher's running parts (ingress, flush thread, lanes, dead-letter writer) and
how they start, flush and shut down.

The pipeline never refers to the EventBatcher that owns it, so a batcher nobody references
can be collected; its finalizer then shuts the pipeline down in the background (its events
are delivered, its threads end, its sinks are closed) instead of leaking them.

Shutting down is one sequence, run once, by the flush thread after its last flush (or by
whoever closes a pipeline whose flush thread never started or died): stop every lane and
wait for it until the deadline (each lane closes its own sink), spool (or dead-letter) what a
hung lane still holds, close the disk writer (a short grace past the deadline), then the
spools (what they hold stays on disk). ``close()`` starts it and waits for it; called again
(after Ctrl-C interrupted it, from a signal handler, or from atexit) it waits for the same
sequence, so a batcher is never left half closed; called from a sink's own thread, it starts
it and returns.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.config import BatcherConfig
from timelapser_workers.deadletter import DeadLetterHandler, DeadLetterWriter
from timelapser_workers.drops import DropCounters
from timelapser_workers.errors import BatcherClosedError, QueueFullError
from timelapser_workers.events import Event
from timelapser_workers.flusher import STOP, Flusher, FlushRequest, FlushResult
from timelapser_workers.ingress import Ingress, IngressClosed, Unbatched, overflow_policy
from timelapser_workers.lane import SinkLane, close_lanes
from timelapser_workers.lifecycle import adopt, release
from timelapser_workers.threads import DaemonThread, remaining

__all__ = ["Pipeline"]

_GRACE = 0.25  # past the deadline: for what the deadline dead-lettered to reach the file


class Pipeline:
    """The running parts of one batcher; see the module docstring."""

    def __init__(self, name: str, config: BatcherConfig, policy: AggregationPolicy,
                 dead_letter: DeadLetterHandler, *, closed: bool = False) -> None:
        self.name = name
        self.config = config
        self.lanes: list[SinkLane] = []
        self.drops = DropCounters()
        self.ingress = Ingress(config.max_queue_size)
        self._flush_priority = config.flush_priority  # read on every put: one attribute
        self.overflow = overflow_policy(config.overflow, config.block_timeout)
        self.dead_letters = DeadLetterWriter(dead_letter, config.lane_max_events, name,
                                             block_timeout=config.shutdown_timeout)
        self.flusher = Flusher(name, config, policy, self.ingress, self._lanes, self.drops, self._shutdown)
        self.thread = DaemonThread(f"timelapser-flush-{name}", self.flusher.run)
        # reentrant: the SIGTERM handler may close while this thread is inside add_lane or start
        self._lock = threading.RLock()
        # the shutdown sequence runs once, under this alone (reentrant: a signal handler may
        # close while this thread is inside it; the inner call returns, the outer one finishes)
        self._sequence = threading.RLock()
        self._in_sequence = False
        self._sequence_begun = False  # STOP sent to the flush thread, or the close thread started
        self.running = False  # started (a plain attribute: read on every put)
        self.on_start: Callable[[], object] | None = None  # called once, by the first put
        self.closing = False
        self.deadline = 0.0
        self._before: list[tuple[int, int]] = []
        self._done = threading.Event()
        self._received = 0  # the most events_received ever reported
        if closed:  # a forked child of a closed batcher: closed, with nothing to deliver
            self.closing = True
            self.ingress.closed = True
            self._done.set()

    def _lanes(self) -> list[SinkLane]:
        return self.lanes

    # --- running ---------------------------------------------------------------------------
    def add_lane(self, lane: SinkLane) -> None:
        with self._lock:
            if self.closing:
                raise BatcherClosedError(f"batcher {self.name!r} is closed; cannot add sink {lane.name!r}")
            self.lanes = self.lanes + [lane]
            if self.thread.started or lane.has_backlog:  # a spool left by an earlier process: now
                lane.start()

    def start(self) -> None:
        with self._lock:
            if self.running or self.closing:
                return
            for lane in self.lanes:
                lane.start()
            self.thread.start()
            self.running = True
        if self.on_start is not None:
            self.on_start()

    def offer(self, item: Event | Unbatched, event: Event) -> bool:
        """Put an event on the ingress; False if it (or an older one) was dropped. Raises
        BatcherClosedError once closing, QueueFullError when ``block`` timed out."""
        if not self.running and not self.closing:
            self.start()
        urgent = item is not event or event.priority >= self._flush_priority  # unbatched: at once
        try:
            reason = self.overflow.offer(self.ingress, item, urgent)
        except IngressClosed:
            self.drops.reject("closed", None)
            raise BatcherClosedError(
                f"batcher {self.name!r} is closed; refused {event.type} event {event.id}") from None
        if reason is None:
            return True
        self.drops.drop(reason, 1, "batcher %r queue is full (%d events): dropping events (%s)",
                        self.name, self.config.max_queue_size, reason)
        if reason == "block_timeout":
            raise QueueFullError(
                f"batcher {self.name!r} queue stayed full ({self.config.max_queue_size} events) "
                f"for block_timeout={self.config.block_timeout}s; {event.type} event {event.id} dropped")
        return False

    def flush(self, deadline: float) -> FlushResult:
        """Deliver everything queued before this call; wait at most until ``deadline``."""
        if not self.thread.alive:
            return FlushResult(0, 0, self.ingress.qsize() + sum(lane.pending for lane in self.lanes),
                               sum(lane.spool_events for lane in self.lanes))
        request = FlushRequest(self.lanes)
        self.ingress.put_control(request)
        result = request.wait(deadline, queued=self.ingress.qsize)
        self.dead_letters.wait_idle(deadline)  # what failed or was spooled is on disk now
        # a spool append the disk refused after its marker was reached: dead-lettered since
        late = sum(lane.spool_errors - marker.spool_errors for lane, marker in request.markers
                   if marker.done.is_set())
        return FlushResult(result.delivered, result.failed + late, result.pending,
                           sum(lane.spool_events for lane in self.lanes))

    # --- shutting down ---------------------------------------------------------------------
    def begin_close(self, deadline: float, *, orphaned: bool = False) -> None:
        """Refuse new events and start the shutdown sequence (once); do not wait for it.
        ``orphaned``: nobody will wait for it; lifecycle keeps it alive until it is done."""
        with self._lock:
            first = not self.closing
            if first:
                self.closing = True
                self.deadline = deadline
                self._before = [(lane.delivered, lane.failed) for lane in self.lanes]
        # the rest is idempotent and done by every call: a call interrupted here (a signal
        # handler closing the same batcher) is completed by the handler's own call
        self.ingress.close()  # from here on every put is refused (and counted), none slips in
        for lane in self.lanes:
            lane.set_deadline(self.deadline)  # full-lane waits and retries end at the deadline
        self.dead_letters.deadline = self.deadline + _GRACE  # a full disk writer: no wait past it
        if orphaned and first:
            adopt(self)
        with self._lock:
            if self._sequence_begun:
                return
            self._sequence_begun = True
        if self.thread.started:
            self.ingress.put_control(STOP)  # the flush thread delivers, then runs _shutdown
        else:
            threading.Thread(target=self._shutdown, name=f"timelapser-close-{self.name}", daemon=True).start()

    def close(self, deadline: float) -> FlushResult:
        """Begin closing (if not begun) and wait for the shutdown sequence until ``deadline``
        (plus a short grace for the dead letters). From the pipeline's own threads (a sink
        closing its batcher), begin and return at once."""
        self.begin_close(deadline)
        if self.thread.is_current() or any(lane.is_current_thread() for lane in self.lanes):
            return self.result()
        if self.thread.started and not self.thread.alive:
            self._shutdown()  # the flush thread died (a bug, logged): run the sequence here
        end = max(deadline, self.deadline) + 2 * _GRACE  # the sequence's grace, then closing the spools
        if not self._done.wait(remaining(end)) and not self.thread.alive:
            self._shutdown()
        return self.result()

    def _shutdown(self) -> None:
        """The shutdown sequence; runs once, on the flush thread after its last flush."""
        with self._sequence:
            if self._done.is_set() or self._in_sequence:
                return
            self._in_sequence = True
            late = [item if type(item) is Event else item.event for item in self.ingress.drain()
                    if type(item) in (Event, Unbatched)]
            if late:  # accepted, but no flush thread got to them
                self.drops.drop("shutdown_timeout", len(late), None)
                self.dead_letters.submit(late, "(batcher)", "shutdown_timeout", None)
            close_lanes(self.lanes, self.deadline)
            self.dead_letters.close(max(self.deadline, time.monotonic()) + _GRACE)
            for lane in self.lanes:  # after the disk writer: what they hold stays for the next start
                lane.close_spool()
            self._done.set()
        release(self)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self) -> FlushResult:
        """Delivered and failed since closing began, and what is still pending."""
        before = self._before or [(lane.delivered, lane.failed) for lane in self.lanes]
        return FlushResult(
            sum(lane.delivered - d for lane, (d, _) in zip(self.lanes, before)),
            sum(lane.failed - f for lane, (_, f) in zip(self.lanes, before)),
            self.ingress.qsize() + sum(lane.pending for lane in self.lanes),
            sum(lane.spool_events for lane in self.lanes),
        )

    def stats(self) -> dict[str, Any]:
        """Counters since construction (or since fork, in a child)."""
        depth, flusher = self.ingress.qsize(), self.flusher
        rejected, dropped = self.drops.snapshot()
        # the flush thread counts what it took just after the drain: never report less than
        # before (a counter that dips looks like a reset to a metrics system)
        self._received = max(self._received, flusher.taken + depth)
        return {
            "events_received": self._received,
            "events_rejected": rejected,
            "events_dropped": dropped,
            "events_batched": flusher.events_batched,
            "events_saved": flusher.events_batched - flusher.batches_created,
            "batches_created": flusher.batches_created,
            "flushes": flusher.flushes,
            "queue_depth": depth,
            "queue_high_water": flusher.high_water,
            "queue_capacity": self.config.max_queue_size,
            "dead_letter": self.dead_letters.stats(),
            "sinks": {lane.name: lane.stats() for lane in self.lanes},
        }
