"""Sinks: where batches of events go. The contract is in :mod:`sinks.base`."""

from sinks.base import Event, PermanentSinkError, Sink, SinkError, TransientSinkError
from sinks.memory import MemorySink

__all__ = ["Sink", "SinkError", "TransientSinkError", "PermanentSinkError", "Event", "MemorySink"]
