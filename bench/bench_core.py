"""Core benchmarks: producer cost (target 1), end-to-end throughput (target 2), memory under a
stalled sink (target 6) and exit behaviour (target 7). Prints tables and PASS/FAIL lines.

    .venv/bin/python bench/bench_core.py [--rounds 5] [--events 20000] [--only 1,2,6,7]

Contenders of targets 1 and 2, all delivering into a sink (or exporter, or handler) that only
counts, all with the same batching settings (512 events or 500 ms, queue large enough that
nothing is dropped), each built fresh for every run, alternating round by round:

- ours/submit     EventBatcher.emit(type, data, worker=...): build the Event, queue it
- ours/signal     signals.job_started.send(worker, **data) through batcher.connect()
- otel/processor  OpenTelemetry SDK's generic BatchProcessor.emit(record), record built per call
- otel/logs       the SDK's logs API: Logger.emit(body=..., attributes=...) into BatchLogRecordProcessor
- stdlib/queue    logging.QueueHandler + QueueListener (the stdlib's batching-free hand-off)
- naive           a blinker signal whose receiver puts on a queue.Queue; one thread gets and
                  sends each event on its own
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, Callable

from common import (
    ROOT, CountingExporter, CountingSink, Verdicts, alternate, machine, median, print_table,
    rss_bytes, start_threads, wait_until,
)

import blinker

from timelapser_workers import EventBatcher, signals
from timelapser_workers.events import JOB_STARTED, make_event

BATCH = 512
DELAY_S = 0.5
QUEUE = 2_000_000
DELIVERY_DEADLINE_S = 120.0


def _payload(i: int) -> dict[str, Any]:
    return {"job_id": i, "camera_id": 3, "image": "/data/cam3/0001.jpg"}


def _no_dead_letter(*_: Any) -> None:
    raise AssertionError("a benchmark run dead-lettered events; its numbers would be wrong")


# --- contenders: each returns (produce(thread_index, n), delivered(), finish(), close()) -----
class Pipeline:
    """One contender, built fresh for a run."""

    produce: Callable[[int, int], None]

    def delivered(self) -> int: ...
    def finish(self) -> None: ...  # cut the batching window short, as each one allows
    def close(self) -> None: ...


class Ours(Pipeline):
    # issue 13: default settings, except overflow="block" so that nothing is dropped
    def __init__(self, via_signal: bool = False, prebuilt: int = 0, aggregated: bool = False) -> None:
        self.sink = CountingSink(wants_aggregated=aggregated)
        self.b = EventBatcher([self.sink], overflow="block", dead_letter=_no_dead_letter, name="bench")
        if via_signal:
            self.signal = signals.declare("BENCH_JOB_STARTED")
            self.b.connect(self.signal)
            self.produce = self._signal
        elif prebuilt:  # events made before the clock starts: the hand-off alone
            self.made = [[make_event(JOB_STARTED, _payload(i), worker=f"w{t}") for i in range(prebuilt)]
                         for t in range(4)]
            self.produce = self._submit
        else:
            self.produce = self._emit

    def _submit(self, t: int, n: int) -> None:
        submit = self.b.submit
        for event in self.made[t][:n]:
            submit(event)

    def _emit(self, t: int, n: int) -> None:
        emit, worker = self.b.emit, f"w{t}"
        for i in range(n):
            emit(JOB_STARTED, _payload(i), worker=worker)

    def _signal(self, t: int, n: int) -> None:
        send, worker = self.signal.send, f"w{t}"
        for i in range(n):
            send(worker, job_id=i, camera_id=3, image="/data/cam3/0001.jpg")

    def delivered(self) -> int:
        return self.sink.count

    def finish(self) -> None:
        self.b.flush(DELIVERY_DEADLINE_S)

    def close(self) -> None:
        self.b.close(10)


class BlinkerFloor(Pipeline):
    """blinker's own send to a receiver that only counts: the floor of any signal path."""

    def __init__(self) -> None:
        self.signal = blinker.Signal()
        self.count = 0
        self.signal.connect(self._receive, weak=False)

    def _receive(self, sender: Any, **data: Any) -> bool:
        self.count += 1
        return True

    def produce(self, t: int, n: int) -> None:
        send, worker = self.signal.send, f"w{t}"
        for i in range(n):
            send(worker, job_id=i, camera_id=3, image="/data/cam3/0001.jpg")

    def delivered(self) -> int:
        return self.count

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class OtelProcessor(Pipeline):
    def __init__(self, prebuilt: int = 0) -> None:
        from opentelemetry.sdk._shared_internal import BatchProcessor
        from opentelemetry.sdk._shared_internal._processor_metrics import NoOpProcessorMetrics

        self.exporter = CountingExporter()
        self.p = BatchProcessor(
            self.exporter, DELAY_S * 1000, BATCH, 30_000, QUEUE, "Bench", NoOpProcessorMetrics()
        )
        if prebuilt:
            self.made = [[{"type": JOB_STARTED, "worker": f"w{t}", "data": _payload(i), "ts": time.time_ns()}
                          for i in range(prebuilt)] for t in range(4)]
            self.produce = self._emit_made

    def _emit_made(self, t: int, n: int) -> None:
        emit = self.p.emit
        for record in self.made[t][:n]:
            emit(record)

    def produce(self, t: int, n: int) -> None:
        emit, worker = self.p.emit, f"w{t}"
        for i in range(n):
            emit({"type": JOB_STARTED, "worker": worker, "data": _payload(i), "ts": time.time_ns()})

    def delivered(self) -> int:
        return self.exporter.count

    def finish(self) -> None:
        self.p.force_flush()

    def close(self) -> None:
        self.p.shutdown()


class OtelLogs(Pipeline):
    def __init__(self) -> None:
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

        self.exporter = CountingExporter()
        self.provider = LoggerProvider()
        self.provider.add_log_record_processor(BatchLogRecordProcessor(
            self.exporter, schedule_delay_millis=DELAY_S * 1000, max_export_batch_size=BATCH,
            max_queue_size=QUEUE,
        ))
        self.logger = self.provider.get_logger("bench")

    def produce(self, t: int, n: int) -> None:
        emit, attrs = self.logger.emit, {"worker": f"w{t}"}
        for i in range(n):
            emit(body=_payload(i), attributes=attrs, event_name=JOB_STARTED)

    def delivered(self) -> int:
        return self.exporter.count

    def finish(self) -> None:
        self.provider.force_flush()

    def close(self) -> None:
        self.provider.shutdown()


class _CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


class StdlibQueue(Pipeline):
    def __init__(self) -> None:
        self.q: queue.Queue[Any] = queue.Queue(-1)
        self.handler = _CountingHandler()
        self.listener = logging.handlers.QueueListener(self.q, self.handler)
        self.listener.start()
        self.log = logging.getLogger(f"bench.stdlib.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.qh = logging.handlers.QueueHandler(self.q)
        self.log.addHandler(self.qh)

    def produce(self, t: int, n: int) -> None:
        info, worker = self.log.info, f"w{t}"
        for i in range(n):
            info("%s", JOB_STARTED, extra={"worker": worker, "data": _payload(i)})

    def delivered(self) -> int:
        return self.handler.count

    def close(self) -> None:
        self.listener.stop()
        self.log.removeHandler(self.qh)


class Naive(Pipeline):
    def __init__(self) -> None:
        self.signal = blinker.Signal()
        self.q: queue.Queue[Any] = queue.Queue()
        self.sink = CountingSink()
        self.signal.connect(self._receive, weak=False)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _receive(self, sender: Any, **data: Any) -> None:
        self.q.put({"type": JOB_STARTED, "worker": sender, "data": data, "ts": time.time()})

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            self.sink.count += 1  # "send" it on its own, as the seed's loop did
            self.sink.calls += 1

    def produce(self, t: int, n: int) -> None:
        send, worker = self.signal.send, f"w{t}"
        for i in range(n):
            send(worker, job_id=i, camera_id=3, image="/data/cam3/0001.jpg")

    def delivered(self) -> int:
        return self.sink.count

    def close(self) -> None:
        self.q.put(None)
        self.thread.join(10)


_PREBUILT = [0]  # events per thread made in advance for the hand-off contenders
CONTENDERS: dict[str, Callable[[], Pipeline]] = {
    "ours/handoff": lambda: Ours(prebuilt=_PREBUILT[0]),
    "otel/handoff": lambda: OtelProcessor(prebuilt=_PREBUILT[0]),
    "ours/submit": lambda: Ours(via_signal=False),
    "ours/signal": lambda: Ours(via_signal=True),
    "ours/aggregated": lambda: Ours(aggregated=True),
    "blinker/floor": BlinkerFloor,
    "otel/processor": OtelProcessor,
    "otel/logs": OtelLogs,
    "stdlib/queue": StdlibQueue,
    "naive": Naive,
}


def run_once(make: Callable[[], Pipeline], producers: int, per_thread: int) -> dict[str, float]:
    """Producers emit ``per_thread`` events each; returns producer CPU ns/event, wall ns/event
    of the producing phase, and end-to-end events/s (first emit -> last event counted)."""
    pipe = make()
    total = producers * per_thread
    cpu = [0.0] * producers
    go = threading.Barrier(producers + 1)

    def work(t: int) -> None:
        go.wait()
        c0 = time.thread_time()
        pipe.produce(t, per_thread)
        cpu[t] = time.thread_time() - c0

    threads = start_threads(work, producers)
    go.wait()
    t0 = time.perf_counter()
    for th in threads:
        th.join()
    t_produced = time.perf_counter()
    pipe.finish()
    if not wait_until(lambda: pipe.delivered() >= total, DELIVERY_DEADLINE_S):
        raise RuntimeError(f"{type(pipe).__name__}: only {pipe.delivered()} of {total} delivered")
    t_done = time.perf_counter()
    delivered = pipe.delivered()
    pipe.close()
    if delivered != total:
        raise RuntimeError(f"{type(pipe).__name__}: {delivered} delivered, {total} sent")
    return {
        "cpu_ns": sum(cpu) / total * 1e9,
        "wall_ns": (t_produced - t0) / total * 1e9,
        "eps": total / (t_done - t0),
    }


def profile(name: str, events: int, top: int = 18) -> None:
    """One run of contender ``name`` with one producer, its producer thread under cProfile:
    the functions that take the most time of their own."""
    import cProfile
    import pstats

    if name not in CONTENDERS:
        raise SystemExit(f"--profile {name!r}: not a contender; choose from {', '.join(CONTENDERS)}")
    pipe = CONTENDERS[name]()
    profiler = cProfile.Profile()
    profiler.enable()
    pipe.produce(0, events)
    profiler.disable()
    pipe.finish()
    pipe.close()
    print(f"### {name}: the producer thread, {events:,} events (cProfile: slower than unprofiled)\n")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def targets_1_2(rounds: int, events: int, verdicts: Verdicts) -> list[str]:
    tables = []
    for producers in (1, 4):
        per_thread = events // producers
        _PREBUILT[0] = per_thread
        results = alternate(
            {name: (lambda make=make: run_once(make, producers, per_thread))
             for name, make in CONTENDERS.items()},
            rounds,
        )
        cpu = {n: median(r, "cpu_ns") for n, r in results.items()}
        eps = {n: median(r, "eps") for n, r in results.items()}
        wall = {n: median(r, "wall_ns") for n, r in results.items()}
        base = "otel/processor"
        rows = [
            (n, round(cpu[n]), round(wall[n]), f"{cpu[n] / cpu[base]:.2f}x",
             round(eps[n]), f"{eps[n] / eps[base]:.2f}x", f"{eps[n] / eps['naive']:.2f}x")
            for n in CONTENDERS
        ]
        tables.append(print_table(
            f"Targets 1-2: {producers} producer thread(s), {per_thread * producers:,} events, "
            f"median of {rounds} rounds",
            ["contender", "producer CPU ns/event", "producer wall ns/event", "CPU vs otel/processor",
             "end-to-end events/s", "vs otel/processor", "vs naive"],
            rows,
        ))
        verdicts.check(
            f"13.1 submit path end-to-end >= 1.0x OpenTelemetry BatchProcessor ({producers}p)",
            eps["ours/submit"] >= eps["otel/processor"],
            f"{eps['ours/submit']:,.0f}/s vs {eps['otel/processor']:,.0f}/s "
            f"= {eps['ours/submit'] / eps['otel/processor']:.2f}x (validating and encoding every event)",
        )
        verdicts.check(
            f"13.2 signal path end-to-end >= 2x naive blinker+queue.Queue ({producers}p)",
            eps["ours/signal"] >= 2 * eps["naive"],
            f"{eps['ours/signal']:,.0f}/s vs 2 x {eps['naive']:,.0f}/s "
            f"= {eps['ours/signal'] / eps['naive']:.2f}x",
        )
        verdicts.check(
            f"13.2 producer cost of a signal send <= 2.5 us ({producers}p)",
            cpu["ours/signal"] <= 2500,
            f"{cpu['ours/signal']:.0f} ns (blinker's own send to a counting receiver: "
            f"{cpu['blinker/floor']:.0f} ns)",
        )
    return tables


# --- target 6: memory with a stalled sink -------------------------------------------------
class _StalledSink:
    name = "stalled"
    wants_aggregated = False

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.count = 0

    def send(self, batch: Any) -> None:
        self.gate.wait(600)
        self.count += len(batch)


def target_6(verdicts: Verdicts, offered: int = 1_000_000, producers: int = 4) -> str:
    max_queue, lane_max, batch = 10_000, 10_000, 100
    # what one queued event costs, measured here with tracemalloc (RSS reuses freed arenas)
    import tracemalloc

    tracemalloc.start()
    held = [make_event(JOB_STARTED, _payload(i), worker="w0") for i in range(20_000)]
    per_event = max(1, tracemalloc.get_traced_memory()[0] // len(held))
    tracemalloc.stop()
    del held

    dead = {"events": 0}
    dead_lock = threading.Lock()

    def count_dead(events: Any, sink: str, reason: str, error: Any) -> None:
        with dead_lock:
            dead["events"] += sum(e.batch_count for e in events)

    sink = _StalledSink()
    b = EventBatcher([sink], batch_size=batch, batch_timeout=0.05, max_queue_size=max_queue,
                     overflow="drop_newest", lane_max_events=lane_max, dead_letter=count_dead,
                     shutdown_timeout=30, name="stalled")
    # held at once at most: the queue, one drained queue inside the flush thread, the lane
    # and the batch in flight
    bound_events = 2 * max_queue + lane_max + batch
    baseline = rss_bytes()
    bound = baseline + bound_events * per_event * 3 // 2  # 1.5x: allocator slack
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            stop.wait(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()

    def produce(t: int) -> None:
        emit, worker = b.emit, f"w{t}"
        for i in range(offered // producers):
            emit(JOB_STARTED, _payload(i), worker=worker)

    for th in start_threads(produce, producers):
        th.join()
    took = time.perf_counter() - t0
    sink.gate.set()
    result = b.close(60)
    stop.set()
    sampler.join()
    st = b.stats()
    dropped_queue = sum(st["events_dropped"].values())
    lane = st["sinks"]["stalled"]
    accounted = sink.count + dead["events"] + dropped_queue
    table = print_table(
        f"Target 6: {offered:,} events offered by {producers} threads to a stalled sink "
        f"(queue {max_queue:,}, lane {lane_max:,}, drop_newest)",
        ["baseline RSS MiB", "peak RSS MiB", "bound MiB", "bytes/event", "delivered after release",
         "dead-lettered", "dropped at queue", "accounted", "offer took s"],
        [(baseline / 2**20, peak / 2**20, bound / 2**20, per_event, sink.count, dead["events"],
          dropped_queue, accounted, took)],
    )
    verdicts.check("6. peak RSS within bound", peak <= bound,
                   f"peak {peak / 2**20:.1f} MiB <= bound {bound / 2**20:.1f} MiB "
                   f"({bound_events:,} events x {per_event} B x 1.5 over {baseline / 2**20:.1f} MiB)")
    verdicts.check("6. drops counted exactly", accounted == offered and result.pending == 0
                   and lane["dead_lettered"] == dead["events"],
                   f"delivered {sink.count:,} + dead-lettered {dead['events']:,} + dropped "
                   f"{dropped_queue:,} = {accounted:,} of {offered:,}")
    return table


# --- target 7: exit ----------------------------------------------------------------------
_EXIT_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    class HungSink:
        name = "hung"
        def send(self, batch):
            threading.Event().wait(3600)

    mode, path, n = sys.argv[2], sys.argv[3], int(sys.argv[4])
    sink = DatabaseSink(f"sqlite:///{path}") if mode == "sqlite" else HungSink()
    b = EventBatcher([sink], batch_size=1000, batch_timeout=60, shutdown_timeout=float(sys.argv[5]),
                     max_queue_size=n * 2, dead_letter=path + ".dead.jsonl")
    for i in range(n):
        b.emit("JOB_STARTED", {"job_id": i}, worker=f"w{i % 3}")
    print(time.monotonic(), flush=True)   # all emitted; everything still pending; now exit
    """
)


def _exit_run(mode: str, path: str, n: int, shutdown_timeout: float) -> tuple[float, int]:
    proc = subprocess.run(
        [sys.executable, "-c", _EXIT_SCRIPT, str(ROOT), mode, path, str(n), str(shutdown_timeout)],
        capture_output=True, text=True, timeout=120,
    )
    ended = time.monotonic()  # CLOCK_MONOTONIC is system-wide on Linux: comparable across processes
    if proc.returncode != 0:
        raise RuntimeError(f"exit script failed: {proc.stderr[-2000:]}")
    return ended - float(proc.stdout.strip().splitlines()[-1]), proc.returncode


def target_7(verdicts: Verdicts, rounds: int, tmp: str) -> str:
    import sqlite3

    n, shutdown_timeout = 10_000, 1.0
    rows = []
    exits, counts, hung = [], [], []
    for r in range(rounds):
        db = os.path.join(tmp, f"exit{r}.db")
        took, _ = _exit_run("sqlite", db, n, 10.0)
        with sqlite3.connect(db) as conn:
            rows_, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM sse_events").fetchone()
            stored = rows_ if rows_ == distinct else -1  # -1: a row stored twice
            # aggregated rows: count the original events they stand for
            originals = conn.execute("SELECT coalesce(sum(batch_count), 0) FROM sse_events").fetchone()[0]
        exits.append(took)
        counts.append(originals if stored >= 0 else -1)
        h, _ = _exit_run("hung", os.path.join(tmp, f"hung{r}"), 1_000, shutdown_timeout)
        hung.append(h)
    import statistics

    rows.append(("10,000 pending -> SQLite", f"{statistics.median(exits):.3f}", f"{max(exits):.3f}",
                 f"{min(counts):,} of {n:,}"))
    rows.append((f"hung sink, shutdown_timeout={shutdown_timeout}s", f"{statistics.median(hung):.3f}",
                 f"{max(hung):.3f}", "spooled for the next start"))
    table = print_table(f"Target 7: exit, {rounds} runs (last emit -> process gone)",
                        ["case", "median s", "max s", "events stored"], rows)
    verdicts.check("7. 10,000 pending at exit all reach SQLite", min(counts) == n,
                   f"{min(counts):,} of {n:,} in the worst run; exit took median "
                   f"{statistics.median(exits):.3f} s")
    verdicts.check("7. hung sink: exit within shutdown_timeout + 0.5 s", max(hung) <= shutdown_timeout + 0.5,
                   f"max {max(hung):.3f} s <= {shutdown_timeout + 0.5:.1f} s")
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--events", type=int, default=20_000, help="events per run (split among producers)")
    ap.add_argument("--only", default="1,2,6,7")
    ap.add_argument("--profile", metavar="CONTENDER", help="profile one contender's producer instead")
    args = ap.parse_args()
    if args.profile:
        profile(args.profile, args.events)
        return 0
    only = set(args.only.split(","))
    print(f"machine: {machine()}\n", flush=True)
    logging.basicConfig(level=logging.ERROR)
    verdicts = Verdicts()
    if only & {"1", "2"}:
        targets_1_2(args.rounds, args.events, verdicts)
    if "6" in only:
        target_6(verdicts)
    if "7" in only:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            target_7(verdicts, max(3, args.rounds), tmp)
    verdicts.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
