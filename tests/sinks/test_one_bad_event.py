"""One bad event costs only itself, in a real database behind the real batcher: an aggregated
event the database refuses is split back into its members, so only the bad member is
dead-lettered, with its own error. And a table that cannot make writes idempotent (no unique
event_id) is refused when the sink starts, naming the table and the fix."""

from __future__ import annotations

import pytest

from timelapser_workers import EventBatcher, JsonLinesDeadLetter, PermanentSinkError
from timelapser_workers.events import JOB_STARTED
from timelapser_workers.sinks.database import DatabaseSink


@pytest.mark.postgres
@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_a_nul_in_one_of_ten_aggregated_events_costs_only_that_event(postgres_url, unique_name, pg_conn,
                                                                     tmp_path, use_copy):
    dead = JsonLinesDeadLetter(tmp_path / "dead.jsonl")
    sink = DatabaseSink(postgres_url, table=unique_name, use_copy=use_copy)
    try:
        with EventBatcher([sink], batch_size=10, batch_timeout=5, dead_letter=dead,
                          spool_dir=tmp_path / "spool") as batcher:
            good = [batcher.emit(JOB_STARTED, {"job_id": i, "camera": "cam-1"}, worker="w").id
                    for i in range(9)]
            bad = batcher.emit(JOB_STARTED, {"job_id": 9, "camera": "cam\x00-1"}, worker="w").id
            result = batcher.flush(10)
            stats = batcher.stats()
        assert stats["batches_created"] == 1  # the ten went as one aggregated event
        assert (result.delivered, result.failed, result.pending) == (9, 1, 0)
        with pg_conn.cursor() as cur:
            cur.execute(f"SELECT event_id FROM {unique_name}")
            assert sorted(r[0] for r in cur.fetchall()) == sorted(good)  # the members, stored raw
        records = dead.read()
        assert [r["event"]["id"] for r in records] == [bad]
        assert records[0]["reason"] == "permanent_error"
        assert "unsupported Unicode escape sequence" in records[0]["error"]  # its own error
        assert records[0]["event"]["data"] == {"job_id": 9, "camera": "cam\x00-1"}
        sink_stats = stats["sinks"][sink.name]
        assert (sink_stats["events_sent"], sink_stats["dead_lettered"], sink_stats["spooled"]) == (9, 1, 0)
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")


_NO_UNIQUE = """CREATE TABLE {t} (id INTEGER PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL,
    data TEXT NOT NULL, priority TEXT NOT NULL, source TEXT, worker TEXT, created_at TEXT NOT NULL,
    inserted_at TEXT, batch_count INTEGER NOT NULL DEFAULT 1)"""
_NO_UNIQUE_PG = """CREATE TABLE {t} (id BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL,
    data JSONB NOT NULL, priority TEXT NOT NULL, source TEXT, worker TEXT,
    created_at TIMESTAMPTZ NOT NULL, inserted_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    batch_count INTEGER NOT NULL DEFAULT 1)"""


def test_a_table_without_a_unique_event_id_is_refused_when_the_sink_starts(db, tmp_path):
    db.execute_script(_NO_UNIQUE.format(t=db.table) + ";", _NO_UNIQUE_PG.format(t=db.table))
    sink = DatabaseSink(db.url, table=db.table, create_table=True)  # exists: left as it is
    with pytest.raises(PermanentSinkError) as info:
        sink.ensure_table()
    message = str(info.value)
    assert repr(db.table) in message and "no unique constraint or index on event_id" in message
    assert f"CREATE UNIQUE INDEX {db.table}_event_id_key ON {db.table} (event_id)" in message
    # behind a batcher: a refusal, so dead letters with that message, nothing spooled, no row
    dead = JsonLinesDeadLetter(tmp_path / "dead.jsonl")
    with EventBatcher([sink], batch_timeout=0.01, dead_letter=dead, spool_dir=tmp_path / "spool") as batcher:
        ids = {batcher.emit(JOB_STARTED, {"job_id": i}, worker="w").id for i in range(3)}
        result = batcher.flush(10)
    assert (result.delivered, result.failed, result.spooled) == (0, 3, 0)
    records = dead.read()
    assert {r["event"]["id"] for r in records} == ids
    assert all("no unique constraint" in r["error"] for r in records)
    assert db.query(f"SELECT count(*) FROM {db.table}") == [(0,)]
    # the fix the message names works
    db.query(f"CREATE UNIQUE INDEX {db.table}_event_id_key ON {db.table} (event_id)")
    fixed = DatabaseSink(db.url, table=db.table)
    fixed.ensure_table()
    fixed.close()
    sink.close()
