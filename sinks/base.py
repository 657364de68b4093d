"""The sink contract and the errors a sink raises, in one place for sink authors.

A sink takes batches of events from its own lane thread::

    class PrintSink(Sink):
        name = "print"

        def send(self, batch):            # called with 1..n events, never concurrently
            for event in batch:
                print(event.type, event.data)

Raise :class:`TransientSinkError` to ask for a retry (the lane retries with backoff, then
dead-letters), :class:`PermanentSinkError` to refuse the batch for good (dead-lettered at once).
Any other exception counts as transient. Set ``wants_aggregated = False`` to receive the raw
events instead of aggregated batch events.
"""

from __future__ import annotations

import abc
from typing import Sequence

from timelapser_workers.errors import PermanentSinkError, SinkError, TransientSinkError
from timelapser_workers.events import Event

__all__ = ["Sink", "SinkError", "TransientSinkError", "PermanentSinkError", "Event"]


class Sink(abc.ABC):
    """Where batches of events go. Subclass and implement :meth:`send`."""

    #: Shown in stats, logs and dead letters; must be unique among one batcher's sinks.
    name: str = "sink"
    #: True: receive aggregated batch events (JOBS_BATCH_STARTED ...). False: the raw events.
    wants_aggregated: bool = True

    @abc.abstractmethod
    def send(self, batch: Sequence[Event]) -> None:
        """Deliver ``batch`` (in order) or raise. Called from one thread at a time."""

    def close(self, timeout: float | None = None) -> None:
        """Release resources; called once by the batcher's close(), within ``timeout`` seconds."""

    def after_fork_in_child(self) -> None:
        """Called in a forked child before the sink is used there (drop inherited connections)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
