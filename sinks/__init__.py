"""The built-in sinks: where batches of events go. The contract is in
:mod:`timelapser_workers.contract` (the core); this package holds concrete sinks only.

``load_sink("sqlite:///events.db")`` builds a sink from a URL (see :mod:`.registry`). The
heavier sinks are imported on first use: ``timelapser_workers.sinks.DatabaseSink``, ...

(In the repository this is the top-level ``sinks/`` folder; it installs as
``timelapser_workers.sinks``, so a user's own ``sinks`` module can never shadow it.)
"""

from typing import Any

from timelapser_workers.contract import BaseSink, Event, Sink
from timelapser_workers.errors import PermanentSinkError, SinkError, TransientSinkError
from timelapser_workers.sinks.memory import MemorySink
from timelapser_workers.sinks.registry import available_sinks, load_sink, register_sink, unregister_sink

__all__ = [
    "Sink",
    "BaseSink",
    "SinkError",
    "TransientSinkError",
    "PermanentSinkError",
    "Event",
    "MemorySink",
    "DatabaseSink",
    "LogSink",
    "SSESink",
    "load_sink",
    "register_sink",
    "unregister_sink",
    "available_sinks",
]

_LAZY = {
    "DatabaseSink": "timelapser_workers.sinks.database",
    "LogSink": "timelapser_workers.sinks.log",
    "SSESink": "timelapser_workers.sinks.sse",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'timelapser_workers.sinks' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
