"""Poison rows: write a batch, and if the database refuses a row of it, find that row by
writing the batch in halves, so the others are stored and only the bad rows are refused.

:func:`write_or_split` wraps any write callable (one transaction per call, idempotent on the
events' ids: a part stored before a later part failed stays stored, and a retry of the whole
batch skips it). What it costs: one write when the batch is good; with ``k`` bad rows in ``n``,
about ``2 k log2(n)`` writes more.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence

from timelapser_workers.errors import PermanentSinkError, SinkError
from timelapser_workers.events import Event
from timelapser_workers.sql.errors import ErrorKind, classify_error, short_error, sink_error

__all__ = ["SplitCounters", "write_or_split"]

logger = logging.getLogger(__name__)


class SplitCounters(Protocol):
    """Where :func:`write_or_split` counts (a sink passes itself)."""

    rows_refused: int  # events refused for their own sake
    splits: int  # parts written in halves


def write_or_split(
    write: Callable[[Sequence[Event]], object],
    batch: Sequence[Event],
    *,
    name: str,
    counters: SplitCounters,
) -> None:
    """Store ``batch`` through ``write``; raise the sink error the lane acts on.

    A transient error raises TransientSinkError (retry the batch). A permanent one raises
    PermanentSinkError for the whole batch. A row error splits the batch in halves until the
    refused events are found: the others are stored, and PermanentSinkError(events=refused)
    names the refused ones. A SinkError raised by ``write`` passes as it is.
    """
    try:
        write(batch)
        return
    except SinkError:
        raise  # already decided by the writer
    except Exception as exc:
        kind = classify_error(exc)
        if kind is not ErrorKind.ROW or len(batch) == 1:
            if len(batch) == 1 and kind is not ErrorKind.TRANSIENT:
                counters.rows_refused += 1
            raise sink_error(exc, name, batch) from exc
        bad = _bisect(write, batch, name=name, counters=counters)
        if bad:
            counters.rows_refused += len(bad)
            raise PermanentSinkError(
                f"{name}: {len(bad)} of {len(batch)} events refused by the database "
                f"(first: {bad[0][0].id} {short_error(bad[0][1])}); the other {len(batch) - len(bad)} were stored",
                events=[e for e, _ in bad],
                errors={e.id: f"{name}: {short_error(error)}" for e, error in bad},
            ) from exc


def _bisect(
    write: Callable[[Sequence[Event]], object],
    batch: Sequence[Event],
    *,
    name: str,
    counters: SplitCounters,
) -> list[tuple[Event, BaseException]]:
    """Write ``batch`` in halves, recursively; return the events no write could store."""
    bad: list[tuple[Event, BaseException]] = []
    stack = [list(batch)]
    while stack:
        part = stack.pop()
        try:
            write(part)
        except Exception as exc:
            kind = classify_error(exc)
            if kind is ErrorKind.TRANSIENT:
                # What is stored stays stored; the retry of the whole batch skips it.
                raise sink_error(exc, name, batch) from exc
            if kind is ErrorKind.PERMANENT:  # the batch, not a row: refuse it all
                raise PermanentSinkError(f"{name}: {short_error(exc)}", events=list(batch)) from exc
            if len(part) == 1:
                logger.warning("%s: event %s refused: %s", name, part[0].id, short_error(exc))
                bad.append((part[0], exc))
            else:
                counters.splits += 1
                mid = len(part) // 2
                stack.append(part[mid:])
                stack.append(part[:mid])
    return bad
