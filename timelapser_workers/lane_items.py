"""What travels through a lane's queue: batches, flush markers and two control items, and the
names of a lane's states."""

from __future__ import annotations

import threading
from typing import Sequence

from timelapser_workers.events import Event
from timelapser_workers.records import encode_event
from timelapser_workers.spool import spool_line

__all__ = ["LaneBatch", "Marker", "STOP", "WAKE", "HEALTHY", "FAILING", "HUNG"]

HEALTHY, FAILING, HUNG = "healthy", "failing", "hung"

STOP = object()  # finish, close the sink, end the thread
WAKE = object()  # look at the spool: another thread sent the lane's batches there


class LaneBatch:
    """What one send() carries: the events (a tuple: no sink can change what another sees),
    and how many original events they stand for."""

    __slots__ = ("events", "count", "_line")

    def __init__(self, events: Sequence[Event], count: int | None = None) -> None:
        self.events: tuple[Event, ...] = tuple(events)
        # ``count``: given by a caller that knows (raw events: one each), else summed
        self.count = sum(len(e.members) or 1 for e in self.events) if count is None else count
        self._line: bytes | None = None

    def spool_line(self) -> bytes:
        """The batch as one spool line (encoded once, shared by every lane that spools it)."""
        line = self._line
        if line is None:
            line = self._line = spool_line([encode_event(e) for e in self.events], self.count)
        return line


class Marker:
    """A place in a lane's queue; set when the lane has finished everything before it."""

    __slots__ = ("target", "done", "delivered", "failed", "spool_errors")

    def __init__(self, target: int) -> None:
        self.target = target  # the lane's enqueued count when the marker was placed
        self.done = threading.Event()
        self.delivered = 0
        self.failed = 0
        self.spool_errors = 0  # of those failed: spool appends the disk refused
