"""DatabaseSink(schema=...) on PostgreSQL: the table, its indexes and every row live in that
schema, nothing in the search path's; as a keyword argument and in the sink URL."""

from __future__ import annotations

from typing import Iterator

import pytest

from timelapser_workers import EventBatcher
from timelapser_workers.sinks import load_sink
from timelapser_workers.sinks.database import DatabaseSink

pytestmark = pytest.mark.postgres


@pytest.fixture
def schema(pg_conn, unique_name: str) -> Iterator[str]:
    name = f"s_{unique_name}"
    with pg_conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {name}")
    yield name
    with pg_conn.cursor() as cur:
        cur.execute(f"DROP SCHEMA {name} CASCADE")
        cur.execute(f"DROP TABLE IF EXISTS public.{unique_name}")


def _one(pg_conn, sql: str, *params: object) -> int | bool:
    with pg_conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


@pytest.mark.parametrize("given", ["keyword", "url"])
def test_the_table_and_its_rows_are_in_the_schema(postgres_url: str, pg_conn, unique_name: str,
                                                  schema: str, tmp_path, given: str) -> None:
    if given == "keyword":
        sink = DatabaseSink(postgres_url, table=unique_name, schema=schema)
    else:
        sink = load_sink(f"{postgres_url}?table={unique_name}&schema={schema}")
    assert isinstance(sink, DatabaseSink)
    with EventBatcher([sink], batch_timeout=0.01, dead_letter=tmp_path / "dead.jsonl") as batcher:
        for n in range(25):
            batcher.emit("JOB_STARTED", {"job_id": n}, worker=f"w{n % 2}")
        assert batcher.flush(timeout=10).pending == 0
    assert _one(pg_conn, f"SELECT COALESCE(SUM(batch_count), 0) FROM {schema}.{unique_name}") == 25
    assert _one(pg_conn, "SELECT to_regclass(%s) IS NULL", f"public.{unique_name}") is True
    indexes = _one(pg_conn, "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND tablename = %s",
                   schema, unique_name)
    assert indexes >= 3  # the primary key, event_id, (type, created_at)
    assert not (tmp_path / "dead.jsonl").exists()
