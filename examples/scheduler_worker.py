"""A SchedulerWorker: fires periodic capture jobs that feed the thumbnail and overlay workers.

    .venv/bin/python examples/scheduler_worker.py

Every ``period`` seconds each camera is due at the same moment (that is what makes timelapse
traffic bursty): the scheduler "captures" a frame per camera and hands each frame to the
ThumbnailWorker and the OverlayWorker. All three share one batcher.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sys
import tempfile
import time
from pathlib import Path

from common import Inbox, make_frame
from overlay_worker import OverlayWorker
from timelapser_workers.sinks import MemorySink
from thumbnail_worker import ThumbnailWorker
from timelapser_workers import EventBatcher, ThreadWorker


class SchedulerWorker(ThreadWorker):
    """Captures one frame per camera every ``period`` seconds, feeding ``outputs``."""

    event_source = "scheduler_worker"

    def __init__(self, frames_dir: Path, cameras: int, period: float, outputs: list[Inbox], **kwargs) -> None:
        kwargs.setdefault("interval", min(0.05, period / 4))
        kwargs.setdefault("concurrency", 2)
        super().__init__("schedulerworker", **kwargs)
        self.frames_dir = Path(frames_dir)
        self.cameras = cameras
        self.period = period
        self.outputs = outputs
        self._ids = itertools.count(1)
        self._next_due = time.monotonic()
        self._pending: list[dict] = []
        self.captured = 0

    def fetch_jobs(self, limit):
        now = time.monotonic()
        if now >= self._next_due:  # a burst: every camera is due at once
            tick = round(now, 3)
            self._pending += [{"id": next(self._ids), "camera": c, "tick": tick} for c in range(self.cameras)]
            while self._next_due <= now:
                self._next_due += self.period
        jobs, self._pending = self._pending[:limit], self._pending[limit:]
        return jobs

    def process_job(self, job):
        captured_at = dt.datetime.now().isoformat(timespec="milliseconds")
        frame = make_frame(self.frames_dir / f"cam{job['camera']}_{job['id']:06d}.jpg", seed=job["id"], size=(320, 240))
        self.captured += 1
        for inbox in self.outputs:
            inbox.put({"id": job["id"], "frame": str(frame), "camera": job["camera"], "captured_at": captured_at})

    def queue_length(self):
        return len(self._pending)


def build_pipeline(workdir: Path, batcher: EventBatcher, *, cameras: int = 4, period: float = 1.0,
                   use_batching: bool = True) -> list[ThreadWorker]:
    """The three workers wired together: scheduler -> (thumbnails, overlays)."""
    thumbs_in, overlay_in = Inbox(), Inbox()
    common = {"batcher": batcher, "use_batching": use_batching}
    return [
        SchedulerWorker(workdir / "frames", cameras, period, [thumbs_in, overlay_in], **common),
        ThumbnailWorker(thumbs_in, interval=0.05, concurrency=3, **common),
        OverlayWorker(overlay_in, interval=0.05, concurrency=2, **common),
    ]


def main() -> int:
    sink = MemorySink()
    with tempfile.TemporaryDirectory() as tmp, EventBatcher([sink], dead_letter=Path(tmp) / "dead.jsonl") as batcher:
        workers = build_pipeline(Path(tmp), batcher, cameras=4, period=0.5)
        for worker in workers:
            worker.start()
        time.sleep(2.2)  # about four bursts
        for worker in workers:  # the scheduler first, so the others can finish its frames
            worker.stop(timeout=10)
        batcher.flush(5)
        scheduler, thumbs, overlays = workers
        print(f"captured {scheduler.captured} frames; thumbnails {thumbs.jobs_done}, overlays {overlays.jobs_done}")
        stats = batcher.stats()
        print(f"{stats['events_received']} events emitted -> {len(sink.events)} delivered "
              f"in {stats['sinks']['memory']['batches_sent']} batches")
        ok = scheduler.captured > 0 and thumbs.jobs_done + len(thumbs.inbox) >= 1
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
