"""The demo: three timelapse workers on a bursty workload, run twice (batched and
one event at a time) into a real database and a real SSE stream, with what batching saved,
measured.

    timelapser-workers demo [--duration 10] [--db sqlite:///demo.db | postgresql://...]
    timelapser-workers demo --serve [--port 8765]      # the live dashboard, until Ctrl-C

``lost`` is counted from the database (the sum of stored rows' batch_count) against what the
workers emitted (counted by an independent signal receiver); the demo fails if it is not 0.
SSE messages are counted by a real client reading the stream over a socket.

Everything it needs ships in the package (its workers in :mod:`.demo_workers`, the dashboard
in :mod:`.dashboard`), so it runs after a plain ``pip install``; Pillow is optional (see
:mod:`.frames`). This is an application of the library, not part of the core.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import sqlalchemy as sa

from timelapser_workers import EventBatcher, signals
from timelapser_workers.app import dashboard, demo_workers, frames

__all__ = ["run_demo", "DemoRun", "add_arguments", "main"]


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


class _SSEClient(threading.Thread):
    """A real SSE client on a real socket: counts the event messages (``id:`` lines) it gets."""

    def __init__(self, host: str, port: int, path: str = "/events") -> None:
        super().__init__(name="demo-sse-client", daemon=True)
        self.messages = 0
        self._conn = http.client.HTTPConnection(host, port, timeout=10)
        self._conn.request("GET", path, headers={"Accept": "text/event-stream"})
        self._response = self._conn.getresponse()
        if self._response.status != 200:
            raise RuntimeError(f"SSE endpoint answered {self._response.status}")
        self.start()

    def run(self) -> None:
        try:
            for line in self._response:
                if line.startswith(b"id:"):
                    self.messages += 1
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by us or by the server

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.messages < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.messages >= count

    def close(self) -> None:
        try:
            self._conn.sock and self._conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._conn.close()
        self.join(5)


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


class _Pipeline:
    """The demo's wiring: DatabaseSink + SSESink behind one batcher, the dashboard's WSGI app
    on 127.0.0.1, and the three demo workers (not yet started)."""

    def __init__(self, db_url: str, table: str, *, use_batching: bool, workdir: Path,
                 cameras: int, period: float, host: str = "127.0.0.1", port: int = 0) -> None:
        from timelapser_workers.sinks.database import DatabaseSink
        from timelapser_workers.sinks.sse import SSESink
        from timelapser_workers.sinks.sse.wsgi import ServerThread, make_server

        self.table = table
        self.db = DatabaseSink(db_url, table=table)
        # Create the table (and open the first connection) now: one-off setup, not the cost
        # of delivering an event (it put ~25 ms on the first batch: the p99 of a short run).
        self.db.ensure_table()
        self.sse = SSESink(replay_events=5000)
        self.batcher = EventBatcher(
            [self.db, self.sse], name=f"demo-{'batched' if use_batching else 'single'}",
            dead_letter=workdir / "dead-letter.jsonl", use_batching=use_batching,
        )
        app = dashboard.make_app(self.sse, batchers=[self.batcher])
        self.server = ServerThread(make_server(app, host, port)).start()
        self.workers = demo_workers.build_pipeline(workdir / table, self.batcher, cameras=cameras,
                                               period=period, use_batching=use_batching)
        self.counter = _EmitCounter(self.workers)

    def start(self) -> None:
        for worker in self.workers:
            worker.start()

    def progress_line(self, mode: str, elapsed: float) -> str:
        s = self.batcher.stats()
        return (f"{mode:>10}: {elapsed:5.1f}s  events {self.counter.count:5d}  "
                f"db batches {s['sinks'][self.db.name]['batches_sent']:5d}  queue {s['queue_depth']:3d}")

    def stop(self) -> None:
        for worker in self.workers:  # the scheduler first: the others finish the frames it made
            worker.stop(timeout=10)
        self.batcher.close(timeout=10)
        self.counter.close()

    def stored_events(self) -> int:
        with self.db.engine.connect() as conn:
            return int(conn.execute(
                sa.text(f'SELECT COALESCE(SUM(batch_count), 0) FROM "{self.table}"')).scalar_one())

    def dispose(self, keep_table: bool) -> None:
        self.server.stop()
        if not keep_table:
            with self.db.engine.begin() as conn:
                conn.execute(sa.text(f'DROP TABLE "{self.table}"'))
        self.db.engine.dispose()


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
    mode = "batched" if use_batching else "one by one"
    pipe = _Pipeline(db_url, table, use_batching=use_batching, workdir=workdir,
                     cameras=cameras, period=period)
    try:
        host, port = pipe.server.server.server_address[:2]
        client = _SSEClient(str(host), int(port))
        try:
            pipe.start()
            start = time.monotonic()
            while (left := duration - (time.monotonic() - start)) > 0:
                time.sleep(min(0.25, left))
                if progress:
                    progress(pipe.progress_line(mode, time.monotonic() - start))
            pipe.stop()
            client.wait_for(pipe.sse.hub.stats()["events_published"], timeout=5)
        finally:
            client.close()
        stats = pipe.batcher.stats()["sinks"][pipe.db.name]
        return DemoRun(
            mode=mode,
            emitted=pipe.counter.count,
            stored_events=pipe.stored_events(),
            db_transactions=stats["batches_sent"],
            sse_messages=client.messages,
            p50_ms=stats["latency_p50_ms"],
            p99_ms=stats["latency_p99_ms"],
            dead_lettered=stats["dead_lettered"],
        )
    finally:
        pipe.dispose(keep_table)


def serve(args: argparse.Namespace, db_url: str, workdir: Path) -> int:
    """``--serve``: the batched pipeline with the live dashboard, until Ctrl-C (or --duration)."""
    pipe = _Pipeline(db_url, f"demo_events_live_{int(time.time())}", use_batching=True,
                     workdir=workdir, cameras=args.cameras, period=args.period, port=args.port)
    try:
        print(f"dashboard: {pipe.server.url}/   (Ctrl-C to stop; metrics at /metrics; a development "
              "server: for production see the README's Server-Sent Events section)", flush=True)
        print(frames.backend_note(), file=sys.stderr, flush=True)
        pipe.start()
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass
        pipe.stop()
        lost = pipe.counter.count - pipe.stored_events()
        print(f"served {pipe.counter.count} events; {pipe.sse.hub.stats()['clients_total']} browser "
              f"connection(s); lost {lost}")
        return 1 if lost else 0
    finally:
        pipe.dispose(args.keep)


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
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds each of the two runs lasts (default 10); with --serve, "
                             "how long to serve (default: until Ctrl-C)")
    parser.add_argument("--serve", action="store_true",
                        help="serve the live dashboard on 127.0.0.1 instead of measuring")
    parser.add_argument("--port", type=int, default=8765, help="dashboard port with --serve (default 8765)")
    parser.add_argument("--db", default=None,
                        help="database URL (default: a fresh SQLite file in a temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the demo's tables in --db (default: drop them after counting)")
    parser.add_argument("--cameras", type=int, default=6, help="cameras due in each burst (default 6)")
    parser.add_argument("--period", type=float, default=1.0, help="seconds between bursts (default 1)")


def run_demo(args: argparse.Namespace) -> int:
    """Run both passes, print the table; exit status 1 if any event was lost."""
    if (args.duration is not None and args.duration <= 0) or args.cameras < 1 or args.period <= 0:
        print(f"demo: --duration (got {args.duration}) and --period (got {args.period}) must be "
              f"> 0, and --cameras (got {args.cameras}) >= 1", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"demo: --port {args.port} is not a TCP port (0-65535)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="timelapser-demo-") as tmp:
        workdir = Path(tmp)
        db_url = args.db or f"sqlite:///{workdir / 'demo.db'}"
        if args.serve:
            return serve(args, db_url, workdir)
        if args.duration is None:
            args.duration = 10.0
        suffix = f"{int(time.time())}"
        tty = sys.stderr.isatty()

        def progress(line: str) -> None:
            if tty:
                print("\r" + line, end="", file=sys.stderr, flush=True)

        print(f"timelapser-workers demo: {args.cameras} cameras every {args.period:g}s, "
              f"{args.duration:g}s per run, database {db_url}\n{frames.backend_note()}", file=sys.stderr)
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
