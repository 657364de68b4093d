"""The ingress: the bounded queue between producer threads and the flush thread, and the
overflow policies that decide what a full queue does.

A put takes one plain lock and appends; it wakes the flush thread only when that thread has
something to do (see :class:`Ingress`). What happens when the queue is full is a small policy
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
        # reentrant: a SIGTERM handler may close the batcher while this thread is in a put
        self.mutex = threading.RLock()
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
                raise IngressClosed
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
                raise IngressClosed
            self.items.append(item)
            depth = len(self.items)
            urgent = self._arrived(key) or urgent
        self._wake(depth, urgent)
        return True

    def put_drop_oldest(self, item: Any, key: tuple[Any, ...], urgent: bool) -> Any:
        """Put without waiting; when full, remove and return the oldest event first."""
        with self.mutex:
            if self.closed:
                raise IngressClosed
            dropped = None
            if len(self.items) >= self.maxsize:
                for i, old in enumerate(self.items):
                    if type(old) is Event or type(old) is Unbatched:
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


class OverflowPolicy(Protocol):
    """What a full ingress does with one more event: put it (or make room) and return None,
    or return the reason it was dropped (counted by the batcher under that name)."""

    name: str

    def offer(self, ingress: Ingress, item: Any, key: tuple[Any, ...], urgent: bool) -> str | None: ...


class DropNewest:
    """A full queue refuses the new event (the default: what is queued is older, so nearer
    to delivery)."""

    name = "drop_newest"

    def offer(self, ingress: Ingress, item: Any, key: tuple[Any, ...], urgent: bool) -> str | None:
        return None if ingress.put(item, key, urgent) else "drop_newest"


class DropOldest:
    """A full queue drops its oldest event to make room for the new one."""

    name = "drop_oldest"

    def offer(self, ingress: Ingress, item: Any, key: tuple[Any, ...], urgent: bool) -> str | None:
        return None if ingress.put_drop_oldest(item, key, urgent) is None else "drop_oldest"


class Block:
    """A full queue makes the producer wait for room, up to ``timeout`` seconds."""

    name = "block"

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def offer(self, ingress: Ingress, item: Any, key: tuple[Any, ...], urgent: bool) -> str | None:
        return None if ingress.put_wait(item, key, urgent, self.timeout) else "block_timeout"


def overflow_policy(mode: str, block_timeout: float) -> OverflowPolicy:
    """The policy named ``mode`` (one of config.OVERFLOW_MODES)."""
    if mode == "block":
        return Block(block_timeout)
    if mode == "drop_oldest":
        return DropOldest()
    if mode == "drop_newest":
        return DropNewest()
    raise ValueError(f"overflow={mode!r} must be one of block, drop_newest, drop_oldest")
