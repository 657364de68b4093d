"""DatabaseSink behaviour, the same tests against a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa

from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sql.schema import events_table
from timelapser_workers.errors import PermanentSinkError, TransientSinkError
from timelapser_workers.events import Event, Priority, make_event


def batch(n: int, type: str = "JOB_COMPLETED", **kw: object) -> list[Event]:
    return [make_event(type, {"job_id": i, "note": "tab\there, newline\nthere, back\\slash, ünïcode"}, worker="w1", source="test", **kw) for i in range(n)]


def test_creates_table_and_indexes(db) -> None:
    sink = DatabaseSink(db.url, table=db.table)
    sink.send(batch(1))
    insp = sa.inspect(sink.engine)
    cols = {c["name"] for c in insp.get_columns(db.table)}
    assert cols == {"id", "event_id", "type", "data", "priority", "source", "worker", "created_at", "inserted_at", "batch_count"}
    indexed = [tuple(ix["column_names"]) for ix in insp.get_indexes(db.table)]
    uniques = [tuple(u["column_names"]) for u in insp.get_unique_constraints(db.table)]
    assert ("type", "created_at") in indexed
    assert ("event_id",) in uniques + [i for i in indexed]
    if db.kind == "postgresql":
        data_type = db.query("SELECT data_type FROM information_schema.columns WHERE table_name=%s AND column_name='data'", (db.table,))
        assert data_type == [("jsonb",)]
    else:
        assert db.query("PRAGMA journal_mode") == [("wal",)]
    sink.close()


def test_rows_keep_the_events_own_fields(db) -> None:
    sink = DatabaseSink(db.url, table=db.table)
    events = batch(3, priority=Priority.HIGH)
    old = make_event("JOB_STARTED", {"x": 1}).replace(created_at=1_600_000_000.25)
    agg = make_event("JOBS_BATCH_COMPLETED", {"items": [1, 2]}).replace(members=tuple(events[:2]))
    sink.send(events + [old, agg])
    rows = db.rows()
    assert [r["event_id"] for r in rows] == [e.id for e in events + [old, agg]]
    assert rows[0]["data"] == events[0].data
    assert rows[0]["priority"] == "HIGH" and rows[0]["worker"] == "w1" and rows[0]["source"] == "test"
    assert [r["batch_count"] for r in rows] == [1, 1, 1, 1, 2]
    stored = rows[3]["created_at"]
    if isinstance(stored, str):  # SQLite keeps UTC text
        stored = dt.datetime.fromisoformat(stored).replace(tzinfo=dt.timezone.utc)
    assert stored == old.created_datetime  # the event's own time, not the flush time
    assert rows[0]["inserted_at"] is not None
    sink.close()


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_retried_batch_stores_no_duplicates(db, use_copy: bool) -> None:
    sink = DatabaseSink(db.url, table=db.table, use_copy=use_copy)
    first = batch(10)
    sink.send(first)
    sink.send(first)  # the lane retries a batch whose commit it never heard about
    more = batch(5)
    sink.send(first[5:] + more)  # partly stored already
    assert db.event_ids() == [e.id for e in first + more]
    if db.kind == "postgresql":
        assert sink.use_copy is use_copy
        assert sink.copy_conflicts == (2 if use_copy else 0)
    sink.close()


def test_poison_rows_are_isolated_and_the_rest_commit(db) -> None:
    sink = DatabaseSink(db.url, table=db.table)
    sink.ensure_table()
    db.refuse_type("POISON")
    events = batch(30)
    events[7] = make_event("POISON", {"n": 7})
    events[21] = make_event("POISON", {"n": 21})
    with pytest.raises(PermanentSinkError) as info:
        sink.send(events)
    assert [e.id for e in info.value.events] == [events[7].id, events[21].id]
    assert "2 of 30 events refused" in str(info.value)
    good = [e for e in events if e.type != "POISON"]
    assert db.event_ids() == [e.id for e in good]
    assert sink.rows_refused == 2
    # Sent again (a retry by a careless caller): nothing twice, the poison still refused.
    with pytest.raises(PermanentSinkError):
        sink.send(events)
    assert db.event_ids() == [e.id for e in good]
    sink.close()


def test_a_missing_table_is_a_permanent_error_for_the_whole_batch(db) -> None:
    sink = DatabaseSink(db.url, table=db.table, create_table=False)
    events = batch(4)
    with pytest.raises(PermanentSinkError) as info:
        sink.send(events)
    assert info.value.events == events
    assert db.table in str(info.value)


def test_a_locked_database_is_transient_and_the_retry_succeeds(db) -> None:
    """The sink's write waits on a lock; its backend is killed (PostgreSQL) or its wait runs out."""
    sink = DatabaseSink(db.url, table=db.table, busy_timeout=0.3)
    sink.ensure_table()
    events = batch(20)
    if db.kind == "sqlite":
        import sqlite3

        holder = sqlite3.connect(db.dsn, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # a writer that will not let go in time
        with pytest.raises(TransientSinkError):
            sink.send(events)
        holder.execute("ROLLBACK")
        holder.close()
    else:
        import psycopg2

        holder = psycopg2.connect(db.dsn, application_name="timelapser-test-observer")
        hcur = holder.cursor()
        hcur.execute(f"LOCK TABLE {db.table} IN SHARE MODE")  # COPY/INSERT must wait
        outcome: list[BaseException | None] = []

        def write() -> None:
            try:
                sink.send(events)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=write)
        t.start()
        killed = db.kill_backends(waiting_on_lock=True)
        holder.rollback()
        holder.close()
        t.join(timeout=10)
        assert killed == 1, "the sink's backend never waited on the lock"
        assert len(outcome) == 1 and isinstance(outcome[0], TransientSinkError), outcome
    assert db.event_ids() == []
    sink.send(events)  # the retry: a fresh connection (the dead one was invalidated)
    assert db.event_ids() == [e.id for e in events]
    sink.close()


def test_a_given_engine_is_never_disposed(db) -> None:
    engine = sa.create_engine(db.url.replace("postgresql://", "postgresql+psycopg2://"))
    sink = DatabaseSink(engine, table=db.table)
    sink.send(batch(2))
    sink.close()
    with engine.connect() as conn:  # still the user's, still working
        assert conn.execute(sa.text(f"SELECT count(*) FROM {db.table}")).scalar() == 2
    engine.dispose()


def test_events_table_is_reusable(db) -> None:
    md = sa.MetaData()
    table = events_table(md, db.table)
    engine = DatabaseSink(db.url, table=db.table).engine
    md.create_all(engine)
    DatabaseSink(engine, table=db.table).send(batch(3))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 3
    engine.dispose()


@pytest.mark.parametrize("bad", ["sse events", "x;drop table y", "1abc", "", "a" * 64, "ünï"])
def test_table_name_is_validated(bad: str, tmp_path) -> None:
    with pytest.raises(ValueError, match="not a plain SQL identifier") as info:
        DatabaseSink(f"sqlite:///{tmp_path}/x.db", table=bad)
    assert repr(bad) in str(info.value)


def test_bad_target_names_the_value() -> None:
    with pytest.raises(TypeError, match="42"):
        DatabaseSink(42)  # type: ignore[arg-type]


def test_sqlite_rows_are_what_sqlalchemys_insert_would_store(tmp_path) -> None:
    """The SQLite write skips SQLAlchemy's per-row processing; what it stores must read back
    the same: every column's text as SQLAlchemy's, the data as the payload encoded once at the
    edge (compact JSON, the same value as SQLAlchemy's json.dumps text)."""
    import json
    import sqlite3

    from timelapser_workers.sql.codec import event_row

    path = tmp_path / "events.db"
    fast = DatabaseSink(f"sqlite:///{path}", table="fast")
    ref = DatabaseSink(f"sqlite:///{path}", table="ref")
    events = batch(5) + [make_event("JOB_STARTED", {"n": None, "f": 0.5, "l": [1, {"a": "\u2603"}]},
                                    source=None).replace(created_at=1_600_000_000.0)]
    fast.send(events)
    ref.ensure_table()
    with ref.engine.begin() as conn:  # SQLAlchemy's compiled INSERT, the reference
        conn.execute(ref.table.insert(), [event_row(e) for e in events])
    cols = "event_id, type, data, priority, source, worker, created_at, batch_count"
    with sqlite3.connect(path) as conn:
        got = conn.execute(f"SELECT {cols} FROM fast ORDER BY id").fetchall()
        want = conn.execute(f"SELECT {cols} FROM ref ORDER BY id").fetchall()
        extracted = conn.execute("SELECT json_extract(data, '$.f') FROM fast ORDER BY id").fetchall()
    assert [r[:2] + r[3:] for r in got] == [r[:2] + r[3:] for r in want]
    assert [json.loads(r[2]) for r in got] == [json.loads(r[2]) for r in want]
    assert [r[2].encode() for r in got] == [e.payload for e in events]  # stored as encoded
    assert extracted[-1] == (0.5,)  # SQLite's own JSON functions read it
    with fast.engine.connect() as conn:  # and it reads back through SQLAlchemy as it was written
        row = conn.execute(sa.select(fast.table).order_by(fast.table.c.id.desc()).limit(1)).one()
    assert row.data == events[-1].data
    assert row.created_at.replace(tzinfo=dt.timezone.utc) == events[-1].created_datetime
    fast.close()
    ref.close()


def test_an_unsupported_database_is_refused_with_its_name() -> None:
    """A MySQL engine (its DB-API never connected: the refusal comes before any I/O)."""
    import sqlite3

    engine = sa.create_engine("mysql+mysqldb://app@127.0.0.1/app", module=sqlite3)
    sink = DatabaseSink(engine, create_table=False)
    events = batch(3)
    with pytest.raises(PermanentSinkError, match="DatabaseSink supports sqlite and postgresql, not 'mysql'") as info:
        sink.send(events)
    assert info.value.events == events
