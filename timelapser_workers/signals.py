"""Blinker signals, one per event type: how workers announce what happened.

    from timelapser_workers import signals
    signals.job_started.send(worker, job_id=7)          # worker: a name or an object with .name

A batcher connected with ``batcher.connect()`` turns each send into an Event. Keyword
arguments become the event's data, except ``source=`` and ``priority=`` (the event's own
fields), ``use_batching=False`` (deliver this one on its own) and ``data=`` (a dict merged into
the data, for keys that clash with those names).
Declare your own types with :func:`declare`; signal names are the event type strings.
"""

from __future__ import annotations

from blinker import NamedSignal, Namespace, Signal

from timelapser_workers.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_RETRY_SCHEDULED,
    JOB_STARTED,
    STANDARD_EVENT_TYPES,
    WORKER_ERROR,
    WORKER_STARTED,
    WORKER_STATISTICS,
    WORKER_STOPPED,
)

__all__ = [
    "namespace",
    "declare",
    "get",
    "standard_signals",
    "declared_signals",
    "job_started",
    "job_completed",
    "job_failed",
    "job_retry_scheduled",
    "worker_started",
    "worker_stopped",
    "worker_error",
    "worker_statistics",
]

#: Every timelapser signal, standard and declared, by event type.
namespace = Namespace()

job_started = namespace.signal(JOB_STARTED, doc="A job began (data: job_id, ...).")
job_completed = namespace.signal(JOB_COMPLETED, doc="A job finished (data: job_id, processing_time_ms).")
job_failed = namespace.signal(JOB_FAILED, doc="A job failed (data: job_id, error_message, is_permanent).")
job_retry_scheduled = namespace.signal(JOB_RETRY_SCHEDULED, doc="A failed job will run again.")
worker_started = namespace.signal(WORKER_STARTED, doc="A worker's loop started.")
worker_stopped = namespace.signal(WORKER_STOPPED, doc="A worker's loop stopped.")
worker_error = namespace.signal(WORKER_ERROR, doc="A worker's own loop failed (it backs off).")
worker_statistics = namespace.signal(WORKER_STATISTICS, doc="A snapshot of a worker's counters.")


def declare(event_type: str, doc: str | None = None) -> NamedSignal:
    """Return the signal for a custom event type, creating it on first use."""
    if not isinstance(event_type, str) or not event_type or event_type != event_type.strip():
        raise ValueError(f"event type {event_type!r} must be a non-empty string without outer spaces")
    return namespace.signal(event_type, doc=doc)


def get(signal: "Signal | str") -> NamedSignal:
    """The signal itself, or the declared signal named ``signal``; KeyError names unknown ones.
    A signal without a name is refused (TypeError): its name is the events' type."""
    if isinstance(signal, NamedSignal):
        return signal
    if isinstance(signal, Signal):
        raise TypeError(f"{signal!r} has no name, and a signal's name is its events' type; "
                        "make it with signals.declare(TYPE)")
    try:
        return namespace[signal]
    except KeyError:
        raise KeyError(
            f"no signal named {signal!r}; declare it first with signals.declare({signal!r})"
        ) from None


def standard_signals() -> list[NamedSignal]:
    """The eight standard signals, in STANDARD_EVENT_TYPES order."""
    return [namespace[t] for t in STANDARD_EVENT_TYPES]


def declared_signals() -> list[NamedSignal]:
    """Every signal in the namespace: the standard ones and all declared so far."""
    return list(namespace.values())
