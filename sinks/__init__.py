"""Sinks: where batches of events go. The contract is in :mod:`sinks.base`.

``load_sink("sqlite:///events.db")`` builds a sink from a URL (see :mod:`sinks.registry`).
The concrete sinks are imported on first use: ``sinks.DatabaseSink``, ``sinks.LogSink``...
"""

from typing import Any

from sinks.base import Event, PermanentSinkError, Sink, SinkError, TransientSinkError
from sinks.memory import MemorySink
from sinks.registry import available_sinks, load_sink, register_sink, unregister_sink

__all__ = [
    "Sink",
    "SinkError",
    "TransientSinkError",
    "PermanentSinkError",
    "Event",
    "MemorySink",
    "DatabaseSink",
    "LogSink",
    "BatchingDatabaseHandler",
    "bulk_upsert",
    "events_table",
    "load_sink",
    "register_sink",
    "unregister_sink",
    "available_sinks",
]

_LAZY = {
    "DatabaseSink": "sinks.database",
    "events_table": "sinks.schema",
    "LogSink": "sinks.log",
    "BatchingDatabaseHandler": "sinks.log",
    "bulk_upsert": "sinks.upsert",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sinks' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
