"""An OverlayWorker: stamps each frame's capture time onto it, with batched job events.

    .venv/bin/python examples/overlay_worker.py

Jobs whose frame is missing fail permanently (PermanentJobError): no point retrying those.
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

from common import Inbox, make_sample_frames
from timelapser_workers.sinks import MemorySink
from timelapser_workers import EventBatcher, PermanentJobError, ThreadWorker


class OverlayWorker(ThreadWorker):
    """Jobs are dicts {"id", "frame", "captured_at" (ISO)}; each writes <frame>.overlay.jpg."""

    event_source = "overlay_worker"

    def __init__(self, inbox: Inbox, **kwargs) -> None:
        super().__init__("overlayworker", **kwargs)
        self.inbox = inbox

    def fetch_jobs(self, limit):
        return self.inbox.take(limit)

    def process_job(self, job):
        frame = Path(job["frame"])
        if not frame.exists():
            raise PermanentJobError(f"frame {frame} does not exist")
        stamp = job.get("captured_at") or dt.datetime.now().isoformat(timespec="seconds")
        with Image.open(frame) as image:
            image = image.convert("RGB")
            draw = ImageDraw.Draw(image)
            w, h = image.size
            draw.rectangle([0, h - 28, w, h], fill=(0, 0, 0))
            draw.text((8, h - 22), f"cam {job.get('camera', 0)}  {stamp}", fill=(255, 255, 255))
            image.save(frame.with_suffix(".overlay.jpg"), "JPEG", quality=85)

    def queue_length(self):
        return len(self.inbox)


def main() -> int:
    sink = MemorySink()
    with tempfile.TemporaryDirectory() as tmp, EventBatcher([sink], dead_letter=Path(tmp) / "dead.jsonl") as batcher:
        frames = make_sample_frames(Path(tmp) / "frames", 8)
        inbox = Inbox()
        for n, frame in enumerate(frames):
            inbox.put({"id": n, "frame": str(frame), "camera": 1,
                       "captured_at": dt.datetime(2026, 11, 28, 12, 0, n).isoformat()})
        inbox.put({"id": 99, "frame": str(Path(tmp) / "missing.jpg")})
        worker = OverlayWorker(inbox, interval=0.05, concurrency=2, batcher=batcher)
        with worker:
            while worker.jobs_done + worker.jobs_failed < len(frames) + 1:
                worker.join(0.05)
        stamped = sorted(Path(tmp, "frames").glob("*.overlay.jpg"))
        print(f"stamped {len(stamped)} frames; {worker.jobs_failed} job failed permanently")
        batcher.flush(5)
        for event in sink.events:
            extra = event.data.get("error_message", "")
            print(f"  {event.type:<22} batch_count={event.batch_count:<3} {extra}")
        return 0 if len(stamped) == len(frames) and worker.jobs_failed == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
