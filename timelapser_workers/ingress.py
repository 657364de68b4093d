"""The ingress: the bounded queue between producer threads and the flush thread, and the
overflow policies that decide what a full queue does.

A put is a length check and an append, without a lock; it wakes the flush thread only when
that thread has something to do (see :class:`Ingress`). What happens when the queue is full is a small policy
object: :class:`DropNewest` (refuse the new event), :class:`DropOldest` (make room by dropping
the oldest event) or :class:`Block` (wait up to ``block_timeout`` for room). Each returns the
reason of a drop, which the batcher counts; none ever loses an event without saying so.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Protocol

from timelapser_workers.events import Event

__all__ = ["Ingress", "IngressClosed", "Unbatched", "OverflowPolicy", "DropNewest", "DropOldest",
           "Block", "overflow_policy"]


class Unbatched:
    """An event to deliver on its own, at once, unaggregated (a use_batching=False producer)."""

    __slots__ = ("event",)

    def __init__(self, event: Event) -> None:
        self.event = event


class IngressClosed(Exception):
    """Raised inside the ingress when a put arrives after close() shut it."""


class Ingress:
    """The bounded event queue between producers and the flush thread, without a lock.

    A put is a length check and a ``deque.append`` (atomic under the GIL), like
    OpenTelemetry's BatchProcessor. It wakes the flush thread only when that thread has
    something to do: the event is urgent, or the queue now holds ``wake_at`` events, which
    the flush thread sets before it sleeps: 1 when it is idle, else the fewest events any
    pending group still needs to be full. So a burst costs the producers no thread switch per
    event, and a size trigger still wakes the thread as soon as a group can be complete.

    The bound is checked, then appended to, without a lock: several producers racing for the
    last places may pass it by at most their number. ``close()`` sets a flag that a put reads
    after it appended; a put that finds it set takes its event back out and is refused, unless
    the flush thread already took it (then it is delivered, or dead-lettered by the shutdown's
    last drain, and counted either way): no event slips in unaccounted.
    Flush requests and STOP travel in their own deque and always wake the thread.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.items: collections.deque[Any] = collections.deque()
        self.controls: collections.deque[Any] = collections.deque()
        self.wake_at = 1
        # an urgent event came since the flush thread last looked: set after its append, read
        # (and reset) before the drain, so a drain that missed the flag finds it next time
        self.urgent = False
        self.wakeup = threading.Event()
        # only producers waiting on a full queue (overflow="block") take this
        self.room = threading.Condition()
        self.blocked = 0
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self.blocked:
            with self.room:
                self.room.notify_all()  # blocked producers: refused now, not at their timeout

    def qsize(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) >= self.maxsize

    def append(self, item: Any, urgent: bool) -> None:
        """Queue ``item`` (the caller checked the bound); raise IngressClosed if closed."""
        items = self.items
        items.append(item)
        if self.closed:
            self._withdraw(item)
        if urgent:
            self.urgent = True
        if urgent or len(items) >= self.wake_at:
            wakeup = self.wakeup
            if not wakeup.is_set():
                wakeup.set()

    def _withdraw(self, item: Any) -> None:
        try:
            self.items.remove(item)
        except ValueError:
            return  # the flush thread took it first: it is delivered like any other
        raise IngressClosed

    def drop_oldest(self) -> bool:
        """Remove the oldest queued event to make room; True if there was one."""
        try:
            self.items.popleft()
            return True
        except IndexError:
            return False

    def wait_for_room(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until the queue is not full (or closed)."""
        deadline = time.monotonic() + timeout
        with self.room:
            self.blocked += 1  # before the check: a drain after it will see us and notify
            try:
                while len(self.items) >= self.maxsize and not self.closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    if not self.wakeup.is_set():
                        self.wakeup.set()  # a full queue is worth draining now
                    self.room.wait(left)
            finally:
                self.blocked -= 1
        return True

    def put_control(self, item: Any) -> None:
        self.controls.append(item)
        self.wakeup.set()

    def sleep(self, timeout: float | None, wake_at: int) -> None:
        """The flush thread waits for a wake-up or ``timeout`` (None: until woken); at once
        if anything is queued. ``wake_at``: how many queued events are worth a wake-up."""
        self.wake_at = 1 if timeout is None else max(1, wake_at)
        if not self.items and not self.controls:  # a put we miss here sees the new wake_at
            self.wakeup.wait(timeout)
        self.wakeup.clear()  # what woke us is drained next

    def take_controls(self) -> list[Any]:
        """Flush requests and STOP queued so far (take them before draining the events: every
        event queued before a control is then in the drain)."""
        controls = self.controls
        taken = []
        while controls:
            taken.append(controls.popleft())
        return taken

    def drain(self) -> list[Any]:
        """Take every event queued now, oldest first, without waiting."""
        items = self.items
        pop = items.popleft
        out: list[Any] = []
        put = out.append
        try:
            for _ in range(len(items)):
                put(pop())
        except IndexError:  # a drop_oldest or a withdrawn put took some meanwhile
            pass
        if self.blocked:
            with self.room:
                self.room.notify_all()
        return out


class OverflowPolicy(Protocol):
    """What a full ingress does with one more event: put it (or make room) and return None,
    or return the reason it was dropped (counted by the batcher under that name)."""

    name: str

    def offer(self, ingress: Ingress, item: Any, urgent: bool) -> str | None: ...


class DropNewest:
    """A full queue refuses the new event (the default: what is queued is older, so nearer
    to delivery)."""

    name = "drop_newest"

    def offer(self, ingress: Ingress, item: Any, urgent: bool) -> str | None:
        if ingress.closed:
            raise IngressClosed
        if len(ingress.items) >= ingress.maxsize:
            return "drop_newest"
        ingress.append(item, urgent)
        return None


class DropOldest:
    """A full queue drops its oldest event to make room for the new one."""

    name = "drop_oldest"

    def offer(self, ingress: Ingress, item: Any, urgent: bool) -> str | None:
        if ingress.closed:
            raise IngressClosed
        ingress.append(item, urgent)  # first: a close() meanwhile refuses it before anything goes
        dropped = len(ingress.items) > ingress.maxsize and ingress.drop_oldest()
        return "drop_oldest" if dropped else None


class Block:
    """A full queue makes the producer wait for room, up to ``timeout`` seconds."""

    name = "block"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def offer(self, ingress: Ingress, item: Any, urgent: bool) -> str | None:
        if ingress.closed:
            raise IngressClosed
        if len(ingress.items) >= ingress.maxsize and not ingress.wait_for_room(self.timeout):
            return "block_timeout"
        ingress.append(item, urgent)  # raises IngressClosed if close() came while we waited
        return None


def overflow_policy(mode: str, block_timeout: float) -> OverflowPolicy:
    """The policy named ``mode`` (one of config.OVERFLOW_MODES)."""
    if mode == "block":
        return Block(block_timeout)
    if mode == "drop_oldest":
        return DropOldest()
    if mode == "drop_newest":
        return DropNewest()
    raise ValueError(f"overflow={mode!r} must be one of block, drop_newest, drop_oldest")
