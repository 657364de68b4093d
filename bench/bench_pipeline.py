"""End to end into real databases (target 3) and the timelapse scenario (target 4).

    .venv/bin/python bench/bench_pipeline.py [--rounds 5] [--events 20000] [--only 3,4]
        [--postgres URL] [--timelapse-db sqlite,postgresql] [--duration 5]

Target 3, emitted -> committed rows/s. Every contender starts from the same payload dicts and
ends when its last row is committed (the rows are then counted in the table and must all be
there). Each run writes into a fresh table of the events schema; tables and connections are
made before the clock starts. Contenders alternate round by round; medians are printed.

- pipeline      EventBatcher.emit(...) on one producer thread -> lane -> DatabaseSink, default
                settings except overflow="block" (printed below), raw events
                (wants_aggregated=False, one row per event). The clock stops when
                batcher.flush() returns (every batch committed).
- raw COPY      psycopg2 alone: rows built from the payloads, COPY ... FROM STDIN + commit per
                500 (no validation, no ids beyond a counter, no retries).
- per-event     the seed's way: one INSERT + commit per event (measured on a tenth of them).
- raw executemany (SQLite)  sqlite3 alone, WAL, synchronous=NORMAL (as the sink sets it),
                executemany + commit per 500.

Target 4, the timelapse scenario: timelapser_workers.app.demo.run_once (the demo's three workers
on a bursty workload: every camera due at once each period), batched and one by one, alternating,
several rounds per database. Counts come from the sinks' stats and the table itself.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import logging
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from common import Verdicts, alternate, drop_table, fresh_events_table, machine, median, print_table

import sqlalchemy as sa

from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sql.codec import copy_text as _copy_text
from timelapser_workers.sql.schema import EVENT_COLUMNS
from timelapser_workers import EventBatcher
from timelapser_workers.config import BatcherConfig
from timelapser_workers.app.demo import run_once

BATCH = 500
APP = "timelapser-bench"
# issue 13: default settings, except overflow="block" so that nothing is dropped
PIPELINE_SETTINGS = dict(overflow="block")


def _payload(i: int) -> dict[str, Any]:
    return {"job_id": i, "camera_id": i % 7, "image": f"/data/cam{i % 7}/{i:06d}.jpg", "ms": i * 1.5}


def _no_dead_letter(*_: Any) -> None:
    raise AssertionError("a benchmark run dead-lettered events; its numbers would be wrong")


def _count(engine: sa.Engine, name: str) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql(f'SELECT count(DISTINCT event_id) FROM "{name}"').scalar_one())


def _rows(start: int, n: int, prefix: str) -> list[tuple[Any, ...]]:
    """What a hand-written loop would store for payloads start..start+n: one tuple per event."""
    now = dt.datetime.now(dt.timezone.utc)
    return [
        (f"{prefix}{i}", "JOB_COMPLETED", json.dumps(_payload(i), separators=(",", ":")), "NORMAL",
         "bench", "w1", now.isoformat(), 1)
        for i in range(start, start + n)
    ]


# --- target 3: contenders, each (engine, n) -> seconds from first payload to last commit -----
def pipeline_run(engine: sa.Engine, table: str, n: int) -> float:
    sink = DatabaseSink(engine, table=table, create_table=False, wants_aggregated=False)
    sink.ensure_table()
    with engine.connect():  # a warm pooled connection, as the raw contenders get
        pass
    batcher = EventBatcher([sink], dead_letter=_no_dead_letter, name="bench-pipeline", **PIPELINE_SETTINGS)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            batcher.emit("JOB_COMPLETED", _payload(i), worker="w1", source="bench")
        result = batcher.flush(120)
        elapsed = time.perf_counter() - t0
        sent = batcher.stats()["sinks"][sink.name]["events_sent"]
    finally:
        batcher.close(30)
    if result.pending or result.failed or sent != n:
        raise RuntimeError(f"pipeline: flush returned {result}, {sent} of {n} events sent")
    return elapsed


def raw_copy_run(engine: sa.Engine, table: str, n: int) -> float:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        sql = f'COPY "{table}" ({", ".join(EVENT_COLUMNS)}) FROM STDIN'
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            rows = _rows(start, min(BATCH, n - start), "raw-")
            buf = io.StringIO("".join("\t".join(_copy_text(v) for v in r) + "\n" for r in rows))
            cur.copy_expert(sql, buf)
            raw.commit()
        return time.perf_counter() - t0
    finally:
        raw.close()


def per_event_run(engine: sa.Engine, table: str, n: int) -> float:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        sql = (f'INSERT INTO "{table}" ({", ".join(EVENT_COLUMNS)}) '
               "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")
        t0 = time.perf_counter()
        for i in range(n):
            cur.execute(sql, _rows(i, 1, "one-")[0])
            raw.commit()
        return time.perf_counter() - t0
    finally:
        raw.close()


def executemany_run(path: str, table: str, n: int) -> float:
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        sql = f'INSERT INTO "{table}" ({", ".join(EVENT_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)'
        t0 = time.perf_counter()
        for start in range(0, n, BATCH):
            conn.executemany(sql, _rows(start, min(BATCH, n - start), "raw-"))
            conn.commit()
        return time.perf_counter() - t0
    finally:
        conn.close()


def _measured(engine: sa.Engine, n: int, run: Callable[[str, int], float]) -> Callable[[], dict[str, float]]:
    """One contender's run: a fresh table, the run, the rows counted (all must be there)."""
    def once() -> dict[str, float]:
        table = fresh_events_table(engine)
        try:
            seconds = run(table, n)
            stored = _count(engine, table)
        finally:
            drop_table(engine, table)
        if stored != n:
            raise RuntimeError(f"{stored} of {n} rows stored")
        return {"rps": n / seconds, "s": seconds}
    return once


def _rows_per_second_table(tables: list[str], title: str, results: dict[str, list[dict[str, float]]],
                           ratio_header: str, peer: int) -> list[float]:
    """Print (and keep) one rows/s table with min..max and ratios to contender ``peer``;
    return the median rows/s of each contender, in order."""
    rps = {name: median(r, "rps") for name, r in results.items()}
    base = list(rps.values())[peer]
    tables.append(print_table(
        title, ["contender", "rows/s", "min..max rows/s", ratio_header],
        [(name, round(v), f"{min(s['rps'] for s in results[name]):,.0f}..{max(s['rps'] for s in results[name]):,.0f}",
          f"{v / base:.2f}x") for name, v in rps.items()],
    ))
    return list(rps.values())


def target_3(verdicts: Verdicts, rounds: int, n: int, pg_url: str | None, tmp: str) -> list[str]:
    from timelapser_workers.sql.engine import create_sink_engine

    tables = []
    settings = ", ".join(f"{k}={v}" for k, v in PIPELINE_SETTINGS.items())
    print(f"pipeline settings: EventBatcher({settings}); DatabaseSink(wants_aggregated=False)\n")
    if pg_url:
        engine = create_sink_engine(pg_url, application_name=APP)
        try:
            results = alternate({
                "pipeline: emit -> EventBatcher -> DatabaseSink (COPY)":
                    _measured(engine, n, lambda t, k: pipeline_run(engine, t, k)),
                "raw psycopg2 COPY + commit per 500":
                    _measured(engine, n, lambda t, k: raw_copy_run(engine, t, k)),
                "INSERT + commit per event (seed)":
                    _measured(engine, max(1, n // 10), lambda t, k: per_event_run(engine, t, k)),
            }, rounds)
        finally:
            engine.dispose()
        pipe, raw, one = _rows_per_second_table(
            tables, f"Target 3, PostgreSQL: {n:,} events emitted -> committed, median of {rounds} rounds",
            results, "vs raw COPY", peer=1)
        verdicts.check("13.3 PostgreSQL pipeline >= 0.8x raw psycopg2 COPY", pipe >= 0.8 * raw,
                       f"{pipe:,.0f} vs {raw:,.0f} rows/s = {pipe / raw:.2f}x")
        print(f"(contrast: the pipeline is {pipe / one:.1f}x per-event commits)\n")
    path = os.path.join(tmp, "bench.db")
    engine = create_sink_engine(f"sqlite:///{path}")
    try:
        results = alternate({
            "pipeline: emit -> EventBatcher -> DatabaseSink":
                _measured(engine, n, lambda t, k: pipeline_run(engine, t, k)),
            "raw sqlite3 executemany + commit per 500 (WAL)":
                _measured(engine, n, lambda t, k: executemany_run(path, t, k)),
        }, rounds)
    finally:
        engine.dispose()
    pipe, raw = _rows_per_second_table(
        tables, f"Target 3, SQLite (WAL, synchronous=NORMAL): {n:,} events emitted -> committed, "
        f"median of {rounds} rounds", results, "vs raw executemany", peer=1)
    verdicts.check("13.3 SQLite pipeline >= 0.8x raw executemany (WAL)", pipe >= 0.8 * raw,
                   f"{pipe:,.0f} vs {raw:,.0f} rows/s = {pipe / raw:.2f}x")
    return tables


# --- target 4: the timelapse scenario ---------------------------------------------------------
def target_4(verdicts: Verdicts, rounds: int, duration: float, dbs: list[str], pg_url: str | None,
             tmp: str, cameras: int, period: float) -> list[str]:
    timeout_ms = BatcherConfig.resolve().batch_timeout * 1000.0
    bound = timeout_ms + 50.0
    tables = []
    for db in dbs:
        if db == "postgresql" and not pg_url:
            continue
        url = pg_url if db == "postgresql" else f"sqlite:///{os.path.join(tmp, 'timelapse.db')}"
        workdir = Path(tempfile.mkdtemp(prefix="timelapse-", dir=tmp))

        def contender(batching: bool) -> Callable[[], dict[str, float]]:
            def once() -> dict[str, float]:
                run = run_once(url, f"bench_tl_{uuid.uuid4().hex[:10]}", use_batching=batching,
                               duration=duration, workdir=workdir, cameras=cameras, period=period)
                if run.lost or run.dead_lettered:
                    raise RuntimeError(f"{run.mode}: lost {run.lost}, dead-lettered {run.dead_lettered}")
                return {"emitted": run.emitted, "tx": 1000.0 * run.db_transactions / run.emitted,
                        "sse": 1000.0 * run.sse_messages / run.emitted,
                        "p50": run.p50_ms or 0.0, "p99": run.p99_ms or 0.0}
            return once

        results = alternate({"batched": contender(True), "one by one": contender(False)}, rounds)
        b, s = results["batched"], results["one by one"]
        tx_b, tx_s = median(b, "tx"), median(s, "tx")
        sse_b, sse_s = median(b, "sse"), median(s, "sse")
        tx_red, sse_red = 100.0 * (1 - tx_b / tx_s), 100.0 * (1 - sse_b / sse_s)
        p99_b, p99_worst = median(b, "p99"), max(r["p99"] for r in b)
        rows = [
            ("events emitted per run", round(median(b, "emitted")), round(median(s, "emitted")), ""),
            ("database transactions per 1,000 events", tx_b, tx_s, f"{tx_red:.1f}%"),
            ("SSE messages per 1,000 events", sse_b, sse_s, f"{sse_red:.1f}%"),
            ("delivery p50 (ms), event created -> committed", median(b, "p50"), median(s, "p50"), ""),
            ("delivery p99 (ms)", p99_b, median(s, "p99"), ""),
            ("delivery p99 (ms), worst round", p99_worst, max(r["p99"] for r in s), ""),
            ("lost, dead-lettered", "0, 0", "0, 0", ""),
        ]
        tables.append(print_table(
            f"Target 4, timelapse scenario on {db}: {cameras} cameras every {period:g} s, 3 workers, "
            f"{duration:g} s per run, median of {rounds} rounds per mode",
            ["", "batched", "one by one", "reduction"], rows,
        ))
        verdicts.check(f"4. {db}: >= 60% fewer database transactions (aim 90%)", tx_red >= 60,
                       f"{tx_red:.1f}% fewer ({tx_b:.0f} vs {tx_s:.0f} per 1,000 events)")
        verdicts.check(f"4. {db}: >= 66% fewer SSE messages (aim 90%)", sse_red >= 66,
                       f"{sse_red:.1f}% fewer ({sse_b:.0f} vs {sse_s:.0f} per 1,000 events)")
        verdicts.check(f"4. {db}: p99 <= batch_timeout + 50 ms", p99_b <= bound,
                       f"p99 {p99_b:.1f} ms (worst round {p99_worst:.1f}) vs {bound:.0f} ms")
    return tables


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--only", default="3,4")
    ap.add_argument("--postgres", default=os.environ.get(
        "TIMELAPSER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--skip-postgres", action="store_true")
    ap.add_argument("--timelapse-db", default="sqlite,postgresql")
    ap.add_argument("--timelapse-rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per timelapse run")
    ap.add_argument("--cameras", type=int, default=6)
    ap.add_argument("--period", type=float, default=1.0)
    args = ap.parse_args()
    only = set(args.only.split(","))
    pg_url = None if args.skip_postgres else args.postgres
    print(f"machine: {machine()}\n", flush=True)
    logging.basicConfig(level=logging.ERROR)
    verdicts = Verdicts()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        if "3" in only:
            target_3(verdicts, args.rounds, args.events, pg_url, tmp)
        if "4" in only:
            target_4(verdicts, args.timelapse_rounds, args.duration, args.timelapse_db.split(","),
                     pg_url, tmp, args.cameras, args.period)
    verdicts.summary()
    return 0


if __name__ == "__main__":
    sys.exit(main())
