"""The sink contract: what the batcher asks of a sink, beside the batcher that asks it.

A sink is any object with ``send(batch)``, called from the sink's own lane thread, one batch
at a time, in order::

    class PrintSink(BaseSink):
        name = "print"

        def send(self, batch):            # 1..n events, never concurrently
            for event in batch:
                print(event.type, event.data)

Raise :class:`TransientSinkError` to ask for a retry (the lane retries with backoff, then
dead-letters), :class:`PermanentSinkError` to refuse the batch for good (dead-lettered at
once; only the events it names, if it names some). Any other exception counts as transient.

Optional, read when present (``BaseSink`` gives each a default):

- ``name``: shown in stats, logs and dead letters (default: the class name);
- ``wants_aggregated``: False to receive the raw events instead of aggregated batch events;
- ``close(timeout)``: release resources, called once when the batcher closes;
- ``after_fork_in_child()``: drop inherited connections in a forked child.

The core types sinks as :class:`Sink` and never imports a concrete one.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

from timelapser_workers.errors import PermanentSinkError, SinkError, TransientSinkError
from timelapser_workers.events import Event

__all__ = ["Sink", "BaseSink", "sink_name", "SinkError", "TransientSinkError", "PermanentSinkError", "Event"]


@runtime_checkable
class Sink(Protocol):
    """Anything the batcher can deliver to: one method, ``send(batch)``."""

    def send(self, batch: Sequence[Event]) -> None:
        """Deliver ``batch`` (in order) or raise. Called from one thread at a time."""


class BaseSink:
    """A convenient base for sinks: the optional parts of the contract, with defaults.

    Subclass it and implement :meth:`send`; override the rest as needed.
    """

    #: Shown in stats, logs and dead letters; unique among one batcher's sinks.
    name: str = "sink"
    #: True: receive aggregated batch events (JOBS_BATCH_STARTED ...). False: the raw events.
    wants_aggregated: bool = True

    def send(self, batch: Sequence[Event]) -> None:
        """Deliver ``batch`` (in order) or raise. Called from one thread at a time."""
        raise NotImplementedError(f"{type(self).__name__} must implement send(batch)")

    def close(self, timeout: float | None = None) -> None:
        """Release resources; called once by the batcher's close(), within ``timeout`` seconds."""

    def after_fork_in_child(self) -> None:
        """Called in a forked child before the sink is used there (drop inherited connections)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def sink_name(sink: object) -> str:
    """The name a sink goes by in stats and dead letters: its ``name``, else its class name."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) and name else type(sink).__name__
