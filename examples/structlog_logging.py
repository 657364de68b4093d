"""structlog into a database table, context kept as JSON: BatchingDatabaseHandler + structlog.

    .venv/bin/python examples/structlog_logging.py [--db postgresql://app@127.0.0.1/app]

structlog renders through the standard library (``render_to_log_kwargs``), so its bound
context arrives as the record's extra fields; context bound with ``bind_contextvars`` reaches
plain ``logging`` calls too. Each record becomes one row with its own time and level, and its
context in the JSON column ``extra`` (JSONB on PostgreSQL: ``WHERE extra->>'camera' = 'cam3'``).
Records are written in batches by the handler's own thread; the program never waits on the
database.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import uuid
from pathlib import Path

import sqlalchemy as sa
import structlog

from timelapser_workers.integrations.log_handler import BatchingDatabaseHandler
from timelapser_workers.sql.engine import create_sink_engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temporary directory)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.db or f"sqlite:///{Path(tmp) / 'logs.db'}"
        table = f"example_logs_{uuid.uuid4().hex[:8]}"
        handler = BatchingDatabaseHandler(url, table=table, batch_timeout=0.2,
                                          dead_letter=Path(tmp) / "dead-letter.jsonl")
        logging.basicConfig(level=logging.INFO, handlers=[handler])
        structlog.configure(
            processors=[structlog.contextvars.merge_contextvars, structlog.stdlib.render_to_log_kwargs],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.stdlib.BoundLogger,
        )
        log = structlog.get_logger("timelapse.capture")

        structlog.contextvars.bind_contextvars(run_id="run-2026-11-28")  # every record below
        for job_id, camera in enumerate(["cam1", "cam3", "cam3"], start=1):
            log.bind(job_id=job_id, camera=camera).info("frame captured", bytes=48_000 + job_id)
        logging.getLogger("timelapse.cleanup").warning("disk 91% full")  # plain logging: run_id too
        structlog.contextvars.clear_contextvars()

        handler.close(5)  # delivers what is queued, within 5 s
        engine = create_sink_engine(url)  # the driver the handler used (psycopg2 if installed)
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT created_at, level, logger, message, extra FROM {table} ORDER BY id")).all()
            if engine.dialect.name == "postgresql":
                cam3 = conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE extra->>'camera' = 'cam3'")).scalar()
                conn.execute(sa.text(f"DROP TABLE {table}"))
                conn.commit()
            else:
                cam3 = conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE json_extract(extra, '$.camera') = 'cam3'")).scalar()
        engine.dispose()
    for created_at, level, logger, message, extra in rows:
        extra = json.loads(extra) if isinstance(extra, str) else extra
        print(f"{str(created_at)[:23]}  {level:<7} {logger:<18} {message:<16} {json.dumps(extra, sort_keys=True)}")
    print(f"{len(rows)} records stored, {cam3} from cam3")
    return 0 if len(rows) == 4 and cam3 == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
