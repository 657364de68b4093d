"""The process-wide batcher that every worker and broadcaster shares unless given another:
one flush thread per process, not one per worker."""

from __future__ import annotations

import threading
from typing import Any

from timelapser_workers.batcher import EventBatcher
from timelapser_workers.lifecycle import after_fork_in_child

__all__ = ["get_default_batcher", "set_default_batcher"]

_lock = threading.Lock()
_default: EventBatcher | None = None


def _reset_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at fork


after_fork_in_child(_reset_lock_in_child)


def get_default_batcher(**settings: Any) -> EventBatcher:
    """The shared batcher, built on first use (from ``settings`` and the TIMELAPSER_
    environment). It starts with no sinks: add them with ``add_sink()``; until then events
    are counted as dropped ('no_sinks') with a warning. A closed default is replaced."""
    global _default
    with _lock:
        if _default is None or _default.closed:
            _default = EventBatcher(name="default", **settings)
        elif settings:
            raise ValueError(
                f"the default batcher already exists; settings {sorted(settings)} would be "
                "ignored: pass them on first use or build your own EventBatcher"
            )
        return _default


def set_default_batcher(batcher: EventBatcher | None) -> EventBatcher | None:
    """Make ``batcher`` the shared one (None: build a new one on next use); returns the old."""
    global _default
    if batcher is not None and not isinstance(batcher, EventBatcher):
        raise TypeError(f"set_default_batcher() takes an EventBatcher or None, got {batcher!r}")
    with _lock:
        old, _default = _default, batcher
        return old
