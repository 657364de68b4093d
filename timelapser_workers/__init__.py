"""timelapser-workers: blinker signals in, batched, retried, dead-lettered delivery out."""

from timelapser_workers.errors import (
    BatcherClosedError,
    PermanentSinkError,
    QueueFullError,
    SinkError,
    SinkLoadError,
    TimelapserError,
    TransientSinkError,
)
from timelapser_workers.events import STANDARD_EVENT_TYPES, Event, Priority, make_event

__all__ = [
    "Event",
    "Priority",
    "make_event",
    "STANDARD_EVENT_TYPES",
    "TimelapserError",
    "SinkError",
    "TransientSinkError",
    "PermanentSinkError",
    "BatcherClosedError",
    "QueueFullError",
    "SinkLoadError",
]
