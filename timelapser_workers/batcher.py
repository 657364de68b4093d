"""EventBatcher: the facade over the ingress, the signal adapter, the flush loop and the lanes.

Producers (signal receivers, :meth:`EventBatcher.submit`, :meth:`EventBatcher.emit`) only build
an Event and put it on the bounded ingress (ingress.py): no I/O, no lock held across a sink
call. One daemon flush thread (flusher.py), started on first use and again in a forked child
(which starts empty), groups, aggregates and hands each flush to every sink's lane (lane.py).
``close()`` and an atexit hook (lifecycle.py) deliver what is left under a deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Iterable, Mapping

from blinker import ANY, Signal

from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.config import BatcherConfig, check_timeout
from timelapser_workers.contract import Sink, sink_name
from timelapser_workers.deadletter import DeadLetterHandler, DeadLetterWriter, resolve_dead_letter
from timelapser_workers.drops import DropCounters
from timelapser_workers.errors import BatcherClosedError, QueueFullError
from timelapser_workers.events import Event, Priority, make_event
from timelapser_workers.flusher import STOP, Flusher, FlushRequest, FlushResult
from timelapser_workers.ingress import Ingress, IngressClosed, Unbatched, overflow_policy
from timelapser_workers.lane import SinkLane, close_lanes
from timelapser_workers.lifecycle import after_fork_in_child, track
from timelapser_workers.signal_adapter import SignalAdapter
from timelapser_workers.threads import DaemonThread, remaining

__all__ = ["EventBatcher", "FlushResult"]

logger = logging.getLogger(__name__)


class EventBatcher:
    """Batch events from many producer threads and deliver them to sinks.

    ``sinks``: objects with ``send(batch)`` (see :class:`timelapser_workers.contract.Sink`).
    ``settings``: any field of :class:`~timelapser_workers.config.BatcherConfig` (batch_size,
    batch_timeout, overflow, shutdown_timeout ...); each one not given comes from its
    ``TIMELAPSER_...`` environment variable or its default, and a bad value raises ValueError
    naming it. ``config``: a resolved BatcherConfig to start from. ``dead_letter``: a
    callable(events, sink_name, reason, error) or a path for the JSON-lines default.
    """

    def __init__(
        self,
        sinks: Iterable[Sink] = (),
        *,
        aggregation: AggregationPolicy | None = None,
        dead_letter: DeadLetterHandler | str | os.PathLike[str] | None = None,
        name: str = "events",
        config: BatcherConfig | None = None,
        **settings: Any,
    ) -> None:
        self.config = BatcherConfig.resolve(base=config, **settings)
        self.name = name
        self.policy = aggregation if aggregation is not None else AggregationPolicy()
        self.dead_letter = resolve_dead_letter(dead_letter, self.config.dead_letter_path)
        self._lanes: list[SinkLane] = []
        self._closing = False
        self._closed = threading.Event()
        self._close_result: FlushResult | None = None
        self._signals = SignalAdapter(self._submit_from_signal, self._reject, self.config.max_event_bytes)
        self._init_runtime()
        if callable(getattr(sinks, "send", None)):
            raise TypeError(f"sinks must be a list of sinks; got one sink, {sinks!r}: pass [{sinks!r}]")
        for sink in sinks:
            self.add_sink(sink)
        track(self)
        after_fork_in_child(self._after_fork_in_child)

    def _init_runtime(self) -> None:
        """Ingress, threads and counters: built here and again in a forked child."""
        cfg = self.config
        self._lock = threading.Lock()
        self._ingress = Ingress(cfg.max_queue_size, cfg.batch_size if cfg.use_batching else 1)
        self._ingress.closed = self._closing
        self._overflow = overflow_policy(cfg.overflow, cfg.block_timeout)
        self._drops = DropCounters()
        self._dead_letters = DeadLetterWriter(self.dead_letter, cfg.lane_max_events, self.name,
                                              block_timeout=cfg.shutdown_timeout)
        self._flusher = Flusher(self.name, cfg, self.policy, self._ingress, lambda: self._lanes, self._drops)
        self._thread = DaemonThread(f"timelapser-flush-{self.name}", self._flusher.run)

    # --- sinks ---------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        """Deliver to ``sink`` too, through a lane (queue + thread) of its own."""
        if not callable(getattr(sink, "send", None)):
            raise TypeError(f"sink {sink!r} has no send(batch) method; see timelapser_workers.Sink")
        base = sink_name(sink)
        taken = {lane.name for lane in self._lanes}
        name, n = base, 2
        while name in taken:
            name, n = f"{base}#{n}", n + 1
        lane = self._new_lane(sink, name)
        with self._lock:
            if self._closing:
                raise BatcherClosedError(f"batcher {self.name!r} is closed; cannot add sink {name!r}")
            self._lanes = self._lanes + [lane]
            if self._thread.started:
                lane.start()

    def _new_lane(self, sink: Sink, name: str) -> SinkLane:
        cfg = self.config
        return SinkLane(sink, name, max_retries=cfg.max_retries, retry_delay=cfg.retry_delay,
                        retry_max_delay=cfg.retry_max_delay, max_events=cfg.lane_max_events,
                        dead_letter=self._dead_letters)

    @property
    def sinks(self) -> list[Sink]:
        return [lane.sink for lane in self._lanes]

    @property
    def closed(self) -> bool:
        return self._closing

    @property
    def shutdown_timeout(self) -> float:
        return self.config.shutdown_timeout

    # --- signals -------------------------------------------------------------------------
    def connect(self, *signals: Signal | str, sender: Any = ANY) -> None:
        """Turn sends of ``signals`` (default: the eight standard ones) from ``sender``
        (default: anyone) into events. Receivers are held strongly; undo with disconnect()."""
        self._signals.connect(*signals, sender=sender)

    def disconnect(self, sender: Any = None) -> None:
        """Stop listening: to ``sender`` only, or (None) to every connection made by connect()."""
        self._signals.disconnect(sender)

    def _submit_from_signal(self, event: Event, batch: bool) -> bool:
        try:
            return self._enqueue(event if batch else Unbatched(event), event)
        except (BatcherClosedError, QueueFullError) as exc:  # counted; never raised into send()
            self._drops.warnings.warn(type(exc).__name__, "%s", exc)
            return False

    def _reject(self, event_type: str, sender: Any, error: Exception) -> None:
        self._drops.reject("invalid", "refused a %s event from %r: %s", event_type, sender, error)

    # --- producers -----------------------------------------------------------------------
    def submit(self, event: Event, *, batch: bool = True) -> bool:
        """Queue ``event``; False if the queue was full and it (or an older one) was dropped.

        ``batch=False`` delivers this event on its own as soon as the flush thread sees it,
        after what its worker had pending (the per-producer rollback switch).
        Raises BatcherClosedError after close(), QueueFullError only with overflow='block'
        when the queue stayed full for ``block_timeout`` seconds.
        """
        if not isinstance(event, Event):
            raise TypeError(f"submit() takes an Event (see make_event), got {event!r}")
        return self._enqueue(event if batch else Unbatched(event), event)

    def emit(self, type: str, data: Mapping[str, Any] | None = None, *, worker: str | None = None,
             source: str | None = None, priority: Priority | int | str = Priority.NORMAL) -> Event:
        """Build an event (validated, JSON-safe, stamped) and submit it; returns the event."""
        event = make_event(type, data, worker=worker, source=source, priority=priority,
                           max_bytes=self.config.max_event_bytes)
        self._enqueue(event, event)
        return event

    def _enqueue(self, item: Event | Unbatched, event: Event) -> bool:
        if not self._thread.started and not self._closing:
            self._start()
        urgent = item is not event or event.priority >= self.config.flush_priority  # unbatched: at once
        try:
            reason = self._overflow.offer(self._ingress, item, (event.worker, event.type, event.source), urgent)
        except IngressClosed:
            self._drops.reject("closed", None)
            raise BatcherClosedError(
                f"batcher {self.name!r} is closed; refused {event.type} event {event.id}") from None
        if reason is None:
            return True
        self._drops.drop(reason, 1, "batcher %r queue is full (%d events): dropping events (%s)",
                         self.name, self.config.max_queue_size, reason)
        if reason == "block_timeout":
            raise QueueFullError(
                f"batcher {self.name!r} queue stayed full ({self.config.max_queue_size} events) "
                f"for block_timeout={self.config.block_timeout}s; {event.type} event {event.id} dropped")
        return False

    def _start(self) -> None:
        with self._lock:
            if self._thread.started or self._closing:
                return
            for lane in self._lanes:
                lane.start()
            self._thread.start()

    # --- flush and close -----------------------------------------------------------------
    def _timeout(self, timeout: float | None) -> float:
        """``timeout`` checked, or shutdown_timeout when None."""
        return self.config.shutdown_timeout if timeout is None else check_timeout("timeout", timeout)

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Deliver everything submitted before this call, waiting at most ``timeout`` seconds
        (default shutdown_timeout). Cuts the batching window short."""
        deadline = time.monotonic() + self._timeout(timeout)
        if not self._thread.alive:
            return FlushResult(0, 0, self._ingress.qsize() + sum(lane.pending for lane in self._lanes))
        request = FlushRequest(self._lanes)
        self._ingress.put_control(request)
        result = request.wait(deadline, queued=self._ingress.qsize)
        self._dead_letters.wait_idle(deadline)  # what failed is on disk when flush returns
        return result

    def close(self, timeout: float | None = None) -> FlushResult:
        """Refuse new events, deliver what is pending, stop the threads and close the sinks,
        all within ``timeout`` seconds (default shutdown_timeout). Idempotent."""
        deadline = time.monotonic() + self._timeout(timeout)
        with self._lock:
            first = not self._closing
            self._closing = True
        if not first:
            self._closed.wait(remaining(deadline))
            return self._close_result or FlushResult(0, 0, sum(lane.pending for lane in self._lanes))
        self.disconnect()
        self._ingress.close()  # from here on every put is refused (and counted), none slips in
        lanes = self._lanes
        before = [(lane.delivered, lane.failed) for lane in lanes]
        if self._thread.started:
            self._ingress.put_control(STOP)
            self._thread.join(deadline)
        late = [item if type(item) is Event else item.event for item in self._ingress.drain()
                if type(item) in (Event, Unbatched)]
        if late:  # accepted, but the flush thread did not get to them by the deadline
            self._drops.drop("shutdown_timeout", len(late), None)
            self._dead_letters.submit(late, "(batcher)", "shutdown_timeout", None)
        close_lanes(lanes, deadline)
        # what the deadline dead-lettered still has to reach the file: a short grace for that
        self._dead_letters.close(max(deadline, time.monotonic() + 0.25))
        result = FlushResult(
            sum(lane.delivered - d for lane, (d, _) in zip(lanes, before)),
            sum(lane.failed - f for lane, (_, f) in zip(lanes, before)),
            sum(lane.pending for lane in lanes),
        )
        self._close_result = result
        self._closed.set()
        return result

    def __enter__(self) -> "EventBatcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- stats ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since construction (or since fork, in a child)."""
        depth, flusher = self._ingress.qsize(), self._flusher
        rejected, dropped = self._drops.snapshot()
        return {
            "events_received": flusher.taken + depth,
            "events_rejected": rejected,
            "events_dropped": dropped,
            "events_batched": flusher.events_batched,
            "events_saved": flusher.events_batched - flusher.batches_created,
            "batches_created": flusher.batches_created,
            "flushes": flusher.flushes,
            "queue_depth": depth,
            "queue_high_water": flusher.high_water,
            "queue_capacity": self.config.max_queue_size,
            "dead_letter": self._dead_letters.stats(),
            "sinks": {lane.name: lane.stats() for lane in self._lanes},
        }

    def __repr__(self) -> str:
        state = "closed" if self._closing else ("running" if self._thread.started else "idle")
        return f"<EventBatcher {self.name!r} {state} sinks={[lane.name for lane in self._lanes]}>"

    # --- fork ----------------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        """The child starts empty: fresh queue, threads and counters, same sinks and settings."""
        self._init_runtime()
        self._lanes = [self._new_lane(lane.sink, lane.name) for lane in self._lanes]
        for lane in self._lanes:
            hook = getattr(lane.sink, "after_fork_in_child", None)
            if hook is not None:
                try:
                    hook()
                except Exception:
                    logger.exception("sink %r failed to reset after fork", lane.name)
