"""SSEBroadcaster: the seed's per-worker API, kept, on top of signals and the shared batcher.

    b = SSEBroadcaster(worker_name="thumbnailworker", event_source="thumbnail_worker")
    b.broadcast_job_started(123)

Each ``broadcast_*`` sends the matching blinker signal (sender: ``sender`` or the broadcaster
itself); the batcher it is attached to hears that sender and batches the events. With
``use_batching=False`` every event is delivered on its own (the rollback switch), through the
same sinks, retries and stats.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from blinker import NamedSignal

from timelapser_workers import signals
from timelapser_workers.batcher import EventBatcher
from timelapser_workers.default import get_default_batcher
from timelapser_workers.events import Priority

__all__ = ["SSEBroadcaster"]

logger = logging.getLogger(__name__)


class SSEBroadcaster:
    """Broadcast one worker's lifecycle events through the signals to a batcher."""

    def __init__(
        self,
        worker_name: str,
        event_source: str | None = None,
        use_batching: bool = True,
        batcher: EventBatcher | None = None,
        *,
        sender: Any = None,
    ) -> None:
        if not isinstance(worker_name, str) or not worker_name:
            raise ValueError(f"worker_name must be a non-empty str, got {worker_name!r}")
        if not isinstance(use_batching, bool):
            raise ValueError(f"use_batching={use_batching!r} must be True or False")
        self.name = self.worker_name = worker_name
        self.event_source = event_source if event_source is not None else worker_name
        self.use_batching = use_batching
        self.batcher = batcher if batcher is not None else get_default_batcher()
        self.sender = sender if sender is not None else self
        self.broadcast_count = 0
        self.failed_broadcast_count = 0
        self.batcher.connect(sender=self.sender)

    def _send(self, signal: NamedSignal, priority: Priority = Priority.NORMAL, **data: Any) -> bool:
        """Send ``signal``; True if the batcher took the event (False: refused or dropped)."""
        try:
            results = signal.send(self.sender, source=self.event_source, priority=priority,
                                  use_batching=self.use_batching, **data)
        except Exception:  # another receiver of the signal failed: never into the worker
            logger.exception("a receiver of %s from %r raised", signal.name, self.worker_name)
            results = []
        accepted = any(value is True for _, value in results)
        if accepted:
            self.broadcast_count += 1
        else:
            self.failed_broadcast_count += 1
        return accepted

    # --- the seed's API ------------------------------------------------------------------
    def broadcast_job_started(self, job_id: Any, **data: Any) -> bool:
        return self._send(signals.job_started, job_id=job_id, **data)

    def broadcast_job_completed(self, job_id: Any, processing_time_ms: float, **data: Any) -> bool:
        return self._send(
            signals.job_completed, job_id=job_id, processing_time_ms=processing_time_ms, **data
        )

    def broadcast_job_failed(
        self, job_id: Any, error_message: str, is_permanent: bool = False, **data: Any
    ) -> bool:
        return self._send(
            signals.job_failed, job_id=job_id, error_message=error_message,
            is_permanent=is_permanent, **data,
        )

    def broadcast_job_retry_scheduled(
        self, job_id: Any, attempt: int, retry_in_seconds: float, error_message: str = "", **data: Any
    ) -> bool:
        return self._send(
            signals.job_retry_scheduled, job_id=job_id, attempt=attempt,
            retry_in_seconds=retry_in_seconds, error_message=error_message, **data,
        )

    def broadcast_worker_started(self, **data: Any) -> bool:
        return self._send(signals.worker_started, **data)

    def broadcast_worker_stopped(self, **data: Any) -> bool:
        return self._send(signals.worker_stopped, **data)

    def broadcast_worker_error(self, error_message: str, **data: Any) -> bool:
        return self._send(signals.worker_error, Priority.HIGH, error_message=error_message, **data)

    def broadcast_worker_statistics(self, stats: Mapping[str, Any]) -> bool:
        return self._send(signals.worker_statistics, data=dict(stats))

    def get_broadcast_stats(self) -> dict[str, Any]:
        """This broadcaster's counts and its batcher's figures, prefixed ``batcher_``."""
        out: dict[str, Any] = {
            "worker_name": self.worker_name,
            "event_source": self.event_source,
            "batching_enabled": self.use_batching,
            "broadcast_count": self.broadcast_count,
            "failed_broadcast_count": self.failed_broadcast_count,
        }
        for key, value in self.batcher.stats().items():
            out[f"batcher_{key}"] = value
        return out

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop broadcasting: disconnect from the batcher (which others may share, so it is
        flushed for up to ``timeout`` seconds, not closed)."""
        self.batcher.disconnect(self.sender)
        if not self.batcher.closed:
            self.batcher.flush(timeout)

    def __repr__(self) -> str:
        return f"<SSEBroadcaster {self.worker_name!r} batching={self.use_batching}>"
