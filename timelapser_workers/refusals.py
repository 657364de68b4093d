"""One bad event costs only itself: after a sink refused a batch for good, find the events at
fault and deliver the others.

What a refusal (:class:`PermanentSinkError`) says decides the search:

- it names some of the batch's events: the others are stored (the sink contract). A named
  aggregated event is split back into its members, which are sent raw; a named raw event is
  refused, with its own error if the sink gave one (``PermanentSinkError.errors``).
- it names nothing, and the batch holds several events: the batch is sent again in halves,
  each half settled the same way, down to single events.
- it is about one event, or names every event of the batch (the batch as a whole is refused:
  a missing table, a permission): each aggregated event is split and sent raw once more, each
  raw one refused.

A transient error on the way stops the search: what was not settled comes back as ``unsent``
(the caller spools or retries it). Cost: nothing when the batch is good; with ``k`` bad events
among ``n``, about ``2 k log2(n)`` sends more. The lanes and ``timelapser-workers dead-letters
replay`` use this; DatabaseSink already bisects plain rows itself (sql/split.py), so for it
this only splits aggregated events.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

from timelapser_workers.errors import PermanentSinkError
from timelapser_workers.events import Event

__all__ = ["Refused", "Settled", "settle", "named_events"]


class Refused(NamedTuple):
    """An event no attempt could deliver, and its own error."""

    event: Event
    error: str


class Settled(NamedTuple):
    """What the search found: refused events, events left unsent by a transient error, and
    the sends it made."""

    refused: list[Refused]
    unsent: list[Event]
    sends: int

    @property
    def refused_count(self) -> int:
        """Original events refused (an aggregated event refused whole counts its members)."""
        return sum(r.event.batch_count for r in self.refused)

    @property
    def unsent_count(self) -> int:
        return sum(e.batch_count for e in self.unsent)


def named_events(error: PermanentSinkError, events: Sequence[Event]) -> list[Event] | None:
    """The events of ``events`` that ``error`` names (by Event or id; an aggregated event is
    named when one of its members is), or None when it names none of them."""
    named = error.events
    if not named:
        return None
    try:
        ids = {e.id if isinstance(e, Event) else e for e in named}  # type: ignore[attr-defined]
    except TypeError:
        return None
    picked = [e for e in events if e.id in ids or any(m.id in ids for m in e.members)]
    return picked or None


def _message(event: Event, error: PermanentSinkError) -> str:
    own = error.errors.get(event.id)
    return own if own else str(error)


def settle(send: Callable[[Sequence[Event]], object], events: Sequence[Event],
           error: PermanentSinkError) -> Settled:
    """``send(events)`` raised ``error``: deliver what can be delivered of ``events`` through
    ``send`` (one attempt per part) and return what was refused and what was left unsent."""
    refused: list[Refused] = []
    unsent: list[Event] = []
    work: list[tuple[list[Event], PermanentSinkError]] = [(list(events), error)]
    sends = 0

    def attempt(part: list[Event]) -> None:
        nonlocal sends
        if unsent:  # a transient error stopped the search: the rest waits for the next try
            unsent.extend(part)
            return
        sends += 1
        try:
            send(part)
        except PermanentSinkError as exc:
            work.append((part, exc))
        except BaseException:  # down again: keep what is not settled for later
            unsent.extend(part)

    def one(event: Event, exc: PermanentSinkError) -> None:
        if event.members:
            attempt(list(event.members))  # the members, raw: only a bad one is refused again
        else:
            refused.append(Refused(event, _message(event, exc)))

    while work:
        part, exc = work.pop()
        if unsent:
            unsent.extend(part)
            continue
        named = named_events(exc, part)
        if named is not None and len(named) < len(part):
            for event in named:  # the others were stored
                one(event, exc)
        elif len(part) == 1 or named is not None:
            for event in part:
                one(event, exc)
        else:  # several, none named: halves
            mid = len(part) // 2
            attempt(part[:mid])
            attempt(part[mid:])
    return Settled(refused, unsent, sends)
