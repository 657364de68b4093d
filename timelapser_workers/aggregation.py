"""Aggregation: turn runs of similar events into one batch event, losing nothing.

Events are grouped by (worker, type, source). A group of two or more becomes one batch event
(JOB_STARTED x3 -> JOBS_BATCH_STARTED with ``job_ids``, ``batch_count`` and ``items``); a group
of one passes through unchanged. Types in ``never_merge`` always pass through alone.

Order: a batch event stands at the position of its first member. Events of one worker that
share a ``job_id`` keep their emission order: an event never joins a group that would deliver
it before an earlier event of the same job (JOB_COMPLETED of job 7 never precedes its
JOB_STARTED); such an event opens a new group instead.
"""

from __future__ import annotations

from typing import Any, Hashable, Iterable, Mapping, Sequence

import orjson
from orjson import Fragment  # the members' payloads, spliced in as they are

from timelapser_workers.events import (
    JOB_COMPLETED,
    JOB_FAILED,
    JOB_STARTED,
    JOBS_BATCH_COMPLETED,
    JOBS_BATCH_FAILED,
    JOBS_BATCH_STARTED,
    WORKER_ERROR,
    WORKER_STATISTICS,
    Event,
    new_event_id,
)

__all__ = ["AggregationPolicy", "DEFAULT_BATCH_TYPES", "DEFAULT_NEVER_MERGE", "Aggregated"]

DEFAULT_BATCH_TYPES: Mapping[str, str] = {
    JOB_STARTED: JOBS_BATCH_STARTED,
    JOB_COMPLETED: JOBS_BATCH_COMPLETED,
    JOB_FAILED: JOBS_BATCH_FAILED,
}
# Snapshots and errors are each worth seeing on their own.
DEFAULT_NEVER_MERGE: frozenset[str] = frozenset({WORKER_STATISTICS, WORKER_ERROR})


class Aggregated:
    """The result of aggregating one flush: the events to send and what merging saved."""

    __slots__ = ("events", "batches_created", "events_batched")

    def __init__(self, events: list[Event], batches_created: int, events_batched: int) -> None:
        self.events = events
        self.batches_created = batches_created  # batch events made from groups of 2 or more
        self.events_batched = events_batched  # original events inside those batch events

    @property
    def events_saved(self) -> int:
        """Individual events avoided: each batch event of N members saves N - 1."""
        return self.events_batched - self.batches_created


class AggregationPolicy:
    """Which types merge, and into what. Subclass and override :meth:`batch_type` or
    :meth:`merge` for other rules, or pass your own tables."""

    def __init__(
        self,
        batch_types: Mapping[str, str] | None = None,
        never_merge: Iterable[str] | None = None,
    ) -> None:
        self.batch_types = dict(DEFAULT_BATCH_TYPES if batch_types is None else batch_types)
        self.never_merge = frozenset(DEFAULT_NEVER_MERGE if never_merge is None else never_merge)

    def batch_type(self, event_type: str) -> str | None:
        """The type a group of ``event_type`` events becomes, or None if it never merges."""
        if event_type in self.never_merge:
            return None
        return self.batch_types.get(event_type) or f"{event_type}_BATCH"

    def merge(self, batch_type: str, members: Sequence[Event]) -> Event:
        """One batch event standing for ``members`` (two or more, same worker/type/source).
        Its data is ``batch_count``, ``job_ids`` (if the members have them) and ``items``, each
        member's id, created_at and data: the members' encoded payloads spliced in as they are."""
        first = members[0]
        data: dict[str, Any] = {"batch_count": len(members)}
        job_ids = [m.job_id for m in members if m.job_id is not None]
        if job_ids:
            data["job_ids"] = job_ids
        data["items"] = [{"id": m.id, "created_at": m.created_at, "data": Fragment(m.payload)}
                         for m in members]
        return Event(
            id=new_event_id(),
            type=batch_type,
            payload=orjson.dumps(data),
            source=first.source,
            worker=first.worker,
            priority=max(m.priority for m in members),
            created_at=first.created_at,
            created_mono=first.created_mono,
            members=tuple(members),
        )

    def aggregate(self, events: Sequence[Event]) -> Aggregated:
        """Group ``events`` (in emission order) and merge each group of two or more."""
        groups: list[list[Event]] = []
        group_types: list[str | None] = []
        open_group: dict[tuple[Any, ...], int] = {}
        job_pos: dict[tuple[Any, Hashable], int] = {}  # (worker, job_id) -> last group index
        for event in events:
            btype = self.batch_type(event.type)
            job = event.job_id
            dep = None if job is None else (event.worker, job)
            index = None
            if btype is not None:
                key = (event.worker, event.type, event.source)
                index = open_group.get(key)
                if index is not None and dep is not None and job_pos.get(dep, -1) > index:
                    index = None  # joining would deliver it before an earlier event of its job
            if index is None:
                index = len(groups)
                groups.append([event])
                group_types.append(btype)
                if btype is not None:
                    open_group[key] = index
            else:
                groups[index].append(event)
            if dep is not None:
                job_pos[dep] = index
        out: list[Event] = []
        created = batched = 0
        for members, btype in zip(groups, group_types):
            if len(members) == 1 or btype is None:
                out.extend(members)
            else:
                out.append(self.merge(btype, members))
                created += 1
                batched += len(members)
        return Aggregated(out, created, batched)
