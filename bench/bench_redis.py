#!/usr/bin/env python3
"""The Redis bus against its peers on this machine; prints tables with ratios and PASS/FAIL.

    python bench/bench_redis.py [--events 50000] [--batch 500] [--rounds 5] [--rates 200,1000]
                                [--seconds 5] [--clients 40] [--skip-e2e] [--redis URL] [--postgres URL]

1. Events/s into a Redis stream (the server at --redis, default redis://127.0.0.1:6379/0; a fresh
   stream key per run): RedisStreamSink.send alone, and behind a real EventBatcher (submit of
   ready events -> lane -> sink), against a raw redis-py loop that pipelines one XADD per event
   (the same two fields, the same JSON, MAXLEN ~), with and without MULTI; and, for the choice
   of bus, DatabaseSink writing the same batches into PostgreSQL (--postgres URL, COPY).
   Contenders alternate over --rounds; medians. Target: the sink >= 0.8x the raw XADD loop.
2. End to end across processes: 1 producer process (EventBatcher, batch_timeout 10 ms) -> the
   bus -> 2 web processes (a source + hub + the package's WSGI server) -> --clients SSE clients
   in a third process. Latency from the event's created_at (producer) to the client having
   parsed it (wall clock, same machine). The Redis bus (RedisStreamSink -> RedisEventSource)
   against PostgreSQL tailing (DatabaseSink with NOTIFY -> DatabaseEventSource) at --postgres.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Verdicts, alternate, machine, median, print_table  # noqa: E402

MAXLEN = 1_000_000  # retention never trims during a run: every contender writes all its events
REDIS_URL = os.environ.get("TIMELAPSER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get("TIMELAPSER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


# --- 1. throughput ---------------------------------------------------------------------------
def throughput(url: str, n: int, batch: int, rounds: int, verdicts: Verdicts) -> None:
    import redis

    from timelapser_workers import EventBatcher
    from timelapser_workers.events import make_event
    from timelapser_workers.sinks.redis import _APPEND_SCRIPT, RedisStreamSink

    events = [make_event("FRAME_CAPTURED", {"camera": f"cam{i % 6}", "frame": i, "path": f"/data/cam/{i}.jpg"},
                         worker="capture", source="bench") for i in range(n)]
    batches = [events[i : i + batch] for i in range(0, n, batch)]
    client = redis.Redis.from_url(url, protocol=2)
    client.script_load(_APPEND_SCRIPT)
    dumps = json.dumps

    def raw(transaction: bool) -> Callable[[str], Callable[[], None]]:
        def setup(stream: str) -> Callable[[], None]:
            def run() -> None:
                for b in batches:
                    pipe = client.pipeline(transaction=transaction)
                    for e in b:
                        pipe.xadd(stream, {"id": e.id, "event": dumps(e.to_dict(), ensure_ascii=False, separators=(",", ":"))},
                                  maxlen=MAXLEN, approximate=True)
                    pipe.execute()
            return run
        return setup

    def sink_alone(stream: str) -> Callable[[], None]:
        sink = RedisStreamSink(url, stream=stream, maxlen=MAXLEN)
        sink.client.ping()

        def run() -> None:
            for b in batches:
                sink.send(b)
            sink.close()
        return run

    def through_batcher(stream: str) -> Callable[[], None]:
        sink = RedisStreamSink(url, stream=stream, maxlen=MAXLEN, wants_aggregated=False)
        sink.client.ping()
        dead = Path(tempfile.mkdtemp()) / "dead.jsonl"
        batcher = EventBatcher([sink], batch_size=batch, batch_timeout=0.05, max_queue_size=n + 1,
                               overflow="block", lane_max_events=n + 1, dead_letter=dead)

        def run() -> None:
            for e in events:
                batcher.submit(e)
            assert batcher.flush(120).complete
            batcher.close(10)
        return run

    def timed(setup: Callable[[str], Callable[[], None]]) -> Callable[[], dict[str, float]]:
        def measure() -> dict[str, float]:
            stream = f"bench_{uuid.uuid4().hex[:10]}"
            run = setup(stream)
            t0 = time.perf_counter()
            run()
            elapsed = time.perf_counter() - t0
            written = int(client.xinfo_stream(stream)["entries-added"])
            client.delete(stream, *client.scan_iter(match=f"{stream}:*"))
            assert written == n, f"{written} of {n} entries written"
            return {"eps": n / elapsed}
        return measure

    def database_sink(stream: str) -> Callable[[], None]:  # the other bus: rows into PostgreSQL
        from timelapser_workers.sinks.database import DatabaseSink

        sink = DatabaseSink(pg_engine, table=pg_tables[-1], create_table=False)

        def run() -> None:
            for b in batches:
                sink.send(b)
        return run

    def timed_pg(setup: Callable[[str], Callable[[], None]]) -> Callable[[], dict[str, float]]:
        def measure() -> dict[str, float]:
            pg_tables.append(fresh_events_table(pg_engine))
            run = setup("")
            t0 = time.perf_counter()
            run()
            elapsed = time.perf_counter() - t0
            with pg_engine.connect() as conn:
                written = conn.exec_driver_sql(f"SELECT count(*) FROM {pg_tables[-1]}").scalar()
            drop_table(pg_engine, pg_tables[-1])
            assert written == n, f"{written} of {n} rows written"
            return {"eps": n / elapsed}
        return measure

    pg_tables: list[str] = []
    pg_engine: Any = None
    try:
        from common import drop_table, fresh_events_table
        from timelapser_workers.sql.engine import create_sink_engine

        pg_engine = create_sink_engine(PG_URL, application_name="timelapser-bench")
        with pg_engine.connect():
            pass
    except Exception as exc:
        print(f"(PostgreSQL at {PG_URL} unreachable: {exc}; its row is left out)\n")
        pg_engine = None

    contenders = {
        "RedisStreamSink.send (one script call per batch)": timed(sink_alone),
        "EventBatcher.submit -> lane -> RedisStreamSink": timed(through_batcher),
        "raw redis-py: pipelined XADD per event": timed(raw(False)),
        "raw redis-py: pipelined XADD per event in MULTI": timed(raw(True)),
    }
    if pg_engine is not None:
        contenders["DatabaseSink.send to PostgreSQL (COPY): the other bus"] = timed_pg(database_sink)
    results = alternate(contenders, rounds)
    base = median(results["raw redis-py: pipelined XADD per event"], "eps")
    rows = []
    for name, samples in results.items():
        rates = [s["eps"] for s in samples]
        rows.append((name, median(samples, "eps"), f"{min(rates):,.0f}..{max(rates):,.0f}",
                     f"{median(samples, 'eps') / base:.2f}x"))
    print_table(f"Events/s into a Redis stream: {n:,} events in batches of {batch}, median of {rounds} rounds",
                ["contender", "events/s", "min..max", "vs raw pipelined XADD"], rows)
    for name, label in (("RedisStreamSink.send (one script call per batch)", "sink alone"),
                        ("EventBatcher.submit -> lane -> RedisStreamSink", "EventBatcher + sink")):
        got = median(results[name], "eps")
        verdicts.check(f"{label} >= 0.8x raw pipelined XADD", got >= 0.8 * base,
                       f"{got:,.0f} vs {base:,.0f} events/s = {got / base:.2f}x")


# --- 2. end to end across processes ----------------------------------------------------------
def child(args: list[str]) -> None:
    role = args[0]
    if role == "producer":
        producer(args[1], args[2], args[3], float(args[4]), float(args[5]))
    elif role == "web":
        web(args[1], args[2], args[3])
    elif role == "clients":
        clients(json.loads(args[1]), int(args[2]), int(args[3]))


def producer(bus: str, target: str, channel: str, rate: float, seconds: float) -> None:
    from timelapser_workers import EventBatcher

    if bus == "redis":
        from timelapser_workers.sinks.redis import RedisStreamSink

        sink: Any = RedisStreamSink(target.split("?")[0], stream=channel, maxlen=MAXLEN, wants_aggregated=False)
    else:
        from timelapser_workers.sinks.database import DatabaseSink

        table, notify = channel.split(",")
        sink = DatabaseSink(target, table=table, notify_channel=notify, wants_aggregated=False, create_table=False)
    sys.stdin.readline()  # go
    batcher = EventBatcher([sink], batch_size=50, batch_timeout=0.01, dead_letter=Path(tempfile.mkdtemp()) / "dead.jsonl")
    total = int(rate * seconds)
    start = time.monotonic()
    for k in range(total):
        batcher.emit("FRAME_CAPTURED", {"seq": k}, worker="bench", source="e2e")
        ahead = (k + 1) / rate - (time.monotonic() - start)
        if ahead > 0.002:
            time.sleep(ahead)
    result = batcher.close(60)
    print(json.dumps({"emitted": total, "complete": result.complete}), flush=True)


def web(bus: str, target: str, channel: str) -> None:
    from timelapser_workers.sinks.sse import SSEHub
    from timelapser_workers.sinks.sse.wsgi import ServerThread, SSEWsgiApp, make_server

    hub = SSEHub(replay_events=1000, client_queue_events=100_000, max_clients=2000)
    source: Any
    if bus == "redis":
        from timelapser_workers.sources.redis import RedisEventSource

        source = RedisEventSource(target, hub, stream=channel).start()
    else:
        from timelapser_workers.sources.database import DatabaseEventSource

        table, notify = channel.split(",")
        source = DatabaseEventSource(target, hub, table=table, channel=notify).start()
    server = ServerThread(make_server(SSEWsgiApp(hub), write_timeout_seconds=30)).start()
    print(json.dumps({"port": server.server.server_address[1]}), flush=True)
    sys.stdin.readline()
    hub.close()
    server.stop()
    source.stop()


def clients(ports: list[int], per_port: int, expected: int) -> None:
    results: list[tuple[bool, list[float]]] = []
    lock = threading.Lock()
    ready = threading.Barrier(len(ports) * per_port + 1)

    def read(port: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/events")
        resp = conn.getresponse()
        ready.wait()
        seqs: list[int] = []
        lat: list[float] = []
        try:
            while len(seqs) < expected:
                line = resp.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    now = time.time()
                    event = json.loads(line[6:])
                    seqs.append(event["data"]["seq"])
                    lat.append(now - event["created_at"])
        finally:
            conn.close()
        with lock:
            results.append((seqs == list(range(expected)), lat))

    threads = [threading.Thread(target=read, args=(p,), daemon=True) for p in ports for _ in range(per_port)]
    for t in threads:
        t.start()
    ready.wait()
    print(json.dumps({"ready": True}), flush=True)
    for t in threads:
        t.join(120)
    lat = sorted(x for _, values in results for x in values)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else float("nan")  # noqa: E731
    print(json.dumps({"in_order": sum(ok for ok, _ in results), "p50": pick(0.5), "p99": pick(0.99), "max": pick(1.0)}), flush=True)


def spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--child", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child {proc.args} ended without an answer")
    return json.loads(line)  # type: ignore[no-any-return]


def e2e(bus: str, rate: float, seconds: float, n_clients: int) -> dict[str, Any]:
    engine = None
    if bus == "redis":
        target, channel = REDIS_URL, f"bench_{uuid.uuid4().hex[:10]}"
    else:
        from common import drop_table, fresh_events_table
        from timelapser_workers.sql.engine import create_sink_engine

        engine = create_sink_engine(PG_URL)
        table = fresh_events_table(engine)
        target, channel = PG_URL, f"{table},{table}"
    webs = [spawn("web", bus, target, channel) for _ in range(2)]
    procs = list(webs)
    try:
        ports = [read_json(w)["port"] for w in webs]
        prod = spawn("producer", bus, target, channel, str(rate), str(seconds))
        procs.append(prod)
        reader = spawn("clients", json.dumps(ports), str(n_clients // 2), str(int(rate * seconds)))
        procs.append(reader)
        read_json(reader)  # every client connected
        assert prod.stdin is not None
        prod.stdin.write("go\n")
        prod.stdin.flush()
        produced = read_json(prod)
        got = read_json(reader)
        return {"bus": bus, **produced, **got}
    finally:
        for p in procs:
            if p.stdin is not None and not p.stdin.closed:
                try:
                    p.stdin.close()
                except OSError:
                    pass
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if bus == "redis":
            import redis

            redis.Redis.from_url(REDIS_URL).delete(channel)
        elif engine is not None:
            drop_table(engine, table)
            engine.dispose()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rates", default="200,1000", help="events/s the producer emits (end to end), comma-separated")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=40, help="SSE clients, split over the 2 web processes")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--redis", default=REDIS_URL, help="the Redis server (unique stream keys, deleted after)")
    parser.add_argument("--postgres", default=PG_URL, help="the PostgreSQL peer (fresh tables, dropped after)")
    args = parser.parse_args()
    os.environ["TIMELAPSER_TEST_REDIS_URL"], os.environ["TIMELAPSER_TEST_POSTGRES_URL"] = args.redis, args.postgres
    globals().update(REDIS_URL=args.redis, PG_URL=args.postgres)  # children read them from the environment
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at start\n", flush=True)
    verdicts = Verdicts()
    throughput(REDIS_URL, args.events, args.batch, args.rounds, verdicts)
    if not args.skip_e2e:
        rows = []
        for rate in (float(r) for r in args.rates.split(",")):
            results = {bus: e2e(bus, rate, args.seconds, args.clients) for bus in ("redis", "postgresql")}
            for bus, r in results.items():
                rows.append((
                    "Redis Streams (RedisEventSource)" if bus == "redis" else "PostgreSQL tail (DatabaseEventSource)",
                    f"{rate:g}", f"{r['in_order']}/{args.clients}", r["p50"], r["p99"], r["max"],
                    f"{r['p99'] / results['postgresql']['p99']:.2f}x",
                ))
                verdicts.check(f"{bus} at {rate:g}/s: every client got every event, in order",
                               r["in_order"] == args.clients and r["complete"], f"{r['in_order']} of {args.clients} clients")
        print_table(
            f"End to end across processes: 1 producer, 2 web processes, {args.clients} clients, "
            f"{args.seconds:g} s per run (batch_timeout 10 ms)",
            ["bus", "events/s", "every event, in order", "p50 ms", "p99 ms", "max ms", "p99 vs PostgreSQL"], rows)
    verdicts.summary()
    print(f"load average {os.getloadavg()[0]:.2f} at the end", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
