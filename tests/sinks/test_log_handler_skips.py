"""BatchingDatabaseHandler does not store records of SQLAlchemy or of this library (the README:
"so its own flushing cannot recurse"), whatever thread logs them: here the application's own
engine logs every statement through ``sqlalchemy.engine`` on the main thread, beside the
application's records, with the handler on the root logger."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from timelapser_workers.integrations.log_handler import BatchingDatabaseHandler


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.name)


def test_sqlalchemy_and_library_records_are_skipped_not_stored(tmp_path: Path) -> None:
    handler = BatchingDatabaseHandler(f"sqlite:///{tmp_path / 'logs.db'}", batch_size=10,
                                      batch_timeout=0.05, dead_letter=tmp_path / "dead.jsonl")
    counter = _Counter()
    root, engine_logger = logging.getLogger(), logging.getLogger("sqlalchemy.engine")
    levels = root.level, engine_logger.level
    root.setLevel(logging.DEBUG)
    engine_logger.setLevel(logging.INFO)  # what create_engine(echo=True) does: every statement
    root.addHandler(handler)
    root.addHandler(counter)
    app_engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    try:
        for n in range(30):
            logging.getLogger("app.capture").info("frame %d", n)
            with app_engine.begin() as conn:  # the application's own queries, logged on this thread
                conn.exec_driver_sql("SELECT 1")
        logging.getLogger("timelapser_workers.example").warning("the library speaking")
        handler.flush(10)
    finally:
        root.removeHandler(handler)
        root.removeHandler(counter)
        root.setLevel(levels[0])
        engine_logger.setLevel(levels[1])
        app_engine.dispose()
        handler.close(5)
    from_main = [n for n in counter.names if n.startswith(("sqlalchemy", "timelapser_workers"))]
    assert sum(n.startswith("sqlalchemy.engine") for n in from_main) >= 30 * 2  # BEGIN, SELECT, COMMIT ...
    stored = sqlite3.connect(tmp_path / "logs.db").execute(
        "SELECT logger, count(*) FROM logs GROUP BY logger").fetchall()
    assert stored == [("app.capture", 30)]
    assert handler.skipped >= len(from_main)
    assert handler.submitted == 30 and handler.dropped == 0
    assert not (tmp_path / "dead.jsonl").exists()
