"""The demo: the three example workers on a bursty timelapse workload, run twice (batched and
one event at a time) into a real database, with what batching saved, measured.

    timelapser-workers demo [--duration 10] [--db sqlite:///demo.db | postgresql://...]

``lost`` is counted from the database (the sum of stored rows' batch_count) against what the
workers emitted (counted by an independent signal receiver); the demo fails if it is not 0.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import sqlalchemy as sa

from sinks.base import Event, Sink
from timelapser_workers import EventBatcher, signals

__all__ = ["run_demo", "DemoRun", "add_arguments", "main"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@dataclass
class DemoRun:
    """What one pass of the workload measured."""

    mode: str
    emitted: int
    stored_events: int
    db_transactions: int
    sse_messages: int
    p50_ms: float | None
    p99_ms: float | None
    dead_lettered: int

    @property
    def lost(self) -> int:
        return self.emitted - self.stored_events


class CountingSSESink(Sink):
    """Stands where the SSE hub goes: one SSE message per event it is sent."""

    name = "sse"

    def __init__(self) -> None:
        self.messages = 0

    def send(self, batch: Sequence[Event]) -> None:
        self.messages += len(batch)


class _EmitCounter:
    """Counts every standard signal sent by the demo's workers, independently of the batcher."""

    def __init__(self, senders: Sequence[Any]) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._links = [(s, w) for s in signals.standard_signals() for w in senders]
        for signal, worker in self._links:
            signal.connect(self._receive, sender=worker, weak=False)

    def _receive(self, sender: Any, **kwargs: Any) -> None:
        with self._lock:
            self.count += 1

    def close(self) -> None:
        for signal, worker in self._links:
            signal.disconnect(self._receive, sender=worker)


def _load_examples() -> Any:
    if not (EXAMPLES / "scheduler_worker.py").exists():
        raise SystemExit(
            f"the demo runs the example workers from a source checkout; {EXAMPLES} not found"
        )
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module("scheduler_worker")


def run_once(
    db_url: str,
    table: str,
    *,
    use_batching: bool,
    duration: float,
    workdir: Path,
    cameras: int,
    period: float,
    progress: Callable[[str], None] | None = None,
    keep_table: bool = False,
) -> DemoRun:
    """Run the pipeline for ``duration`` seconds into ``table`` and measure it."""
    from sinks.database import DatabaseSink

    examples = _load_examples()
    mode = "batched" if use_batching else "one by one"
    db = DatabaseSink(db_url, table=table)
    # Create the table (and open the first connection) now: a one-off setup, not the cost of
    # delivering an event (it put ~25 ms on the first batch, which is 2-3% of a short run: p99).
    db.ensure_table()
    sse = CountingSSESink()
    batcher = EventBatcher([db, sse], name=f"demo-{'batched' if use_batching else 'single'}",
                           dead_letter=workdir / "dead-letter.jsonl", use_batching=use_batching)
    workers = examples.build_pipeline(workdir / table, batcher, cameras=cameras, period=period,
                                      use_batching=use_batching)
    counter = _EmitCounter(workers)
    try:
        start = time.monotonic()
        for worker in workers:
            worker.start()
        while (left := duration - (time.monotonic() - start)) > 0:
            time.sleep(min(0.25, left))
            if progress:
                s = batcher.stats()
                progress(
                    f"{mode:>10}: {time.monotonic() - start:5.1f}s  events {counter.count:5d}  "
                    f"db batches {s['sinks'][db.name]['batches_sent']:5d}  queue {s['queue_depth']:3d}"
                )
        for worker in workers:  # the scheduler first: the others finish the frames it made
            worker.stop(timeout=10)
        batcher.close(timeout=10)
    finally:
        counter.close()
    stats = batcher.stats()["sinks"][db.name]
    with db.engine.connect() as conn:
        stored = conn.execute(sa.text(f'SELECT COALESCE(SUM(batch_count), 0) FROM "{table}"')).scalar_one()
    if not keep_table:
        with db.engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE "{table}"'))
    db.engine.dispose()
    return DemoRun(
        mode=mode,
        emitted=counter.count,
        stored_events=int(stored),
        db_transactions=stats["batches_sent"],
        sse_messages=sse.messages,
        p50_ms=stats["latency_p50_ms"],
        p99_ms=stats["latency_p99_ms"],
        dead_lettered=stats["dead_lettered"],
    )


def format_table(batched: DemoRun, single: DemoRun) -> str:
    """The side-by-side table the demo prints."""

    def per_1000(run: DemoRun, value: int) -> float:
        return 1000.0 * value / run.emitted if run.emitted else 0.0

    def reduction(b: float, s: float) -> str:
        return f"{100.0 * (1 - b / s):.1f}%" if s else "-"

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    rows = [
        ("events emitted", str(batched.emitted), str(single.emitted), ""),
        ("database transactions", str(batched.db_transactions), str(single.db_transactions),
         reduction(per_1000(batched, batched.db_transactions), per_1000(single, single.db_transactions))),
        ("  per 1,000 events", f"{per_1000(batched, batched.db_transactions):.0f}",
         f"{per_1000(single, single.db_transactions):.0f}", ""),
        ("SSE messages", str(batched.sse_messages), str(single.sse_messages),
         reduction(per_1000(batched, batched.sse_messages), per_1000(single, single.sse_messages))),
        ("delivery p50 (ms)", ms(batched.p50_ms), ms(single.p50_ms), ""),
        ("delivery p99 (ms)", ms(batched.p99_ms), ms(single.p99_ms), ""),
        ("dead-lettered", str(batched.dead_lettered), str(single.dead_lettered), ""),
        ("lost (emitted - stored)", str(batched.lost), str(single.lost), ""),
    ]
    head = ("", "batched", "one by one", "reduction")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    lines = ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
             for r in [head] + rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds each of the two runs lasts (default 10)")
    parser.add_argument("--db", default=None,
                        help="database URL (default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the demo's tables in --db (default: drop them after counting)")
    parser.add_argument("--cameras", type=int, default=6, help="cameras due in each burst (default 6)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between bursts (default 1)")


def run_demo(args: argparse.Namespace) -> int:
    """Run both passes, print the table; exit status 1 if any event was lost."""
    if args.duration <= 0 or args.cameras < 1 or args.period <= 0:
        print("demo: --duration and --period must be > 0 and --cameras >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="timelapser-demo-") as tmp:
        workdir = Path(tmp)
        db_url = args.db or f"sqlite:///{workdir / 'demo.db'}"
        suffix = f"{int(time.time())}"
        tty = sys.stderr.isatty()

        def progress(line: str) -> None:
            if tty:
                print("\r" + line, end="", file=sys.stderr, flush=True)

        print(f"timelapser-workers demo: {args.cameras} cameras every {args.period:g}s, "
              f"{args.duration:g}s per run, database {db_url}", file=sys.stderr)
        runs = []
        for use_batching in (True, False):
            runs.append(run_once(
                db_url, f"demo_events_{'batched' if use_batching else 'single'}_{suffix}",
                use_batching=use_batching, duration=args.duration, workdir=workdir,
                cameras=args.cameras, period=args.period, progress=progress,
                keep_table=args.keep,
            ))
            if tty:
                print(file=sys.stderr)
            else:
                r = runs[-1]
                print(f"{r.mode}: {r.emitted} events, {r.db_transactions} transactions", file=sys.stderr)
        print(format_table(*runs))
        lost = sum(r.lost for r in runs)
        if lost:
            print(f"demo: {lost} event(s) lost: this is a bug", file=sys.stderr)
            return 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="timelapser-workers demo")
    add_arguments(parser)
    return run_demo(parser.parse_args(argv))
