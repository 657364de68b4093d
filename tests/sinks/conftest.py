"""The `db` fixture: one behaviour test, run against a real SQLite file and the real PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest


@dataclasses.dataclass
class Db:
    """A test database: its URL for the sink, its table, and plain-driver helpers to look inside."""

    kind: str  # "sqlite" | "postgresql"
    url: str  # what DatabaseSink is given (application_name set on PostgreSQL)
    table: str
    app_name: str
    dsn: str  # for the helpers' own connections

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.dsn, timeout=10)
            try:
                return conn.execute(sql.replace("%s", "?"), params).fetchall()
            finally:
                conn.close()
        import psycopg2

        conn = psycopg2.connect(self.dsn, application_name="timelapser-test-observer")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def execute_script(self, sqlite_sql: str, postgres_sql: str) -> None:
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.dsn, timeout=10)
            try:
                conn.executescript(sqlite_sql)
            finally:
                conn.close()
        else:
            self.query(postgres_sql)

    def event_ids(self) -> list[str]:
        return [r[0] for r in self.query(f"SELECT event_id FROM {self.table} ORDER BY id")]

    def rows(self) -> list[dict[str, Any]]:
        cols = ["id", "event_id", "type", "data", "priority", "source", "worker", "created_at", "inserted_at", "batch_count"]
        out = []
        for r in self.query(f"SELECT {', '.join(cols)} FROM {self.table} ORDER BY id"):
            row = dict(zip(cols, r))
            if isinstance(row["data"], str):
                row["data"] = json.loads(row["data"])
            out.append(row)
        return out

    def kill_backends(self, waiting_on_lock: bool = False, timeout: float = 10.0) -> int:
        """pg_terminate_backend on this test's own backends (found by application_name), polling
        until at least one is found (and waits on a lock, if asked) or ``timeout`` passes."""
        import time

        sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s"
        if waiting_on_lock:
            sql += " AND wait_event_type = 'Lock'"
        deadline = time.monotonic() + timeout
        while True:
            killed = self.query(sql, (self.app_name,))
            if killed or time.monotonic() >= deadline:
                return sum(1 for (ok,) in killed if ok)
            time.sleep(0.01)

    def refuse_type(self, event_type: str) -> None:
        """Install a trigger that refuses rows of ``event_type``: a real row-level failure."""
        self.refuse_rows("type", event_type)

    def refuse_rows(self, column: str, value: str) -> None:
        """Install a trigger on this test's table that refuses rows whose ``column`` is ``value``."""
        self.execute_script(
            f"CREATE TRIGGER {self.table}_refuse BEFORE INSERT ON {self.table} "
            f"WHEN NEW.{column} = '{value}' BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;",
            f"""
            CREATE FUNCTION {self.table}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.{column} = '{value}' THEN
                RAISE check_violation USING MESSAGE = 'refused by test trigger';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER {self.table}_refuse BEFORE INSERT ON {self.table}
              FOR EACH ROW EXECUTE FUNCTION {self.table}_refuse();
            """,
        )


def _with_app_name(url: str, app_name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={app_name}"


def _with_driver(url: str, driver: str) -> str:
    """``postgresql://...`` as ``postgresql+<driver>://...`` (the sink's URL names its driver)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme.split('+')[0]}+{driver}://{rest}"


@pytest.fixture(params=[
    "sqlite",
    pytest.param("psycopg2", marks=pytest.mark.postgres),
    pytest.param("psycopg3", marks=pytest.mark.postgres),
])
def db(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[Db]:
    """A fresh table in a real database: a SQLite file, then the PostgreSQL test server through
    each driver (psycopg2, psycopg 3). The helpers look inside with psycopg2 either way."""
    if request.param == "sqlite":
        path = tmp_path / "events.db"
        yield Db("sqlite", f"sqlite:///{path}", unique_name, unique_name, str(path))
        return
    url = request.getfixturevalue("postgres_url")
    driver = {"psycopg2": "psycopg2", "psycopg3": "psycopg"}[request.param]
    d = Db("postgresql", _with_app_name(_with_driver(url, driver), unique_name), unique_name, unique_name, url)
    yield d
    d.query(f"DROP TABLE IF EXISTS {unique_name} CASCADE")
    d.query(f"DROP FUNCTION IF EXISTS {unique_name}_refuse() CASCADE")


@pytest.fixture
def pg_db(postgres_url: str, unique_name: str) -> Iterator[Db]:
    """Like ``db``, PostgreSQL only: for what SQLite has no counterpart to."""
    d = Db("postgresql", _with_app_name(postgres_url, unique_name), unique_name, unique_name, postgres_url)
    yield d
    d.query(f"DROP TABLE IF EXISTS {unique_name} CASCADE")
