"""timelapser-workers: blinker signals in, batched, retried, dead-lettered delivery out."""

from timelapser_workers import signals
from timelapser_workers._version import __version__
from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.batcher import EventBatcher, FlushResult
from timelapser_workers.broadcaster import SSEBroadcaster
from timelapser_workers.default import get_default_batcher, set_default_batcher
from timelapser_workers.lifecycle import close_all, flush_all
from timelapser_workers.worker import PermanentJobError, RetryPolicy, ThreadWorker
from timelapser_workers.config import BatcherConfig
from timelapser_workers.contract import BaseSink, Sink
from timelapser_workers.deadletter import JsonLinesDeadLetter
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
    "__version__",
    "EventBatcher",
    "ThreadWorker",
    "RetryPolicy",
    "PermanentJobError",
    "SSEBroadcaster",
    "get_default_batcher",
    "set_default_batcher",
    "flush_all",
    "close_all",
    "FlushResult",
    "BatcherConfig",
    "AggregationPolicy",
    "JsonLinesDeadLetter",
    "Sink",
    "BaseSink",
    "signals",
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
