"""A sink written outside the library: one CSV row per original event, plugged into a batcher.

    .venv/bin/python examples/custom_sink.py

A sink is any object with ``send(batch)`` (and optionally ``close(timeout)``); subclassing
timelapser_workers.contract.Sink documents the contract. Raise TransientSinkError to be retried, and
PermanentSinkError to refuse a batch (it goes to the dead letter). ``wants_aggregated =
False`` asks for the raw events instead of JOBS_BATCH_* events.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from timelapser_workers import BaseSink, Event, EventBatcher, PermanentSinkError, TransientSinkError, signals


class CsvSink(BaseSink):
    """Append each event as a row: id, created_at, worker, type, job_id."""

    name = "csv"
    wants_aggregated = False  # one row per original event

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.batches = 0

    def send(self, batch: Sequence[Event]) -> None:
        try:
            with open(self.path, "a", newline="") as f:
                writer = csv.writer(f)
                for e in batch:
                    writer.writerow([e.id, f"{e.created_at:.6f}", e.worker, e.type, e.data.get("job_id", "")])
        except FileNotFoundError as exc:  # the directory vanished: retrying cannot help
            raise PermanentSinkError(str(exc)) from exc
        except OSError as exc:  # disk full, NFS hiccup: worth another try
            raise TransientSinkError(str(exc)) from exc
        self.batches += 1


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        sink = CsvSink(Path(tmp) / "events.csv")
        with EventBatcher([sink], dead_letter=Path(tmp) / "dead.jsonl") as batcher:
            batcher.connect()  # every standard signal, from any sender
            for job_id in range(25):
                signals.job_started.send("capture", job_id=job_id)
                signals.job_completed.send("capture", job_id=job_id, processing_time_ms=12.5)
        rows = list(csv.reader(open(sink.path)))
        print(f"{len(rows)} rows written in {sink.batches} batches to {sink.path.name}")
        print("first rows:", *rows[:3], sep="\n  ")
        return 0 if len(rows) == 50 else 1


if __name__ == "__main__":
    sys.exit(main())
