#!/usr/bin/env python3
"""DatabaseSink and bulk_upsert against their peers on this machine; prints tables with ratios.

    python bench/bench_db.py [--events 20000] [--batch 500] [--postgres URL]

PostgreSQL (TIMELAPSER_TEST_POSTGRES_URL or --postgres, default postgresql://postgres@127.0.0.1/test):
  DatabaseSink (COPY)  vs  DatabaseSink (multi-row INSERT)  vs  a raw COPY loop  vs
  one INSERT + commit per event (the seed's way), through psycopg2 and through psycopg 3
  (cursor.copy()). Target: the sink >= 0.5x the raw COPY loop of its driver.
SQLite (a temporary file, WAL): DatabaseSink vs raw sqlite3 executemany in WAL.
bulk_upsert vs one upsert statement per row, on both.
Each contestant writes the same events into its own fresh events table (same schema, same
indexes). Rows/s is the best of --repeat runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from common import drop_table, fresh_events_table  # noqa: E402
from timelapser_workers.sinks.database import DatabaseSink  # noqa: E402
from timelapser_workers.sql.codec import EVENT_COLUMNS, copy_buffer  # noqa: E402
from timelapser_workers.sql.engine import create_sink_engine  # noqa: E402
from timelapser_workers.sql.upsert import bulk_upsert  # noqa: E402
from timelapser_workers.events import make_event  # noqa: E402


COLS = ", ".join(EVENT_COLUMNS)


def make_events(n: int) -> list:
    return [
        make_event("JOB_COMPLETED", {"job_id": i, "camera": f"cam{i % 7}", "ms": i * 1.5}, worker="w1", source="bench")
        for i in range(n)
    ]


def timed(fn: Callable[[], None], rows: int, repeat: int, setup: Callable[[], None] | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return rows / best


def chunks(seq: list, size: int) -> list[list]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def print_table(title: str, rows: list[tuple[str, float]], base: str) -> None:
    ref = dict(rows)[base]
    print(f"\n{title}")
    print(f"  {'contestant':<42} {'rows/s':>12} {'vs ' + base:>22}")
    for name, rate in rows:
        print(f"  {name:<42} {rate:>12,.0f} {rate / ref:>21.2f}x")


def with_driver(url: str, driver: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}+{driver}://{rest}"


def bench_postgres(url: str, n: int, batch: int, repeat: int) -> None:
    engine = create_sink_engine(with_driver(url, "psycopg2"), application_name="timelapser-bench")
    engine3 = create_sink_engine(with_driver(url, "psycopg"), application_name="timelapser-bench")
    events = make_events(n)
    batches = chunks(events, batch)
    tables: list[str] = []
    state: dict[str, str] = {}

    def new_table() -> None:
        state["t"] = fresh_events_table(engine)
        tables.append(state["t"])

    def sink_run(use_copy: bool, on: sa.Engine = engine) -> Callable[[], None]:
        def run() -> None:
            sink = DatabaseSink(on, table=state["t"], use_copy=use_copy, create_table=False)
            for b in batches:
                sink.send(b)
        return run

    def raw_copy() -> None:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for b in batches:
                cur.copy_expert(f"COPY {state['t']} ({COLS}) FROM STDIN", copy_buffer(b))
                raw.commit()
        finally:
            raw.close()

    def raw_copy3() -> None:
        raw = engine3.raw_connection()
        try:
            cur = raw.cursor()
            for b in batches:
                with cur.copy(f"COPY {state['t']} ({COLS}) FROM STDIN") as copy:
                    copy.write(copy_buffer(b).getvalue())
                raw.commit()
        finally:
            raw.close()

    def per_row_commit() -> None:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            for e in events[: max(1, n // 10)]:
                cur.execute(
                    f"INSERT INTO {state['t']} ({COLS})"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (e.id, e.type, json.dumps(e.data), e.priority.name, e.source, e.worker, e.created_datetime, 1),
                )
                raw.commit()
        finally:
            raw.close()

    try:
        results = [
            ("raw psycopg2 COPY loop (1 commit/batch)", timed(raw_copy, n, repeat, new_table)),
            ("DatabaseSink COPY", timed(sink_run(True), n, repeat, new_table)),
            ("DatabaseSink multi-row INSERT", timed(sink_run(False), n, repeat, new_table)),
            ("raw psycopg 3 COPY loop (1 commit/batch)", timed(raw_copy3, n, repeat, new_table)),
            ("DatabaseSink COPY, psycopg 3", timed(sink_run(True, engine3), n, repeat, new_table)),
            ("DatabaseSink multi-row INSERT, psycopg 3", timed(sink_run(False, engine3), n, repeat, new_table)),
            ("INSERT + commit per event (seed)", timed(per_row_commit, max(1, n // 10), repeat, new_table)),
        ]
        print_table(f"PostgreSQL: {n} events in batches of {batch}", results, "raw psycopg2 COPY loop (1 commit/batch)")
        # The retry path: every batch sent twice (the second finds its rows there already).
        def twice() -> None:
            sink = DatabaseSink(engine, table=state["t"], create_table=False)
            for b in batches:
                sink.send(b)
                sink.send(b)
        rate = timed(twice, n, repeat, new_table)
        print(f"  {'DatabaseSink COPY, every batch sent twice':<42} {rate:>12,.0f} {rate / results[0][1]:>21.2f}x")
        bench_upsert(engine, "PostgreSQL", min(n, 5000), repeat)
    finally:
        for t in tables:
            drop_table(engine, t)
        engine.dispose()
        engine3.dispose()


def bench_sqlite(n: int, batch: int, repeat: int) -> None:
    tmp = tempfile.mkdtemp(prefix="tl-bench-")
    path = os.path.join(tmp, "bench.db")
    engine = create_sink_engine(f"sqlite:///{path}")
    events = make_events(n)
    batches = chunks(events, batch)
    state: dict[str, str] = {}

    def new_table() -> None:
        state["t"] = fresh_events_table(engine)

    def sink_run() -> None:
        sink = DatabaseSink(engine, table=state["t"], create_table=False)
        for b in batches:
            sink.send(b)

    def raw_executemany() -> None:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        sql = (
            f"INSERT INTO {state['t']} ({COLS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        for b in batches:
            conn.executemany(sql, [(e.id, e.type, json.dumps(e.data), e.priority.name, e.source, e.worker,
                                    e.created_datetime.isoformat(" "), 1) for e in b])
            conn.commit()
        conn.close()

    results = [
        ("raw sqlite3 executemany (WAL, 1 commit/batch)", timed(raw_executemany, n, repeat, new_table)),
        ("DatabaseSink", timed(sink_run, n, repeat, new_table)),
    ]
    print_table(f"SQLite (WAL): {n} events in batches of {batch}", results, "raw sqlite3 executemany (WAL, 1 commit/batch)")
    bench_upsert(engine, "SQLite", min(n, 5000), repeat)
    engine.dispose()


def bench_upsert(engine: sa.Engine, label: str, n: int, repeat: int) -> None:
    md = sa.MetaData()
    name = f"bench_settings_{uuid.uuid4().hex[:8]}"
    table = sa.Table(name, md, sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text))
    md.create_all(engine)
    rows = [{"key": f"setting_{i}", "value": str(i)} for i in range(n)]
    half = [{"key": f"setting_{i}", "value": "x"} for i in range(n // 2)]

    def reset() -> None:
        with engine.begin() as conn:
            conn.execute(table.delete())
        bulk_upsert(engine, table, half, ["key"])  # half the keys exist: a real mix of updates

    def bulk() -> None:
        bulk_upsert(engine, table, rows, ["key"])

    def per_row() -> None:
        from sqlalchemy.dialects import postgresql, sqlite

        insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(table)
        stmt = stmt.on_conflict_do_update(index_elements=["key"], set_={"value": stmt.excluded.value})
        with engine.begin() as conn:
            for row in rows:
                conn.execute(stmt, row)

    results = [("upsert per row (one transaction)", timed(per_row, n, repeat, reset)),
               ("bulk_upsert (one executemany)", timed(bulk, n, repeat, reset))]
    print_table(f"{label} settings upsert: {n} rows, half existing", results, "upsert per row (one transaction)")
    drop_table(engine, name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--postgres", default=os.environ.get("TIMELAPSER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    p.add_argument("--skip-postgres", action="store_true")
    a = p.parse_args()
    print(f"bench_db: python {sys.version.split()[0]}, SQLAlchemy {sa.__version__}, sqlite {sqlite3.sqlite_version}, {os.cpu_count()} cores")
    if not a.skip_postgres:
        bench_postgres(a.postgres, a.events, a.batch, a.repeat)
    bench_sqlite(a.events, a.batch, a.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
