"""BatchingDatabaseHandler keeps a record's context: ``extra={...}`` fields, structlog's event
dict (both ways structlog hands records to logging) and its bound context variables, in the
JSON column ``extra`` (JSONB on PostgreSQL, queried with ->>), beside the record's own time and
level. Real databases: a SQLite file and the local PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import structlog

from timelapser_workers.integrations.log_handler import BatchingDatabaseHandler


class Recorder(logging.Handler):
    """Keeps the records it sees: the test compares stored rows with them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def app_logger() -> Iterator[tuple[logging.Logger, Recorder]]:
    log = logging.getLogger(f"app.{uuid.uuid4().hex[:8]}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    recorder = Recorder()
    log.addHandler(recorder)
    yield log, recorder
    structlog.contextvars.clear_contextvars()


def _log_everything(log: logging.Logger) -> None:
    """One record of each kind: plain extra, structlog both ways, bound context, an exception."""
    log.info("frame saved", extra={"job_id": 7, "camera": "cam3", "taken": dt.datetime(2026, 11, 28, 12, 0),
                                   "odd": object()})
    kwargs_style = structlog.wrap_logger(log, wrapper_class=structlog.stdlib.BoundLogger, processors=[
        structlog.contextvars.merge_contextvars, structlog.stdlib.render_to_log_kwargs])
    formatter_style = structlog.wrap_logger(log, wrapper_class=structlog.stdlib.BoundLogger, processors=[
        structlog.contextvars.merge_contextvars, structlog.stdlib.ProcessorFormatter.wrap_for_formatter])
    structlog.contextvars.bind_contextvars(request_id="req-42")
    kwargs_style.bind(job_id=8, camera="cam3").warning("thumbnail made")
    formatter_style.bind(job_id=9).error("overlay failed", camera="cam4")
    log.debug("plain call inside a bound context")
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        formatter_style.exception("capture crashed", job_id=10)
    structlog.contextvars.clear_contextvars()
    log.info("no context at all")


EXPECTED = [
    ("INFO", "frame saved", {"job_id": 7, "camera": "cam3", "taken": "2026-11-28T12:00:00"}),
    ("WARNING", "thumbnail made", {"job_id": 8, "camera": "cam3", "request_id": "req-42"}),
    ("ERROR", "overlay failed", {"job_id": 9, "camera": "cam4", "request_id": "req-42"}),
    ("DEBUG", "plain call inside a bound context", {"request_id": "req-42"}),
    ("ERROR", "capture crashed", {"job_id": 10, "request_id": "req-42"}),
    ("INFO", "no context at all", None),
]


def _check_rows(rows: list[tuple[Any, ...]], records: list[logging.LogRecord]) -> None:
    """rows: (level, levelno, message, extra as dict or None, created_at, exc_text) by id."""
    assert len(rows) == len(EXPECTED) == len(records)
    for (level, levelno, message, extra, created, exc_text), record, (want_level, want_message, want_extra) in zip(
            rows, records, EXPECTED):
        assert (level, message) == (want_level, want_message)
        assert levelno == logging.getLevelName(want_level)
        if want_extra is None:
            assert extra is None
        else:
            odd = extra.pop("odd", None)
            assert extra == want_extra
            assert odd is None or odd.startswith("<object object at")  # not JSON: its repr
        assert abs(created.timestamp() - record.created) < 1e-3  # the record's own time
        assert ("RuntimeError: disk full" in (exc_text or "")) == (message == "capture crashed")


def _log_everything_into(url: str, table: str, log: logging.Logger, tmp_path: Path) -> None:
    handler = BatchingDatabaseHandler(url, table=table, batch_timeout=0.05, dead_letter=tmp_path / "dead.jsonl")
    log.addHandler(handler)
    try:
        _log_everything(log)
    finally:
        log.removeHandler(handler)
        handler.close(5)
    assert handler.submitted == len(EXPECTED) and handler.dropped == 0


def test_postgresql_keeps_context_as_jsonb_queryable_with_arrows(postgres_url, pg_conn, unique_name, app_logger, tmp_path):
    log, recorder = app_logger
    _log_everything_into(postgres_url, unique_name, log, tmp_path)
    try:
        with pg_conn.cursor() as cur:
            cur.execute(f"SELECT level, levelno, message, extra, created_at, exc_text FROM {unique_name} ORDER BY id")
            _check_rows(cur.fetchall(), recorder.records)
            cur.execute(f"SELECT message, (extra->>'job_id')::int FROM {unique_name} "
                        f"WHERE extra->>'camera' = 'cam3' ORDER BY id")
            assert cur.fetchall() == [("frame saved", 7), ("thumbnail made", 8)]
            cur.execute(f"SELECT count(*) FROM {unique_name} WHERE extra->>'request_id' = 'req-42'")
            assert cur.fetchone() == (4,)
            cur.execute("SELECT data_type FROM information_schema.columns WHERE table_name = %s AND column_name = 'extra'",
                        (unique_name,))
            assert cur.fetchone() == ("jsonb",)
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")


def test_sqlite_keeps_context_as_json_text(tmp_path: Path, app_logger):
    log, recorder = app_logger
    path = tmp_path / "logs.db"
    _log_everything_into(f"sqlite:///{path}", "logs", log, tmp_path)
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT level, levelno, message, extra, created_at, exc_text FROM logs ORDER BY id").fetchall()
    assert conn.execute("SELECT json_extract(extra, '$.job_id') FROM logs WHERE json_extract(extra, '$.camera') = 'cam4'"
                        ).fetchall() == [(9,)]
    conn.close()
    _check_rows([(lv, no, m, json.loads(x) if x else None,
                  dt.datetime.fromisoformat(c).replace(tzinfo=dt.timezone.utc), e)
                 for lv, no, m, x, c, e in rows], recorder.records)


def test_a_logs_table_from_before_the_extra_column_gets_it(tmp_path: Path, app_logger):
    log, _ = app_logger
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("""CREATE TABLE logs (id INTEGER PRIMARY KEY, event_id VARCHAR(64) NOT NULL UNIQUE,
        created_at DATETIME NOT NULL, level TEXT NOT NULL, levelno INTEGER NOT NULL, logger TEXT NOT NULL,
        message TEXT NOT NULL, exc_text TEXT, thread TEXT, process INTEGER,
        inserted_at DATETIME DEFAULT CURRENT_TIMESTAMP NOT NULL)""")
    conn.execute("INSERT INTO logs (event_id, created_at, level, levelno, logger, message) "
                 "VALUES ('old-1', '2026-01-01 00:00:00', 'INFO', 20, 'app', 'from 0.1')")
    conn.commit()
    handler = BatchingDatabaseHandler(f"sqlite:///{path}", batch_timeout=0.05, dead_letter=tmp_path / "dead.jsonl")
    log.addHandler(handler)
    log.info("from 0.2", extra={"job_id": 1})
    log.removeHandler(handler)
    handler.close(5)
    assert conn.execute("SELECT message, extra FROM logs ORDER BY id").fetchall() == [
        ("from 0.1", None), ("from 0.2", '{"job_id": 1}')]
    assert handler.dropped == 0 and not (tmp_path / "dead.jsonl").exists()
    conn.close()
