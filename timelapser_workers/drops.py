"""Counting what a batcher refused or dropped, and saying so without flooding the log.

Every event a batcher does not deliver is counted here by reason (``events_rejected``:
refused where it was made; ``events_dropped``: accepted, then let go) and announced by a
warning that is rate-limited per reason: at most one every ``interval`` seconds, each saying
how many similar ones were held back since the last.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

__all__ = ["RateLimitedWarnings", "DropCounters"]

logger = logging.getLogger("timelapser_workers.batcher")


class RateLimitedWarnings:
    """At most one warning per key per ``interval`` seconds, saying how many were held back."""

    def __init__(self, interval: float = 10.0, log: logging.Logger = logger) -> None:
        self.interval = interval
        self.log = log
        self._lock = threading.RLock()  # reentrant: see DropCounters
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
        self.log.warning(message, *args)


class DropCounters:
    """``rejected`` and ``dropped`` events by reason, safe to count from any thread."""

    def __init__(self) -> None:
        # reentrant: a SIGTERM handler may count a drop while this thread is counting one
        self._lock = threading.RLock()
        self.rejected: collections.Counter[str] = collections.Counter()
        self.dropped: collections.Counter[str] = collections.Counter()
        self.warnings = RateLimitedWarnings()

    def reject(self, reason: str, message: str | None, *args: Any) -> None:
        """Count one event refused where it was made; warn (rate-limited) if ``message``."""
        with self._lock:
            self.rejected[reason] += 1
        if message is not None:
            self.warnings.warn(reason, message, *args)

    def drop(self, reason: str, count: int, message: str | None, *args: Any) -> None:
        """Count ``count`` accepted events let go for ``reason``; warn if ``message``."""
        with self._lock:
            self.dropped[reason] += count
        if message is not None:
            self.warnings.warn(reason, message, *args)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(rejected, dropped) as plain dicts."""
        with self._lock:
            return dict(self.rejected), dict(self.dropped)
