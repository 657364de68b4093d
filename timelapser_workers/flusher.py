"""The flush loop: the batcher's one thread, from the ingress to the sinks' lanes.

It sleeps until the next deadline, takes everything queued, groups events per worker and
flushes a worker when one of its (type, source) groups reaches ``batch_size``, when its oldest
event is ``batch_timeout`` old, or at once for an event at or above ``flush_priority`` (with
everything pending before it). Each flush is aggregated (see aggregation.py) and handed to
every sink's lane. Control items on the ingress: a :class:`FlushRequest` (flush everything now
and mark each lane) and :data:`STOP`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, NamedTuple, Sequence

from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.config import BatcherConfig
from timelapser_workers.drops import DropCounters
from timelapser_workers.events import Event
from timelapser_workers.ingress import Ingress, Unbatched
from timelapser_workers.lane import LaneBatch, Marker, SinkLane
from timelapser_workers.threads import remaining

__all__ = ["Flusher", "FlushRequest", "FlushResult", "STOP"]

logger = logging.getLogger("timelapser_workers.batcher")


class _Counts(NamedTuple):
    delivered: int
    failed: int
    pending: int


class FlushResult(_Counts):
    """What a flush or close achieved, counted in original events summed over sinks:
    delivered and failed (dead-lettered) while it waited, and still pending (in memory) at
    its deadline: a 3-tuple. ``spooled`` (not part of the tuple) is what the sinks' spools held
    on disk when it returned: delivered when each sink is back, or by the next batcher with
    the same sink names."""

    spooled: int

    def __new__(cls, delivered: int, failed: int, pending: int, spooled: int = 0) -> "FlushResult":
        result = super().__new__(cls, delivered, failed, pending)
        result.spooled = spooled
        return result

    def __repr__(self) -> str:
        return (f"FlushResult(delivered={self.delivered}, failed={self.failed}, "
                f"pending={self.pending}, spooled={self.spooled})")

    @property
    def complete(self) -> bool:
        """True when nothing was left pending in memory at the deadline."""
        return self.pending == 0


class FlushRequest:
    """Flush everything now. The flush thread sets ``ready`` once every lane has a marker
    after what it flushed; :meth:`wait` then counts what the lanes did up to their markers."""

    __slots__ = ("ready", "markers", "_before", "_lanes")

    def __init__(self, lanes: Sequence[SinkLane]) -> None:
        self.ready = threading.Event()
        self.markers: list[tuple[SinkLane, Marker]] = []
        self._lanes = list(lanes)
        self._before = {id(lane): (lane.delivered, lane.failed) for lane in self._lanes}

    def wait(self, deadline: float, queued: Callable[[], int]) -> FlushResult:
        """Wait for every marker until ``deadline``; ``queued()``: events still on the ingress."""
        self.ready.wait(remaining(deadline))
        pending = 0 if self.ready.is_set() else queued()
        delivered = failed = 0
        marked: list[tuple[SinkLane, Marker | None]] = list(self.markers) or [(lane, None) for lane in self._lanes]
        for lane, marker in marked:
            d0, f0 = self._before.get(id(lane), (0, 0))
            if marker is not None and lane.wait_marker(marker, deadline):
                delivered += marker.delivered - d0
                failed += marker.failed - f0
            else:
                delivered += lane.delivered - d0
                failed += lane.failed - f0
                target = marker.target if marker is not None else lane.enqueued
                pending += max(0, target - lane.settled)
        return FlushResult(delivered, failed, pending, sum(lane.spool_events for lane in self._lanes))


STOP = object()


class _Buffer:
    """Pending events of one worker (or of all, when nobody aggregates), in arrival order,
    with per-(type, source) counts and the fewest events any of those groups still needs."""

    __slots__ = ("events", "counts", "oldest", "need")

    def __init__(self, oldest: float, need: int) -> None:
        self.events: list[Event] = []
        self.counts: dict[tuple[str, str | None], int] = {}
        self.oldest = oldest  # monotonic creation time of the oldest pending event
        self.need = need


_ALL = object()  # the one buffer's key when no lane reads aggregated events


class Flusher:
    """Runs the flush loop of one batcher (:meth:`run` is the thread's target; after STOP it
    calls ``on_stop``, the pipeline's shutdown sequence) and counts
    what it did: ``taken`` (events off the ingress), ``flushes``, ``batches_created``,
    ``events_batched``, ``high_water`` (the most events taken in one go)."""

    def __init__(
        self,
        name: str,
        config: BatcherConfig,
        policy: AggregationPolicy,
        ingress: Ingress,
        lanes: Callable[[], Sequence[SinkLane]],
        drops: DropCounters,
        on_stop: Callable[[], None],
    ) -> None:
        self.name = name
        self.config = config
        self.policy = policy
        self.ingress = ingress
        self.lanes = lanes
        self.drops = drops
        self.on_stop = on_stop
        self.taken = 0
        self.flushes = 0
        self.batches_created = 0
        self.events_batched = 0
        self.high_water = 0

    def run(self) -> None:
        try:
            self._loop()
            self.on_stop()  # STOP came: the shutdown sequence runs here, after the last flush
        except BaseException:  # a bug here must never be silent: every later event would stall
            logger.critical("the flush thread of batcher %r died; events are no longer "
                            "delivered (close() dead-letters what is queued)", self.name, exc_info=True)
            raise

    def _loop(self) -> None:
        cfg, ingress = self.config, self.ingress
        buffers: dict[Any, _Buffer] = {}
        stopping = False
        while not stopping:
            if buffers:
                oldest = min(b.oldest for b in buffers.values())
                ingress.sleep(max(0.0, oldest + cfg.batch_timeout - time.monotonic()),
                              min(b.need for b in buffers.values()))
            else:
                ingress.sleep(None, 1)  # idle: until something arrives (close() sends STOP)
            # read the flags before the drain: an event that sets them again is in the next one
            urgent, ingress.urgent = ingress.urgent, False
            controls = ingress.take_controls()  # before the drain: what came before them is in it
            items = ingress.drain()
            self.taken += len(items)
            self.high_water = max(self.high_water, len(items))  # the queue's depth when drained
            units: list[list[Event]] = []
            if not cfg.use_batching:
                for item in items:
                    self.dispatch_alone(item if type(item) is Event else item.event)
            elif any(lane.wants_aggregated for lane in self.lanes()):
                self._group(items, buffers, units)
            else:
                self._gather(items, buffers, units, urgent)
            for control in controls:
                if isinstance(control, FlushRequest):
                    units.extend(b.events for b in buffers.values())
                    buffers.clear()
                    self.dispatch(units)
                    units = []
                    control.markers = [(lane, Marker(0)) for lane in self.lanes()]
                    for lane, marker in control.markers:
                        lane.put_marker(marker)
                    control.ready.set()
                elif control is STOP:
                    stopping = True
            now = time.monotonic()
            for key, buf in list(buffers.items()):
                if stopping or buf.oldest + cfg.batch_timeout <= now:
                    units.append(buf.events)
                    del buffers[key]
            self.dispatch(units)

    def _gather(self, items: list[Any], buffers: dict[Any, _Buffer], units: list[list[Event]],
                urgent: bool) -> None:
        """Nobody aggregates: one buffer, flushed whole at ``batch_size`` events, at its age,
        or at once after an urgent event. Per event, only a scan in C for an unbatched one
        (then what is pending goes first, and it alone)."""
        cfg = self.config
        buf = buffers.get(_ALL)
        if buf is None and items:
            first = items[0]
            buf = buffers[_ALL] = _Buffer((first if type(first) is Event else first.event).created_mono,
                                          cfg.batch_size)
        if buf is None:
            return
        if Unbatched not in map(type, items):
            buf.events.extend(items)
        else:
            for item in items:
                if type(item) is Unbatched:
                    self.dispatch(units + [buf.events])
                    units.clear()
                    buf.events = []
                    self.dispatch_alone(item.event)
                else:
                    if not buf.events:
                        buf.oldest = item.created_mono
                    buf.events.append(item)
        buf.need = cfg.batch_size - len(buf.events)
        if not buf.events:
            del buffers[_ALL]
        elif urgent or buf.need <= 0:
            units.append(buf.events)
            del buffers[_ALL]

    def _group(self, items: list[Any], buffers: dict[Any, _Buffer], units: list[list[Event]]) -> None:
        """Aggregating: per worker, flushed when one of its (type, source) groups reaches
        ``batch_size``, and everything at once for an event at or above ``flush_priority``."""
        cfg = self.config
        size, priority = cfg.batch_size, cfg.flush_priority
        for item in items:
            if type(item) is Unbatched:
                event = item.event
                pending = buffers.pop(event.worker, None)
                if pending is not None:  # what its worker had pending goes first
                    units.append(pending.events)
                self.dispatch(units)
                units.clear()
                self.dispatch_alone(event)
                continue
            buf = buffers.get(item.worker)
            if buf is None:
                buf = buffers[item.worker] = _Buffer(item.created_mono, size)
            buf.events.append(item)
            key = (item.type, item.source)
            count = buf.counts[key] = buf.counts.get(key, 0) + 1
            if size - count < buf.need:
                buf.need = size - count
            if item.priority >= priority:
                units.extend(b.events for b in buffers.values())
                buffers.clear()
            elif count >= size:
                units.append(buf.events)
                del buffers[item.worker]

    def dispatch(self, units: list[list[Event]]) -> None:
        """Aggregate each flushed unit and hand the result to every lane."""
        raw = [e for unit in units for e in unit]
        if not raw:  # a sink is sent 1..n events, never none
            return
        lanes = self.lanes()
        if not lanes:
            self._discard(len(raw))
            return
        if not any(lane.wants_aggregated for lane in lanes):  # nobody reads the merge: skip it
            self.flushes += 1
            batch = LaneBatch(raw, len(raw))
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
            self.batches_created += result.batches_created
            self.events_batched += result.events_batched
        self.flushes += 1
        merged, unmerged = LaneBatch(aggregated, len(raw)), None
        for lane in lanes:
            if lane.wants_aggregated:
                lane.put(merged)
            else:
                unmerged = unmerged or LaneBatch(raw, len(raw))
                lane.put(unmerged)

    def dispatch_alone(self, event: Event) -> None:
        """Hand one event, on its own, to every lane."""
        lanes = self.lanes()
        if not lanes:
            self._discard(1)
            return
        self.flushes += 1
        batch = LaneBatch((event,), 1)
        for lane in lanes:
            lane.put(batch)

    def _discard(self, count: int) -> None:
        self.drops.drop("no_sinks", count, "batcher %r has no sinks: %d event(s) discarded "
                        "(add_sink() one)", self.name, count)
