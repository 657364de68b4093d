"""EventBatcher: a bounded queue, one flush thread, and a lane per sink.

Producers (signal receivers, :meth:`EventBatcher.submit`, :meth:`EventBatcher.emit`) only
build an Event and put it on the bounded queue: no I/O, no lock held across a sink call.
One daemon flush thread, started on first use (and again in a forked child, which starts
empty), sleeps until the next deadline, groups pending events per worker and flushes a worker
when one of its (type, source) groups reaches ``batch_size``, when its oldest event is
``batch_timeout`` old, or at once for an event at or above ``flush_priority`` (with everything
pending before it). Each flush is aggregated (see aggregation.py) and handed to every sink's
lane without waiting. ``close()`` and an atexit hook deliver what is left under a deadline.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import threading
import time
import weakref
from typing import Any, Iterable, Mapping, NamedTuple

from blinker import ANY, Signal

from timelapser_workers import signals as _signals
from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.config import BatcherConfig
from timelapser_workers.deadletter import DeadLetterHandler, DeadLetterWriter, resolve_dead_letter
from timelapser_workers.errors import BatcherClosedError, QueueFullError
from timelapser_workers.events import Event, Priority, make_event
from timelapser_workers.lane import LaneBatch, Marker, SinkLane

__all__ = ["EventBatcher", "FlushResult"]

logger = logging.getLogger(__name__)


class FlushResult(NamedTuple):
    """What a flush or close achieved, counted in original events summed over sinks:
    delivered and failed (dead-lettered) while it waited, and still pending at its deadline."""

    delivered: int
    failed: int
    pending: int

    @property
    def complete(self) -> bool:
        """True when nothing was left pending at the deadline."""
        return self.pending == 0


class _Closed(Exception):
    """Raised inside the ingress when a put arrives after close() shut it."""


class _Ingress:
    """The bounded event queue between producers and the flush thread.

    A put takes one plain lock and appends; it wakes the flush thread only when that thread
    has something to do: it sleeps without a deadline (idle), the event is urgent, the queue
    is half full (or 4096 deep), or this event completes a group of ``batch_size``. For the
    last, the flush thread leaves, before it sleeps, how many more events each pending
    (worker, type, source) group needs (``expect``); producers count down under the lock, and
    a group not yet pending needs ``batch_size``. So a burst costs the producers no thread
    switch per event, and a size trigger still fires on the event that completes the group.
    Control items (flush requests, stop) bypass the bound and always wake.
    """

    def __init__(self, maxsize: int, batch_size: int) -> None:
        self.maxsize = maxsize
        self.batch_size = batch_size
        self.drain_at = max(1, min(maxsize // 2, 4096))
        self.left: dict[tuple[Any, ...], int] = {}  # events each group still needs
        self.items: collections.deque[Any] = collections.deque()
        self.mutex = threading.Lock()
        self.not_full = threading.Condition(self.mutex)
        self.blocked = 0  # producers waiting in put_wait
        self.wakeup = threading.Event()
        self.idle = False  # the flush thread sleeps with no deadline
        self.closed = False  # set under the mutex by close(): no put gets in after it

    def close(self) -> None:
        with self.mutex:
            self.closed = True
            self.not_full.notify_all()  # blocked producers: refused now, not at their timeout

    def qsize(self) -> int:
        return len(self.items)

    def expect(self, left: dict[tuple[Any, ...], int]) -> None:
        """The flush thread: how many more events each pending group needs to be full."""
        with self.mutex:
            self.left = left

    def _arrived(self, key: tuple[Any, ...]) -> bool:
        """Count an arrival for ``key`` (under the mutex); True if it completes its group."""
        left = self.left.get(key, self.batch_size) - 1
        self.left[key] = left
        return left <= 0

    def _wake(self, depth: int, urgent: bool) -> None:
        if (urgent or self.idle or depth >= self.drain_at) and not self.wakeup.is_set():
            self.wakeup.set()

    def put(self, item: Any, key: tuple[Any, ...], urgent: bool) -> bool:
        """Append unless full; False if full (the item was not queued)."""
        with self.mutex:
            if self.closed:
                raise _Closed
            depth = len(self.items)
            if depth >= self.maxsize:
                return False
            self.items.append(item)
            urgent = self._arrived(key) or urgent
        self._wake(depth + 1, urgent)
        return True

    def put_wait(self, item: Any, key: tuple[Any, ...], urgent: bool, timeout: float) -> bool:
        """Append, waiting up to ``timeout`` seconds for room; False if none came."""
        with self.mutex:
            if len(self.items) >= self.maxsize and not self.closed:
                deadline = time.monotonic() + timeout
                self.blocked += 1
                try:
                    while len(self.items) >= self.maxsize and not self.closed:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return False
                        if not self.wakeup.is_set():
                            self.wakeup.set()  # a full queue is worth draining now
                        self.not_full.wait(left)
                finally:
                    self.blocked -= 1
            if self.closed:
                raise _Closed
            self.items.append(item)
            depth = len(self.items)
            urgent = self._arrived(key) or urgent
        self._wake(depth, urgent)
        return True

    def put_drop_oldest(self, item: Any, key: tuple[Any, ...], urgent: bool) -> Any:
        """Put without waiting; when full, remove and return the oldest event first."""
        with self.mutex:
            if self.closed:
                raise _Closed
            dropped = None
            if len(self.items) >= self.maxsize:
                for i, old in enumerate(self.items):
                    if type(old) is Event or type(old) is _Unbatched:
                        dropped = old
                        del self.items[i]
                        break
            self.items.append(item)
            depth = len(self.items)
            urgent = self._arrived(key) or urgent
        self._wake(depth, urgent)
        return dropped

    def put_control(self, item: Any) -> None:
        with self.mutex:
            self.items.append(item)
        self.wakeup.set()

    def sleep(self, timeout: float | None) -> None:
        """The flush thread waits for a wake-up or ``timeout``; at once if anything is queued."""
        self.idle = timeout is None
        if not self.items:  # read after idle is set: a put that we miss here will see idle
            self.wakeup.wait(timeout)
        self.idle = False
        self.wakeup.clear()  # what woke us is drained next

    def drain(self) -> list[Any]:
        """Take everything queued now, without waiting."""
        with self.mutex:
            items = list(self.items)
            self.items.clear()
            if self.blocked:
                self.not_full.notify_all()
        return items


class _FlushRequest:
    __slots__ = ("ready", "markers")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.markers: list[tuple[SinkLane, Marker]] = []


_STOP = object()


class _Unbatched:
    """An event to deliver on its own, at once, unaggregated (a use_batching=False producer)."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event


class _WorkerBuffer:
    """One worker's pending events, in arrival order, with per-(type, source) counts."""

    __slots__ = ("events", "counts", "oldest")

    def __init__(self, oldest: float) -> None:
        self.events: list[Event] = []
        self.counts: dict[tuple[str, str | None], int] = {}
        self.oldest = oldest  # monotonic creation time of the oldest pending event


class _RateLimitedWarnings:
    """At most one warning per key per ``interval`` seconds, saying how many were held back."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def warn(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._held[key] += 1
                return
            self._last[key] = now
            held = self._held.pop(key, 0)
        if held:
            message += f" ({held} similar since the last such warning)"
        logger.warning(message, *args)


_live: "weakref.WeakSet[EventBatcher]" = weakref.WeakSet()


class EventBatcher:
    """Batch events from many producer threads and deliver them to sinks.

    ``sinks``: objects with ``send(batch)`` (see timelapser_workers.contract.Sink). Every setting left as None
    comes from ``TIMELAPSER_<NAME>`` in the environment or constants.py; a bad value raises
    ValueError naming it. ``dead_letter``: a callable(events, sink_name, reason, error) or a
    path for the JSON-lines default. ``use_batching=False`` sends every event on its own.
    """

    def __init__(
        self,
        sinks: Iterable[Any] = (),
        *,
        batch_size: int | None = None,
        batch_timeout: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        retry_max_delay: float | None = None,
        max_queue_size: int | None = None,
        overflow: str | None = None,
        block_timeout: float | None = None,
        lane_max_events: int | None = None,
        shutdown_timeout: float | None = None,
        max_event_bytes: int | None = None,
        flush_priority: Priority | int | str | None = None,
        use_batching: bool = True,
        aggregation: AggregationPolicy | None = None,
        dead_letter: DeadLetterHandler | str | os.PathLike[str] | None = None,
        name: str = "events",
    ) -> None:
        self.config = BatcherConfig.resolve(
            batch_size=batch_size, batch_timeout=batch_timeout, max_retries=max_retries,
            retry_delay=retry_delay, retry_max_delay=retry_max_delay,
            max_queue_size=max_queue_size, overflow=overflow, block_timeout=block_timeout,
            lane_max_events=lane_max_events, shutdown_timeout=shutdown_timeout,
            max_event_bytes=max_event_bytes,
            flush_priority=flush_priority, use_batching=use_batching,
        )
        self.name = name
        self.policy = aggregation if aggregation is not None else AggregationPolicy()
        self.dead_letter = resolve_dead_letter(dead_letter)
        self._lanes: list[SinkLane] = []
        self._connections: list[tuple[Signal, Any, Any]] = []
        self._closing = False
        self._closed = threading.Event()
        self._close_result: FlushResult | None = None
        self._init_runtime()
        if callable(getattr(sinks, "send", None)):
            raise TypeError(f"sinks must be a list of sinks; got one sink, {sinks!r}: pass [{sinks!r}]")
        for sink in sinks:
            self.add_sink(sink)
        _live.add(self)

    def _init_runtime(self) -> None:
        """Queue, thread and counters: built here and again in a forked child."""
        self._lock = threading.Lock()
        self._queue = _Ingress(self.config.max_queue_size,
                               self.config.batch_size if self.config.use_batching else 1)
        self._queue.closed = self._closing
        self._dead_letters = DeadLetterWriter(self.dead_letter, self.config.lane_max_events, self.name,
                                              block_timeout=self.config.shutdown_timeout)
        self._overflow = self.config.overflow  # read on every put: one attribute, not two
        self._flush_priority = self.config.flush_priority
        self._thread: threading.Thread | None = None
        self._warnings = _RateLimitedWarnings()
        self._taken = 0  # events taken off the queue by the flush thread (its counter alone)
        self._rejected: collections.Counter[str] = collections.Counter()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._flushes = 0
        self._batches_created = 0
        self._events_batched = 0
        self._high_water = 0

    # --- configuration -------------------------------------------------------------------
    def add_sink(self, sink: Any) -> None:
        """Deliver to ``sink`` too, through a lane (queue + thread) of its own."""
        if not callable(getattr(sink, "send", None)):
            raise TypeError(f"sink {sink!r} has no send(batch) method; see timelapser_workers.contract.Sink")
        base = getattr(sink, "name", None) or type(sink).__name__
        taken = {lane.name for lane in self._lanes}
        name, n = str(base), 2
        while name in taken:
            name, n = f"{base}#{n}", n + 1
        lane = self._new_lane(sink, name)
        with self._lock:
            if self._closing:
                raise BatcherClosedError(f"batcher {self.name!r} is closed; cannot add sink {name!r}")
            self._lanes = self._lanes + [lane]
            if self._thread is not None:
                lane.start()

    def _new_lane(self, sink: Any, name: str) -> SinkLane:
        cfg = self.config
        return SinkLane(
            sink, name, max_retries=cfg.max_retries, retry_delay=cfg.retry_delay,
            retry_max_delay=cfg.retry_max_delay, max_events=cfg.lane_max_events,
            dead_letter=self._dead_letters,
        )

    @property
    def sinks(self) -> list[Any]:
        return [lane.sink for lane in self._lanes]

    @property
    def closed(self) -> bool:
        return self._closing

    # --- signals -------------------------------------------------------------------------
    def connect(self, *signals: Signal | str, sender: Any = ANY) -> None:
        """Turn sends of ``signals`` (default: the eight standard ones) from ``sender``
        (default: anyone) into events. Receivers are held strongly; undo with disconnect()."""
        targets = [_signals.get(s) for s in signals] or _signals.standard_signals()
        for signal in targets:
            connected = [(sig, snd) for sig, _, snd in self._connections if sig is signal]
            if (signal, ANY) in connected or (signal, sender) in connected:
                continue  # already hears this sender: connecting again would deliver twice
            if sender is ANY:  # hears everyone from now on: drop the narrower connections
                self._disconnect(lambda sig, snd: sig is signal)
            receiver = self._receiver_for(signal.name)
            signal.connect(receiver, sender=sender, weak=False)
            self._connections.append((signal, receiver, sender))

    def disconnect(self, sender: Any = None) -> None:
        """Stop listening: to ``sender`` only, or (None) to every connection made by connect()."""
        self._disconnect(lambda sig, snd: sender is None or snd == sender)

    def _disconnect(self, which: Any) -> None:
        keep = []
        for signal, receiver, snd in self._connections:
            if which(signal, snd):
                signal.disconnect(receiver, sender=snd)
            else:
                keep.append((signal, receiver, snd))
        self._connections = keep

    def _receiver_for(self, event_type: str) -> Any:
        def receive(sender: Any, **kwargs: Any) -> bool:
            source = kwargs.pop("source", None)
            if source is None:
                source = getattr(sender, "event_source", None)
            priority = kwargs.pop("priority", Priority.NORMAL)
            batch = kwargs.pop("use_batching", getattr(sender, "use_batching", True)) is not False
            extra = kwargs.pop("data", None)
            if extra is None:
                data: Mapping[str, Any] = kwargs
            elif isinstance(extra, Mapping):
                data = {**extra, **kwargs}
            else:  # not a dict: keep it as an ordinary field called "data"
                data = {**kwargs, "data": extra}
            try:
                event = make_event(
                    event_type, data, source=source, worker=_sender_name(sender), priority=priority,
                    max_bytes=self.config.max_event_bytes,
                )
            except (TypeError, ValueError) as exc:
                # a bad payload must not raise into the worker's send(): refuse it, count it, say it
                with self._lock:
                    self._rejected["invalid"] += 1
                self._warnings.warn(
                    "invalid", "refused a %s event from %r: %s", event_type, sender, exc
                )
                return False
            try:
                return self._enqueue(event if batch else _Unbatched(event), event)
            except (BatcherClosedError, QueueFullError) as exc:  # counted; never raised into send()
                self._warnings.warn(type(exc).__name__, "%s", exc)
                return False

        receive.__qualname__ = f"EventBatcher.receive[{event_type}]"
        return receive

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
        return self._enqueue(event if batch else _Unbatched(event), event)

    def emit(
        self,
        type: str,
        data: Mapping[str, Any] | None = None,
        *,
        worker: str | None = None,
        source: str | None = None,
        priority: Priority | int | str = Priority.NORMAL,
    ) -> Event:
        """Build an event (validated, JSON-safe, stamped) and submit it; returns the event."""
        event = make_event(type, data, worker=worker, source=source, priority=priority,
                           max_bytes=self.config.max_event_bytes)
        self._enqueue(event, event)
        return event

    def _enqueue(self, item: Event | _Unbatched, event: Event) -> bool:
        try:
            return self._put(item, event)
        except _Closed:
            with self._lock:
                self._rejected["closed"] += 1
            raise BatcherClosedError(
                f"batcher {self.name!r} is closed; refused {event.type} event {event.id}"
            ) from None

    def _put(self, item: Event | _Unbatched, event: Event) -> bool:
        if self._thread is None and not self._closing:
            self._start()
        urgent = item is not event or event.priority >= self._flush_priority  # unbatched: at once
        key = (event.worker, event.type, event.source)
        mode = self._overflow
        if mode == "drop_newest":
            if self._queue.put(item, key, urgent):
                return True
            self._drop("drop_newest")
            return False
        if mode == "drop_oldest":
            if self._queue.put_drop_oldest(item, key, urgent) is not None:
                self._drop("drop_oldest")
                return False
            return True
        if self._queue.put_wait(item, key, urgent, self.config.block_timeout):
            return True
        self._drop("block_timeout")
        raise QueueFullError(
            f"batcher {self.name!r} queue stayed full ({self.config.max_queue_size} events) "
            f"for block_timeout={self.config.block_timeout}s; {event.type} event {event.id} dropped"
        )

    def _drop(self, reason: str) -> None:
        with self._lock:
            self._dropped[reason] += 1
        self._warnings.warn(
            reason, "batcher %r queue is full (%d events): dropping events (%s)",
            self.name, self.config.max_queue_size, reason,
        )

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._closing:
                return
            for lane in self._lanes:
                lane.start()
            thread = threading.Thread(target=self._run, name=f"timelapser-flush-{self.name}", daemon=True)
            thread.start()
            self._thread = thread

    # --- the flush thread ----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._flush_loop()
        except BaseException:  # a bug here must never be silent: every later event would stall
            logger.critical("the flush thread of batcher %r died; events are no longer "
                            "delivered (close() dead-letters what is queued)", self.name, exc_info=True)
            raise

    def _flush_loop(self) -> None:
        cfg = self.config
        buffers: dict[str | None, _WorkerBuffer] = {}
        ingress = self._queue
        sleep, drain = ingress.sleep, ingress.drain
        stopping = False
        while not stopping:
            # what each pending group still needs to be full: the producer whose event
            # completes one wakes us (a group not pending yet needs batch_size)
            ingress.expect({(worker, etype, source): cfg.batch_size - count
                            for worker, buf in buffers.items()
                            for (etype, source), count in buf.counts.items()})
            if buffers:
                wait = min(b.oldest for b in buffers.values()) + cfg.batch_timeout - time.monotonic()
                sleep(max(wait, 0.0))
            else:
                sleep(None)  # idle: sleep until something arrives (close() sends _STOP)
            items = drain()
            taken_before = self._taken
            units: list[list[Event]] = []
            for item in items:
                if type(item) is Event:
                    self._taken += 1
                    if not cfg.use_batching:
                        units.append([item])
                        continue
                    buf = buffers.get(item.worker)
                    if buf is None:
                        buf = buffers[item.worker] = _WorkerBuffer(item.created_mono)
                    buf.events.append(item)
                    key = (item.type, item.source)
                    count = buf.counts[key] = buf.counts.get(key, 0) + 1
                    if item.priority >= cfg.flush_priority:
                        units.extend(b.events for b in buffers.values())
                        buffers.clear()
                    elif count >= cfg.batch_size:
                        units.append(buf.events)
                        del buffers[item.worker]
                elif type(item) is _Unbatched:
                    self._taken += 1
                    event = item.event
                    buf = buffers.pop(event.worker, None)
                    if buf is not None:  # what its worker had pending goes first
                        units.append(buf.events)
                    self._dispatch(units)
                    units = []
                    self._dispatch_alone(event)
                elif isinstance(item, _FlushRequest):
                    units.extend(b.events for b in buffers.values())
                    buffers.clear()
                    self._dispatch(units)
                    units = []
                    item.markers = [(lane, Marker(0)) for lane in self._lanes]
                    for lane, marker in item.markers:
                        lane.put_marker(marker)
                    item.ready.set()
                elif item is _STOP:
                    stopping = True
            if self._taken - taken_before > self._high_water:  # the queue's depth when drained
                self._high_water = self._taken - taken_before
            now = time.monotonic()
            for worker, buf in list(buffers.items()):
                if stopping or buf.oldest + cfg.batch_timeout <= now:
                    units.append(buf.events)
                    del buffers[worker]
            self._dispatch(units)

    def _dispatch(self, units: list[list[Event]]) -> None:
        """Aggregate each flushed unit and hand the result to every lane (never waits)."""
        if not units:
            return
        raw = [e for unit in units for e in unit]
        lanes = self._lanes
        if not lanes:
            self._discard(len(raw))
            return
        if not self.config.use_batching:
            for event in raw:
                self._dispatch_alone(event)
            return
        if not any(lane.wants_aggregated for lane in lanes):  # nobody reads the merge: skip it
            self._flushes += 1
            batch = LaneBatch(raw)
            for lane in lanes:
                lane.put(batch)
            return
        aggregated: list[Event] = []
        for unit in units:
            try:
                result = self.policy.aggregate(unit)
            except Exception:  # a broken policy must not stop delivery: send these unmerged
                logger.exception("aggregation policy %r failed; delivering %d event(s) unmerged",
                                 self.policy, len(unit))
                aggregated.extend(unit)
                continue
            aggregated.extend(result.events)
            self._batches_created += result.batches_created
            self._events_batched += result.events_batched
        self._flushes += 1
        merged, unmerged = LaneBatch(aggregated), None
        for lane in lanes:
            if lane.wants_aggregated:
                lane.put(merged)
            else:
                unmerged = unmerged or LaneBatch(raw)
                lane.put(unmerged)

    def _dispatch_alone(self, event: Event) -> None:
        lanes = self._lanes
        if not lanes:
            self._discard(1)
            return
        self._flushes += 1
        batch = LaneBatch((event,))
        for lane in lanes:
            lane.put(batch)

    def _discard(self, count: int) -> None:
        with self._lock:
            self._dropped["no_sinks"] += count
        self._warnings.warn(
            "no_sinks", "batcher %r has no sinks: %d event(s) discarded (add_sink() one)",
            self.name, count,
        )

    # --- flush and close -----------------------------------------------------------------
    def _timeout(self, timeout: float | None) -> float:
        """``timeout`` checked, or shutdown_timeout when None."""
        if timeout is None:
            return self.config.shutdown_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"timeout={timeout!r} must be a number of seconds >= 0 (or None)")
        return float(timeout)

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Deliver everything submitted before this call, waiting at most ``timeout`` seconds
        (default shutdown_timeout). Cuts the batching window short."""
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        if self._thread is None or not self._thread.is_alive():
            return FlushResult(0, 0, self._queue.qsize() + sum(l.pending for l in self._lanes))
        before = {id(l): (l.delivered, l.failed) for l in self._lanes}
        request = _FlushRequest()
        self._queue.put_control(request)
        request.ready.wait(max(0.0, deadline - time.monotonic()))
        delivered = failed = pending = 0
        if not request.ready.is_set():
            pending += self._queue.qsize()
        for lane, marker in request.markers or [(l, None) for l in self._lanes]:
            d0, f0 = before.get(id(lane), (0, 0))
            if marker is not None and marker.done.wait(max(0.0, deadline - time.monotonic())):
                delivered += marker.delivered - d0
                failed += marker.failed - f0
            else:
                delivered += lane.delivered - d0
                failed += lane.failed - f0
                target = marker.target if marker is not None else lane.enqueued
                pending += max(0, target - lane.delivered - lane.failed)
        self._dead_letters.wait_idle(deadline)  # what failed is on disk when flush returns
        return FlushResult(delivered, failed, pending)

    def close(self, timeout: float | None = None) -> FlushResult:
        """Refuse new events, deliver what is pending, stop the threads and close the sinks,
        all within ``timeout`` seconds (default shutdown_timeout). Idempotent."""
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout
        with self._lock:
            first = not self._closing
            self._closing = True
        if not first:
            self._closed.wait(max(0.0, deadline - time.monotonic()))
            return self._close_result or FlushResult(0, 0, sum(l.pending for l in self._lanes))
        self.disconnect()
        self._queue.close()  # from here on every put is refused (and counted), none slips in
        lanes = self._lanes
        before = [(l.delivered, l.failed) for l in lanes]
        thread = self._thread
        if thread is not None:
            self._queue.put_control(_STOP)
            thread.join(max(0.0, deadline - time.monotonic()))
        late = [e if type(e) is Event else e.event for e in self._queue.drain()
                if type(e) in (Event, _Unbatched)]
        if late:  # accepted, but the flush thread did not get to them by the deadline
            with self._lock:
                self._dropped["shutdown_timeout"] += len(late)
            self._dead_letters.submit(late, "(batcher)", "shutdown_timeout", None)
        for lane in lanes:
            lane.stop(deadline)
        finished = [lane.join(deadline) for lane in lanes]
        for lane, ok in zip(lanes, finished):
            if ok:
                lane.close_sink(deadline)
            else:
                logger.warning("sink %r still busy at the deadline; not closed", lane.name)
        # what the deadline dead-lettered still has to reach the file: a short grace for that
        self._dead_letters.close(max(deadline, time.monotonic() + 0.25))
        result = FlushResult(
            sum(l.delivered - d for l, (d, _) in zip(lanes, before)),
            sum(l.failed - f for l, (_, f) in zip(lanes, before)),
            sum(l.pending for l in lanes),
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
        depth = self._queue.qsize()
        with self._lock:
            rejected, dropped = dict(self._rejected), dict(self._dropped)
        return {
            "events_received": self._taken + depth,
            "events_rejected": rejected,
            "events_dropped": dropped,
            "events_batched": self._events_batched,
            "events_saved": self._events_batched - self._batches_created,
            "batches_created": self._batches_created,
            "flushes": self._flushes,
            "queue_depth": depth,
            "queue_high_water": self._high_water,
            "queue_capacity": self.config.max_queue_size,
            "dead_letter": self._dead_letters.stats(),
            "sinks": {lane.name: lane.stats() for lane in self._lanes},
        }

    def __repr__(self) -> str:
        state = "closed" if self._closing else ("running" if self._thread else "idle")
        return f"<EventBatcher {self.name!r} {state} sinks={[l.name for l in self._lanes]}>"

    # --- fork ----------------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        """The child starts empty: fresh queue, threads and counters, same sinks and settings."""
        self._init_runtime()
        self._lanes = [self._new_lane(l.sink, l.name) for l in self._lanes]
        for lane in self._lanes:
            hook = getattr(lane.sink, "after_fork_in_child", None)
            if hook is not None:
                try:
                    hook()
                except Exception:
                    logger.exception("sink %r failed to reset after fork", lane.name)


def _sender_name(sender: Any) -> str | None:
    """The worker name of a signal's sender: a str itself, else its ``name``, else its type."""
    if sender is None or isinstance(sender, str):
        return sender or None
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) and name else type(sender).__name__


def _after_fork_in_child() -> None:
    for batcher in list(_live):
        batcher._after_fork_in_child()


def _close_all_at_exit() -> None:
    """Deliver what every open batcher still holds, each within its shutdown_timeout."""
    start = time.monotonic()  # all deadlines run from here, so they do not add up
    for batcher in list(_live):
        if not batcher.closed:
            try:
                batcher.close(max(0.0, start + batcher.config.shutdown_timeout - time.monotonic()))
            except Exception:
                logger.exception("closing %r at exit failed", batcher)


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
