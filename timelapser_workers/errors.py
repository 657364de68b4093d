"""Every exception timelapser-workers raises on purpose, in one place.

Sinks raise :class:`TransientSinkError` to ask for a retry and :class:`PermanentSinkError` to
refuse a batch for good; any other exception from a sink is treated as transient.
"""

from __future__ import annotations

from typing import Mapping

__all__ = [
    "TimelapserError",
    "SinkError",
    "TransientSinkError",
    "PermanentSinkError",
    "BatcherClosedError",
    "QueueFullError",
    "SinkLoadError",
    "SSERefused",
]


class TimelapserError(Exception):
    """Base class of the library's own errors."""


class SinkError(TimelapserError):
    """A sink could not take a batch."""


class TransientSinkError(SinkError):
    """The batch may succeed if sent again later (connection lost, server busy, deadlock)."""


class PermanentSinkError(SinkError):
    """The batch will never succeed as it is (bad data, constraint, schema); do not retry.

    ``events``, when given, names the events at fault (Events or ids); the rest of the batch
    has been stored by the sink. ``errors``, when given, maps an event id to that event's own
    error (what its dead-letter record says); the others get ``message``.
    """

    def __init__(self, message: str, events: object = None, errors: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.events = events
        self.errors: Mapping[str, str] = errors or {}


class BatcherClosedError(TimelapserError):
    """An event was submitted to a batcher that is closing or closed."""


class QueueFullError(TimelapserError):
    """The batcher's queue stayed full for the whole ``block_timeout`` (overflow='block' only)."""


class SinkLoadError(TimelapserError, ValueError):
    """A sink could not be loaded from a URL, a config or an entry point."""


class SSERefused(TimelapserError):
    """An SSE authorization hook refuses a client: ``status`` 401 (who are you?) or 403 (no)."""

    def __init__(self, message: str = "forbidden", status: int = 403) -> None:
        if status not in (401, 403):
            raise ValueError(f"SSERefused status must be 401 or 403, got {status!r}")
        super().__init__(message)
        self.status = status
