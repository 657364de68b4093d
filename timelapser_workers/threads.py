"""The one thread primitive: a bounded queue drained by one daemon thread, closed by a deadline.

Every background thread of the library is a :class:`DaemonThread` (started on demand, joined
against a monotonic deadline, never waited on for ever), and every hand-off to one is a
:class:`WorkQueue`: a FIFO bounded in *weight* (events, not items) whose ``put`` waits for room
up to a deadline and says whether it got in. Control items (weight 0) always fit, so a stop or
a flush marker can never be refused.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Callable, Generic, Iterator, TypeVar

__all__ = ["DaemonThread", "WorkQueue", "remaining"]

T = TypeVar("T")


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (time.monotonic()), never negative; None stays None."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class DaemonThread:
    """One daemon thread running ``target``: started at most once, joined by a deadline."""

    def __init__(self, name: str, target: Callable[[], None]) -> None:
        self.name = name
        self._target = target
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> bool:
        """Start the thread unless it was started already; True if this call started it."""
        with self._lock:
            if self._thread is not None:
                return False
            self._thread = threading.Thread(target=self._target, name=self.name, daemon=True)
            self._thread.start()
            return True

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def ident(self) -> int | None:
        thread = self._thread
        return None if thread is None else thread.native_id

    def is_current(self) -> bool:
        """True when called from this thread itself."""
        return self._thread is threading.current_thread()

    def join(self, deadline: float | None) -> bool:
        """Wait for the thread until ``deadline`` (None: as long as it takes); True if it has
        ended or never started. Joining from the thread itself returns False at once."""
        thread = self._thread
        if thread is None:
            return True
        if thread is threading.current_thread():
            return False
        thread.join(remaining(deadline))
        return not thread.is_alive()


class WorkQueue(Generic[T]):
    """A FIFO between producers and one consumer, bounded by the total weight of its items.

    An item heavier than the whole capacity still gets in when nothing else weighs on the queue
    (a batch is never refused for its size alone). The weight of an item is released when the consumer takes it.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"WorkQueue capacity={capacity!r} must be >= 1")
        self.capacity = capacity
        self.cond = threading.Condition()
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._weight = 0

    @property
    def weight(self) -> int:
        """The total weight waiting (items taken by the consumer no longer count)."""
        return self._weight

    def __len__(self) -> int:
        return len(self._items)

    def _fits(self, weight: int) -> bool:
        return weight == 0 or self._weight == 0 or self._weight + weight <= self.capacity

    def put(self, item: T, weight: int = 0, *, deadline: float | None = 0.0,
            abort: Callable[[], bool] | None = None) -> bool:
        """Append ``item``; while it does not fit, wait for room until ``deadline``
        (time.monotonic(); None: no limit, 0.0: do not wait). False if it never fit, or if
        ``abort()`` (checked under the queue's lock) became true first."""
        with self.cond:
            while abort is None or not abort():
                if self._fits(weight):
                    break
                left = remaining(deadline)
                if left == 0.0:
                    return False
                self.cond.wait(left)
            else:
                return False
            self._items.append((item, weight))
            self._weight += weight
            self.cond.notify_all()
            return True

    def get(self) -> T:
        """Take the oldest item, waiting until there is one (the consumer thread's wait:
        a control item, such as a stop, always ends it)."""
        with self.cond:
            while not self._items:
                self.cond.wait()
            item, weight = self._items.popleft()
            self._weight -= weight
            self.cond.notify_all()
            return item

    def remove_first(self, match: Callable[[T], bool]) -> T | None:
        """Remove and return the oldest item that ``match``es, or None."""
        with self.cond:
            for i, (item, weight) in enumerate(self._items):
                if match(item):
                    del self._items[i]
                    self._weight -= weight
                    self.cond.notify_all()
                    return item
            return None

    def remove_all(self, match: Callable[[T], bool]) -> list[T]:
        """Remove and return every item that ``match``es, oldest first."""
        with self.cond:
            kept: collections.deque[tuple[T, int]] = collections.deque()
            taken = []
            for item, weight in self._items:
                if match(item):
                    taken.append(item)
                    self._weight -= weight
                else:
                    kept.append((item, weight))
            self._items = kept
            self.cond.notify_all()
            return taken

    def wait_empty(self, deadline: float | None) -> bool:
        """Wait until nothing is queued (the consumer took everything) or ``deadline``."""
        with self.cond:
            while self._items:
                left = remaining(deadline)
                if left == 0.0:
                    return False
                self.cond.wait(left)
            return True

    def __iter__(self) -> Iterator[T]:
        """A snapshot of the queued items, oldest first."""
        with self.cond:
            return iter([item for item, _ in self._items])
