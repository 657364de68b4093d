"""The contract between an SSEHub and a shared log behind it (a Redis stream, say): when a client
resumes with an id the hub's replay buffer does not hold, the hub asks the log what came after it.

The hub calls :meth:`BackingLog.read_after` outside its lock, from the thread that subscribes the
client, then splices the answer into the live stream under its lock: the entries must end with
an entry the hub has published (or be empty when the hub has published the id itself and nothing
after it), so the replay buffer takes over where they end, with no gap and no double.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Protocol, Sequence

__all__ = ["Backlog", "BackingLog"]


@dataclasses.dataclass(frozen=True)
class Backlog:
    """A backing log's answer to "what came after this id?".

    ``entries``: (SSE id, record) pairs after the id, oldest first, ending with an entry the hub
    has published (or none, when the hub has published the id itself and nothing after it).
    ``lost``: why the log cannot tell (the id is unknown, or retention dropped what followed
    it); the client then gets ``stream-reset`` with this reason.
    """

    entries: Sequence[tuple[str, Mapping[str, Any]]] = ()
    lost: str | None = None


class BackingLog(Protocol):
    """Where a hub looks up a resume id its replay buffer does not hold (see :class:`Backlog`).

    Called outside the hub's lock, from the thread that subscribes the client (it may block on
    I/O, with a deadline of its own); an exception counts as ``lost``.
    """

    def read_after(self, last_event_id: str) -> Backlog:
        """What followed ``last_event_id``, up to what the hub has published."""
