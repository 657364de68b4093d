"""Serve the live dashboard: sample workers -> EventBatcher -> SSESink -> browsers.

    .venv/bin/python examples/dashboard/serve.py [--port 8765] [--duration 0] [--workers 3]

Then open http://127.0.0.1:8765/ . The web app is the package's own
(``timelapser_workers.app.dashboard.make_app``, also behind ``timelapser-workers demo --serve``):
``/`` the page (plain JavaScript with EventSource), ``/events`` the SSE stream, ``/stats`` the
batcher's and the hub's counters as JSON, ``/metrics`` the same counters for Prometheus (with
the ``prometheus`` extra installed). This script adds a few sample workers.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # runs directly from a checkout, like every example
    sys.path.insert(0, str(ROOT))

from timelapser_workers.app.dashboard import make_app  # noqa: E402
from timelapser_workers.sinks.sse import SSESink  # noqa: E402
from timelapser_workers.sinks.sse.wsgi import ServerThread, make_server  # noqa: E402
from timelapser_workers.batcher import EventBatcher  # noqa: E402

__all__ = ["make_app", "SampleWorkers", "main"]


class SampleWorkers:
    """A few threads that behave like timelapse workers: jobs start, finish, sometimes fail."""

    NAMES = ("thumbnail", "overlay", "scheduler", "video", "cleanup")

    def __init__(self, batcher: EventBatcher, count: int = 3, jobs_per_second: float = 20.0) -> None:
        self.batcher = batcher
        self.names = self.NAMES[: max(1, min(count, len(self.NAMES)))]
        self.pause = 1.0 / max(jobs_per_second, 0.1)
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(n,), name=f"sample-{n}", daemon=True) for n in self.names]

    def start(self) -> "SampleWorkers":
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)

    def _work(self, name: str) -> None:
        rng = random.Random(name)
        emit = self.batcher.emit
        emit("WORKER_STARTED", {"pid_hint": name}, worker=name, source="dashboard")
        job = 0
        while not self.stop_event.is_set():
            burst = rng.randint(1, 6)  # timelapse workloads come in bursts
            for _ in range(burst):
                job += 1
                emit("JOB_STARTED", {"job_id": job}, worker=name, source="dashboard")
            for j in range(job - burst + 1, job + 1):
                if self.stop_event.wait(self.pause * rng.uniform(0.5, 1.5)):
                    break
                if rng.random() < 0.08:
                    emit("JOB_FAILED", {"job_id": j, "error": "frame unreadable"}, worker=name, source="dashboard")
                else:
                    emit("JOB_COMPLETED", {"job_id": j, "ms": rng.randint(20, 400)}, worker=name, source="dashboard")
            if job % 30 < burst:
                emit("WORKER_STATISTICS", {"jobs": job}, worker=name, source="dashboard")
        emit("WORKER_STOPPED", {"jobs": job}, worker=name, source="dashboard")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: until Ctrl-C)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=20.0, help="jobs per second per worker")
    args = parser.parse_args(argv)

    sink = SSESink(replay_events=2000)
    batcher = EventBatcher([sink], batch_size=10, batch_timeout=0.5)
    server = ServerThread(make_server(make_app(sink, batchers=[batcher]), args.host, args.port)).start()
    workers = SampleWorkers(batcher, args.workers, args.rate).start()
    print(f"dashboard: {server.url}/  (Ctrl-C to stop; a development server: for production see "
          "the README's Server-Sent Events section)", flush=True)
    try:
        if args.duration > 0:
            time.sleep(args.duration)
        else:
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        workers.stop()
        batcher.close(5.0)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
