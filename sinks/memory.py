"""MemorySink: keeps every batch in memory, for tests (yours and ours) and examples."""

from __future__ import annotations

import threading
import time
from typing import Sequence

from timelapser_workers.contract import BaseSink, Event

__all__ = ["MemorySink"]


class MemorySink(BaseSink):
    """Record each batch it is sent; ``wait_for`` blocks (with a deadline) until enough arrive."""

    name = "memory"

    def __init__(self, name: str = "memory", *, wants_aggregated: bool = True) -> None:
        self.name = name
        self.wants_aggregated = wants_aggregated
        self.batches: list[list[Event]] = []
        self.closed = False
        self.count = 0  # original events received (aggregated events count their members)
        self._cond = threading.Condition()

    def send(self, batch: Sequence[Event]) -> None:
        with self._cond:
            self.batches.append(list(batch))
            self.count += sum(e.batch_count for e in batch)
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        self.closed = True

    @property
    def events(self) -> list[Event]:
        """Every event received, in order, as sent (aggregated events stay aggregated)."""
        with self._cond:
            return [e for b in self.batches for e in b]

    @property
    def raw_events(self) -> list[Event]:
        """Every original event received, in order, with aggregated events expanded."""
        return [m for e in self.events for m in (e.members or (e,))]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until at least ``count`` original events arrived; False if ``timeout`` passed."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True
