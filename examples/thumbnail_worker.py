"""A ThumbnailWorker: makes real thumbnails of real JPEG frames, with batched job events.

    .venv/bin/python examples/thumbnail_worker.py

It draws a few sample frames, runs the worker over them with two jobs at once, and prints what
the sinks received: JOB_STARTED x N became a few JOBS_BATCH_STARTED events.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image

from common import Inbox, make_sample_frames
from timelapser_workers.sinks import MemorySink
from timelapser_workers import EventBatcher, ThreadWorker

THUMBNAIL_SIZE = (160, 120)


class ThumbnailWorker(ThreadWorker):
    """Jobs are dicts {"id": ..., "frame": path}; each makes <frame>.thumb.jpg beside it."""

    event_source = "thumbnail_worker"

    def __init__(self, inbox: Inbox, **kwargs) -> None:
        super().__init__("thumbnailworker", **kwargs)
        self.inbox = inbox

    def fetch_jobs(self, limit):
        return self.inbox.take(limit)

    def process_job(self, job):
        frame = Path(job["frame"])
        with Image.open(frame) as image:
            image.thumbnail(THUMBNAIL_SIZE)
            image.save(frame.with_suffix(".thumb.jpg"), "JPEG", quality=85)

    def queue_length(self):
        return len(self.inbox)


def main() -> int:
    sink = MemorySink()
    with tempfile.TemporaryDirectory() as tmp, EventBatcher([sink], dead_letter=Path(tmp) / "dead.jsonl") as batcher:
        frames = make_sample_frames(Path(tmp) / "frames", 12)
        inbox = Inbox()
        for n, frame in enumerate(frames):
            inbox.put({"id": n, "frame": str(frame)})
        worker = ThumbnailWorker(inbox, interval=0.05, concurrency=2, batcher=batcher)
        with worker:
            while worker.jobs_done + worker.jobs_failed < len(frames):
                worker.join(0.05)
        thumbs = sorted(Path(tmp, "frames").glob("*.thumb.jpg"))
        with Image.open(thumbs[0]) as t:
            print(f"made {len(thumbs)} thumbnails, e.g. {thumbs[0].name} {t.size[0]}x{t.size[1]}")
        batcher.flush(5)
        for event in sink.events:
            print(f"  {event.type:<22} batch_count={event.batch_count:<3} job_ids={event.data.get('job_ids', event.data.get('job_id', ''))}")
        stats = batcher.stats()
        print(f"{stats['events_received']} events -> {sum(len(b) for b in sink.batches)} delivered "
              f"({stats['events_saved']} saved by aggregation)")
        return 0 if len(thumbs) == len(frames) else 1


if __name__ == "__main__":
    sys.exit(main())
