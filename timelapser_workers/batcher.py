"""EventBatcher: the facade over the ingress, the signal adapter, the flush loop and the lanes.

Producers (signal receivers, :meth:`EventBatcher.submit`, :meth:`EventBatcher.emit`) only build
an Event and put it on the bounded ingress (ingress.py): no I/O, no lock held across a sink
call. One daemon flush thread (flusher.py), started on first use and again in a forked child
(which starts empty), groups, aggregates and hands each flush to every sink's lane (lane.py).
The running parts are a Pipeline (pipeline.py) that never refers back to the batcher: a
batcher nobody references is collected and its pipeline shuts down in the background, its
events delivered. ``close()``, atexit, SIGTERM and multiprocessing exits (lifecycle.py) deliver
what is left under a deadline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping

from blinker import ANY, Signal

from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.config import BatcherConfig, check_timeout
from timelapser_workers.contract import Sink, sink_name
from timelapser_workers.deadletter import DeadLetterHandler, resolve_dead_letter
from timelapser_workers.errors import BatcherClosedError, QueueFullError
from timelapser_workers.events import Event, Priority, build_event, make_event
from timelapser_workers.flusher import FlushResult
from timelapser_workers.ingress import Unbatched
from timelapser_workers.lane import SinkLane
from timelapser_workers.lifecycle import after_fork_in_child, install_sigterm_handler, track
from timelapser_workers.pipeline import Pipeline
from timelapser_workers.signal_adapter import SignalAdapter
from timelapser_workers.spool import Spool
from timelapser_workers.statedir import expand, writable_dir

__all__ = ["EventBatcher", "FlushResult"]

logger = logging.getLogger(__name__)


class _Slot:
    """The batcher's current pipeline (a new one after fork), shared with its signal receivers
    and its finalizer, which must not hold the batcher itself."""

    __slots__ = ("pipe",)

    def __init__(self, pipe: Pipeline) -> None:
        self.pipe = pipe


class EventBatcher:
    """Batch events from many producer threads and deliver them to sinks.

    ``sinks``: objects with ``send(batch)`` (see :class:`timelapser_workers.contract.Sink`).
    ``settings``: any field of :class:`~timelapser_workers.config.BatcherConfig` (batch_size,
    batch_timeout, overflow, shutdown_timeout ...); each one not given comes from its
    ``TIMELAPSER_...`` environment variable or its default, and a bad value raises ValueError
    naming it. ``config``: a resolved BatcherConfig to start from. ``dead_letter``: a
    callable(events, sink_name, reason, error) or a path for the default file. The dead-letter
    file's and the spool's directories are checked here (ValueError naming the setting).
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
        cfg = self.config
        self.dead_letter = resolve_dead_letter(dead_letter, cfg.dead_letter_path,
                                               origin=cfg.origin("dead_letter_path"))
        self._spool_root = None if cfg.spool_max_bytes == 0 else writable_dir(
            expand(cfg.spool_dir), "spool_dir", cfg.origin("spool_dir"))
        self._max_event_bytes = self.config.max_event_bytes
        self._slot = _Slot(self._new_pipeline())
        submit, reject = _signal_callbacks(self._slot, name)
        self._signals = SignalAdapter(submit, reject, self.config.max_event_bytes)
        if callable(getattr(sinks, "send", None)):
            raise TypeError(f"sinks must be a list of sinks; got one sink, {sinks!r}: pass [{sinks!r}]")
        for sink in sinks:
            self.add_sink(sink)
        track(self)
        after_fork_in_child(self._after_fork_in_child)
        if self.config.handle_sigterm:
            install_sigterm_handler()  # only from the main thread, only over the default
        # collected while open: disconnect and shut the pipeline down in the background
        weakref.finalize(self, _abandoned, self._signals, self._slot).atexit = False  # exit: close_all

    @property
    def _pipe(self) -> Pipeline:
        return self._slot.pipe

    def _new_pipeline(self, closed: bool = False) -> Pipeline:
        pipe = Pipeline(self.name, self.config, self.policy, self.dead_letter, closed=closed)
        if self.config.handle_sigterm:
            pipe.on_start = install_sigterm_handler  # made elsewhere, first used in main: now
        return pipe

    # --- sinks ---------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        """Deliver to ``sink`` too, through a lane (queue + thread) of its own."""
        if not callable(getattr(sink, "send", None)):
            raise TypeError(f"sink {sink!r} has no send(batch) method; see timelapser_workers.Sink")
        base = sink_name(sink)
        taken = {lane.name for lane in self._pipe.lanes}
        name, n = base, 2
        while name in taken:
            name, n = f"{base}#{n}", n + 1
        self._pipe.add_lane(self._new_lane(sink, name))

    def _new_lane(self, sink: Sink, name: str) -> SinkLane:
        cfg = self.config
        spool = None
        if self._spool_root is not None:
            spool = Spool(self._spool_root, name, cfg.spool_max_bytes)
            spool.adopt()  # what an earlier process with this sink name left: delivered first
        return SinkLane(sink, name, max_retries=cfg.max_retries, retry_delay=cfg.retry_delay,
                        retry_max_delay=cfg.retry_max_delay, max_events=cfg.lane_max_events,
                        send_timeout=cfg.send_timeout, dead_letter=self._pipe.dead_letters, spool=spool)

    @property
    def sinks(self) -> list[Sink]:
        return [lane.sink for lane in self._pipe.lanes]

    @property
    def closed(self) -> bool:
        return self._pipe.closing

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

    # --- producers -----------------------------------------------------------------------
    def submit(self, event: Event, *, batch: bool = True) -> bool:
        """Queue ``event``; False if the queue was full and it (or an older one) was dropped.

        ``batch=False`` delivers this event on its own as soon as the flush thread sees it,
        after what its worker had pending (the per-producer rollback switch).
        Raises BatcherClosedError after close(), QueueFullError only with overflow='block'
        when the queue stayed full for ``block_timeout`` seconds.
        """
        if event.__class__ is not Event and not isinstance(event, Event):
            raise TypeError(f"submit() takes an Event (see make_event), got {event!r}")
        if event.payload.__class__ is not bytes or event.priority.__class__ is not Priority:
            raise TypeError(f"submit() takes an Event built by make_event (payload bytes, priority a "
                            f"Priority), got payload {type(event.payload).__name__} and priority "
                            f"{event.priority!r}")
        return self._slot.pipe.offer(event if batch else Unbatched(event), event)

    def emit(self, type: str, data: Mapping[str, Any] | None = None, *, worker: str | None = None,
             source: str | None = None, priority: Priority | int | str = Priority.NORMAL) -> Event:
        """Build an event (validated, JSON-safe, stamped) and submit it; returns the event."""
        if type.__class__ is not str or not type:
            event = make_event(type, data, worker=worker, source=source, priority=priority,
                               max_bytes=self._max_event_bytes)  # raises, naming the bad type
        else:
            event = build_event(type, data, source, worker, priority, self._max_event_bytes)
        self._slot.pipe.offer(event, event)
        return event

    # --- flush and close -----------------------------------------------------------------
    def _deadline(self, timeout: float | None) -> float:
        """The deadline ``timeout`` seconds from now (checked; None: shutdown_timeout)."""
        seconds = self.config.shutdown_timeout if timeout is None else check_timeout("timeout", timeout)
        return time.monotonic() + seconds

    def flush(self, timeout: float | None = None) -> FlushResult:
        """Deliver everything submitted before this call, waiting at most ``timeout`` seconds
        (default shutdown_timeout). Cuts the batching window short."""
        return self._pipe.flush(self._deadline(timeout))

    def close(self, timeout: float | None = None) -> FlushResult:
        """Refuse new events, deliver what is pending, stop the threads and close the sinks,
        all within ``timeout`` seconds (default shutdown_timeout). Safe to call again (after
        Ctrl-C, or from atexit): it finishes what the first call began. From inside a sink,
        it starts closing and returns at once."""
        deadline = self._deadline(timeout)
        self.disconnect()
        return self._pipe.close(deadline)

    def __enter__(self) -> "EventBatcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- stats ---------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters since construction (or since fork, in a child)."""
        return self._pipe.stats()

    def __repr__(self) -> str:
        pipe = self._pipe
        state = "closed" if pipe.closing else ("running" if pipe.thread.started else "idle")
        return f"<EventBatcher {self.name!r} {state} sinks={[lane.name for lane in pipe.lanes]}>"

    # --- fork ----------------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        """The child starts empty: fresh queue, threads and counters, same sinks and settings."""
        old = self._pipe
        self._slot.pipe = self._new_pipeline(closed=old.closing)
        for lane in old.lanes:
            self._pipe.lanes.append(self._new_lane(lane.sink, lane.name))
            hook = getattr(lane.sink, "after_fork_in_child", None)
            if hook is not None:
                try:
                    hook()
                except Exception:
                    logger.exception("sink %r failed to reset after fork", lane.name)


def _signal_callbacks(slot: _Slot, name: str) -> tuple[Callable[[Event, bool], bool],
                                                       Callable[[str, Any, Exception], None]]:
    """What the signal receivers call: never the batcher itself, so it can be collected."""

    def submit(event: Event, batch: bool) -> bool:
        pipe = slot.pipe
        try:
            return pipe.offer(event if batch else Unbatched(event), event)
        except (BatcherClosedError, QueueFullError) as exc:  # counted; never raised into send()
            pipe.drops.warnings.warn(type(exc).__name__, "%s", exc)
            return False

    def reject(event_type: str, sender: Any, error: Exception) -> None:
        slot.pipe.drops.reject("invalid", "refused a %s event from %r: %s", event_type, sender, error)

    return submit, reject


def _abandoned(signals: SignalAdapter, slot: _Slot) -> None:
    """The batcher was collected: stop listening, and deliver what it held in the background."""
    signals.disconnect()
    pipe = slot.pipe
    if not pipe.closing:
        pipe.begin_close(time.monotonic() + pipe.config.shutdown_timeout, orphaned=True)
