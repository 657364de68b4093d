"""How many events a batcher can hold in memory and nowhere else: the README's formula ("What
can be lost, exactly"), computed from the settings the same way the README states it, for the
tests that check it (SIGKILL loses at most this many; RSS grows by at most this many events).

Each term is a place the code keeps accepted events before a sink or the dead-letter file has
them:

- ``Q``: the ingress queue (ingress.py). A put checks the bound, then appends, without a lock:
  producers racing for the last places pass it by at most their number, less one.
- ``D``: the flush thread (flusher.py), between draining the queue and handing the flush to the
  lanes: one drained queue plus what the per-worker buffers held already (fewer than
  ``batch_size`` per (type, source) group; one buffer when no sink aggregates). One flush is one
  batch, so ``D`` is also the largest batch.
- each lane (lane.py, a WorkQueue of ``lane_max_events``): what it queues, at most
  ``max(lane_max_events, D)`` (a batch larger than the lane gets in when the lane is empty), plus
  the batch in flight, at most ``D``.
- the dead-letter writer (deadletter.py, a WorkQueue of ``lane_max_events`` too): as much queued,
  plus the batch its handler is writing.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Holders"]


@dataclasses.dataclass(frozen=True)
class Holders:
    """The settings and the shape of a program that decide what it can hold in memory."""

    max_queue_size: int
    lane_max_events: int
    batch_size: int
    producers: int  # threads putting events on the ingress
    workers: int  # distinct worker names
    groups: int = 1  # (type, source) pairs per worker
    sinks: int = 1
    aggregating: bool = True  # some sink wants aggregated events (per-worker buffers)

    @property
    def ingress(self) -> int:
        return self.max_queue_size + self.producers - 1

    @property
    def flush(self) -> int:
        buffers = self.workers * self.groups if self.aggregating else 1
        return self.ingress + buffers * (self.batch_size - 1)

    @property
    def lane(self) -> int:
        return max(self.lane_max_events, self.flush) + self.flush

    @property
    def dead_letters(self) -> int:
        return max(self.lane_max_events, self.flush) + self.flush

    @property
    def bound(self) -> int:
        """Q + D + S x (max(lane_max_events, D) + D) + max(lane_max_events, D) + D."""
        return self.ingress + self.flush + self.sinks * self.lane + self.dead_letters

    def __str__(self) -> str:
        return (f"Q {self.ingress:,} + D {self.flush:,} + {self.sinks} lane(s) x {self.lane:,} "
                f"+ dead letters {self.dead_letters:,} = {self.bound:,}")
