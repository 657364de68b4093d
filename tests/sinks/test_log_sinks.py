"""LogSink lines, and BatchingDatabaseHandler storing every record exactly once."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

import pytest

from timelapser_workers.integrations.log_handler import BatchingDatabaseHandler
from timelapser_workers.sinks.log import LogSink
from timelapser_workers.batcher import EventBatcher
from timelapser_workers.events import make_event


def test_log_sink_writes_one_structured_line_per_batch(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink("test.events", max_ids=2)
    batch = [make_event("JOB_STARTED", {"job_id": i}, source="cam1", worker="w") for i in range(3)]
    batch.append(make_event("JOB_FAILED", source="cam2"))
    with caplog.at_level(logging.INFO, logger="test.events"):
        sink.send(batch)
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.name == "test.events"
    text = record.getMessage()
    assert text.startswith("4 event(s): JOB_STARTED x3, JOB_FAILED x1; ids ")
    assert f"{batch[0].id},{batch[1].id} +2 more" in text and "source cam1,cam2" in text
    fields = record.timelapser_batch  # type: ignore[attr-defined]
    assert fields["count"] == 4 and fields["ids"] == [e.id for e in batch] and fields["sources"] == ["cam1", "cam2"]


def test_log_sink_counts_aggregated_members(caplog: pytest.LogCaptureFixture) -> None:
    sink = LogSink("test.events")
    with caplog.at_level(logging.INFO, logger="test.events"):
        with EventBatcher([sink], batch_size=10, batch_timeout=0.05) as batcher:
            for i in range(10):
                batcher.emit("JOB_COMPLETED", {"job_id": i}, worker="w")
            assert batcher.flush(5).delivered == 10
    lines = [r.getMessage() for r in caplog.records if r.name == "test.events"]
    assert lines and lines[0].startswith("10 event(s): JOBS_BATCH_COMPLETED x10")


def test_log_sink_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="'loud'"):
        LogSink(level="loud")
    with pytest.raises(TypeError, match="42"):
        LogSink(42)  # type: ignore[arg-type]


def test_handler_stores_every_record_of_8_threads_exactly_once(db) -> None:
    handler = BatchingDatabaseHandler(db.url, table=db.table, batch_size=50, batch_timeout=0.05)
    log = logging.getLogger(f"app.{db.table}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    log.addHandler(handler)
    stamps: dict[str, float] = {}
    stamp_lock = threading.Lock()

    class Stamp(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            with stamp_lock:
                stamps[record.getMessage()] = record.created
            return True

    log.addFilter(Stamp())
    per_thread = 150

    def work(t: int) -> None:
        for i in range(per_thread):
            if i == 7:
                try:
                    raise KeyError(f"k{t}")
                except KeyError:
                    log.exception("thread %d record %d", t, i)
            else:
                log.log(logging.WARNING if i % 2 else logging.INFO, "thread %d record %d", t, i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    handler.flush(15)
    flushed_at = time.time()
    rows = db.query(f"SELECT message, created_at, level, logger, exc_text FROM {db.table}")
    log.removeHandler(handler)
    handler.close(5)
    assert handler.submitted == 8 * per_thread and handler.dropped == 0
    assert len(rows) == 8 * per_thread
    assert len({r[0] for r in rows}) == 8 * per_thread  # each once
    for message, created, level, logger_name, exc_text in rows:
        if isinstance(created, str):
            created = dt.datetime.fromisoformat(created).replace(tzinfo=dt.timezone.utc)
        assert abs(created.timestamp() - stamps[message]) < 1e-3  # the record's own time
        assert created.timestamp() < flushed_at
        assert logger_name == log.name
        assert level == ("ERROR" if message.endswith(" 7") else "WARNING" if int(message.split()[-1]) % 2 else "INFO")
        if message.endswith(" 7"):
            assert "KeyError" in exc_text and "Traceback" in exc_text
        else:
            assert exc_text is None


def test_the_librarys_own_logging_during_a_flush_neither_recurses_nor_deadlocks(tmp_path, unique_name: str) -> None:
    """On the root logger at DEBUG, with a database that is locked at first (so the lane logs
    its retries): the records arrive once, the library's own records are skipped, not stored."""
    import sqlite3

    path = tmp_path / "logs.db"
    from timelapser_workers.sql.engine import create_sink_engine

    engine = create_sink_engine(f"sqlite:///{path}", busy_timeout=0.05)
    handler = BatchingDatabaseHandler(engine, table=unique_name, batch_size=10, batch_timeout=0.05, retry_delay=0.05, max_retries=1000)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        for i in range(25):
            logging.getLogger("app.locked").info("record %d", i)
        deadline = time.monotonic() + 10  # the lane meets the lock, retries, and logs that it does
        while handler.batcher.stats()["sinks"]["logs"]["retries"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handler.batcher.stats()["sinks"]["logs"]["retries"] >= 2
        holder.execute("ROLLBACK")
        t0 = time.monotonic()
        handler.flush(10)
        assert time.monotonic() - t0 < 10
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        holder.close()
        handler.close(5)
        engine.dispose()
    stored = sqlite3.connect(path).execute(f"SELECT logger, count(*) FROM {unique_name} GROUP BY logger").fetchall()
    assert stored == [("app.locked", 25)]
    assert handler.skipped >= 1  # the lane's "retrying" record was seen and not stored


def test_one_refused_record_among_100_is_dead_lettered_and_99_are_stored(db, dead_letter) -> None:
    """A trigger refuses one record: the batch is split, the other 99 are stored."""
    import sqlalchemy as sa

    from timelapser_workers.sql.engine import create_sink_engine
    from timelapser_workers.sql.schema import logs_table

    engine = create_sink_engine(db.url)
    md = sa.MetaData()
    logs_table(md, db.table)
    md.create_all(engine)
    db.refuse_rows("message", "poison")
    handler = BatchingDatabaseHandler(engine, table=db.table, batch_size=100, batch_timeout=30, dead_letter=dead_letter)
    log = logging.getLogger(f"app.{db.table}")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        for i in range(100):
            log.info("poison" if i == 42 else f"record {i}")
        handler.flush(15)
    finally:
        log.removeHandler(handler)
        handler.close(5)
        engine.dispose()
    stored = sorted(m for (m,) in db.query(f"SELECT message FROM {db.table}"))
    assert stored == sorted(f"record {i}" for i in range(100) if i != 42)
    dead = dead_letter.read()
    assert [d["event"]["data"]["message"] for d in dead] == ["poison"]
    # its own error, not the batch's
    assert dead[0]["reason"] == "permanent_error" and "refused by test trigger" in dead[0]["error"]
    assert handler.sink.rows_refused == 1 and handler.sink.splits >= 1
