"""The demo's own workers: a scheduler that captures a frame per camera in bursts, and the
thumbnail and overlay workers it feeds. They ship inside the package, so ``timelapser-workers
demo`` runs after a plain ``pip install`` (the repository's examples/ show the same workers
written as a user would, with Pillow; these use :mod:`.frames`, where Pillow is optional).

Every ``period`` seconds every camera is due at once: that burst is what makes timelapse
traffic worth batching.
"""

from __future__ import annotations

import datetime as dt
import itertools
import queue
import time
from pathlib import Path
from typing import Any

from timelapser_workers import EventBatcher, PermanentJobError, ThreadWorker
from timelapser_workers.app.frames import make_frame, make_thumbnail, stamp_caption

__all__ = ["Inbox", "SchedulerWorker", "ThumbnailWorker", "OverlayWorker", "build_pipeline"]

Job = dict[str, Any]


class Inbox:
    """A thread-safe job queue that ``fetch_jobs`` takes from."""

    def __init__(self) -> None:
        self._q: queue.Queue[Job] = queue.Queue()

    def put(self, job: Job) -> None:
        self._q.put(job)

    def take(self, limit: int) -> list[Job]:
        """Up to ``limit`` jobs, without waiting."""
        jobs: list[Job] = []
        while len(jobs) < limit:
            try:
                jobs.append(self._q.get_nowait())
            except queue.Empty:
                break
        return jobs

    def __len__(self) -> int:
        return self._q.qsize()


class _InboxWorker(ThreadWorker):
    """A worker whose jobs come from an :class:`Inbox`."""

    def __init__(self, name: str, inbox: Inbox, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.inbox = inbox

    def fetch_jobs(self, limit: int) -> list[Job]:
        return self.inbox.take(limit)

    def queue_length(self) -> int:
        return len(self.inbox)


class ThumbnailWorker(_InboxWorker):
    """Jobs {"id", "frame"}: each writes a thumbnail beside its frame."""

    event_source = "thumbnail_worker"

    def __init__(self, inbox: Inbox, **kwargs: Any) -> None:
        super().__init__("thumbnailworker", inbox, **kwargs)

    def process_job(self, job: Job) -> None:
        make_thumbnail(Path(job["frame"]))


class OverlayWorker(_InboxWorker):
    """Jobs {"id", "frame", "camera", "captured_at"}: each stamps the capture time on a copy.
    A missing frame fails permanently (no point retrying)."""

    event_source = "overlay_worker"

    def __init__(self, inbox: Inbox, **kwargs: Any) -> None:
        super().__init__("overlayworker", inbox, **kwargs)

    def process_job(self, job: Job) -> None:
        frame = Path(job["frame"])
        if not frame.exists():
            raise PermanentJobError(f"frame {frame} does not exist")
        stamp_caption(frame, f"cam {job.get('camera', 0)}  {job.get('captured_at', '')}")


class SchedulerWorker(ThreadWorker):
    """Captures one frame per camera every ``period`` seconds and hands it to ``outputs``."""

    event_source = "scheduler_worker"

    def __init__(self, frames_dir: Path, cameras: int, period: float, outputs: list[Inbox],
                 **kwargs: Any) -> None:
        kwargs.setdefault("interval", min(0.05, period / 4))
        kwargs.setdefault("concurrency", 2)
        super().__init__("schedulerworker", **kwargs)
        self.frames_dir = Path(frames_dir)
        self.cameras = cameras
        self.period = period
        self.outputs = outputs
        self._ids = itertools.count(1)
        self._next_due = time.monotonic()
        self._pending: list[Job] = []
        self.captured = 0

    def fetch_jobs(self, limit: int) -> list[Job]:
        now = time.monotonic()
        if now >= self._next_due:  # a burst: every camera is due at once
            self._pending += [{"id": next(self._ids), "camera": c} for c in range(self.cameras)]
            while self._next_due <= now:
                self._next_due += self.period
        jobs, self._pending = self._pending[:limit], self._pending[limit:]
        return jobs

    def process_job(self, job: Job) -> None:
        captured_at = dt.datetime.now().isoformat(timespec="milliseconds")
        frame = make_frame(self.frames_dir / f"cam{job['camera']}_{job['id']:06d}", seed=job["id"])
        self.captured += 1
        for inbox in self.outputs:
            inbox.put({"id": job["id"], "frame": str(frame), "camera": job["camera"],
                       "captured_at": captured_at})

    def queue_length(self) -> int:
        return len(self._pending)


def build_pipeline(workdir: Path, batcher: EventBatcher, *, cameras: int = 4, period: float = 1.0,
                   use_batching: bool = True) -> list[ThreadWorker]:
    """The three workers wired together (not started): scheduler -> (thumbnails, overlays).
    Stop them in this order, so the others finish the frames the scheduler made."""
    thumbs_in, overlay_in = Inbox(), Inbox()
    return [
        SchedulerWorker(workdir / "frames", cameras, period, [thumbs_in, overlay_in],
                        batcher=batcher, use_batching=use_batching),
        ThumbnailWorker(thumbs_in, interval=0.05, concurrency=3, batcher=batcher,
                        use_batching=use_batching),
        OverlayWorker(overlay_in, interval=0.05, concurrency=2, batcher=batcher,
                      use_batching=use_batching),
    ]
