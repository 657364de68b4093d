"""psycopg 3 as a first-class driver: chosen by the URL, by the user's own Engine, or when it
is the only driver installed; COPY through cursor.copy(); its errors sorted by SQLSTATE like
psycopg2's. (Every behaviour test of the `db` fixture also runs through psycopg 3.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from timelapser_workers.errors import TransientSinkError
from timelapser_workers.events import make_event
from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sql.writers import CopyWriter, PsycopgCopyWriter

pytestmark = pytest.mark.postgres


def _driver_url(url: str, driver: str) -> str:
    return "postgresql+" + driver + "://" + url.split("://", 1)[1]


def test_the_url_names_the_driver(pg_db) -> None:
    sink = DatabaseSink(_driver_url(pg_db.dsn, "psycopg"), table=pg_db.table)
    assert sink.engine.dialect.driver == "psycopg"
    assert type(sink.writer) is PsycopgCopyWriter and sink.use_copy
    events = [make_event("JOB_STARTED", {"job_id": i, "note": "tab\there\nnewline ünï"}) for i in range(50)]
    sink.send(events)
    assert pg_db.event_ids() == [e.id for e in events]
    assert pg_db.rows()[0]["data"] == events[0].data
    sink.close()
    psycopg2_sink = DatabaseSink(_driver_url(pg_db.dsn, "psycopg2"), table=pg_db.table)
    assert type(psycopg2_sink.writer) is CopyWriter
    psycopg2_sink.close()


def test_a_users_engine_on_psycopg3_gets_copy_and_stays_theirs(pg_db) -> None:
    engine = sa.create_engine(pg_db.dsn)  # SQLAlchemy 2.1: a plain postgresql:// is psycopg 3
    assert engine.dialect.driver == "psycopg"
    sink = DatabaseSink(engine, table=pg_db.table)
    assert type(sink.writer) is PsycopgCopyWriter
    sink.send([make_event("JOB_STARTED", {"job_id": 1})])
    sink.close()
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT count(*) FROM {pg_db.table}")).scalar() == 1
    engine.dispose()


def test_with_only_psycopg3_installed_a_plain_url_uses_it(pg_db, tmp_path) -> None:
    """A project that installed psycopg 3 alone (psycopg2 made unimportable in the child)."""
    program = textwrap.dedent(f"""
        import sys
        sys.modules["psycopg2"] = None  # as if not installed
        from timelapser_workers.events import make_event
        from timelapser_workers.sinks.database import DatabaseSink
        sink = DatabaseSink({pg_db.dsn!r}, table={pg_db.table!r})
        sink.send([make_event("JOB_STARTED", {{"job_id": 1}})])
        print(sink.engine.dialect.driver, type(sink.writer).__name__)
        sink.close()
    """)
    proc = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["psycopg", "PsycopgCopyWriter"]
    assert len(pg_db.event_ids()) == 1


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_a_read_only_server_is_transient_through_either_driver(pg_db, driver: str) -> None:
    """SQLSTATE 25006 (a failover to a standby) is retried, not dead-lettered: psycopg 3's
    error carries it as ``sqlstate`` (its class alone, InternalError, would say permanent)."""
    DatabaseSink(pg_db.dsn, table=pg_db.table).ensure_table()
    url = _driver_url(pg_db.dsn, driver) + "?options=-c%20default_transaction_read_only%3Don"
    sink = DatabaseSink(url, table=pg_db.table, create_table=False)
    assert sink.engine.dialect.driver == driver
    with pytest.raises(TransientSinkError, match="read-only transaction"):
        sink.send([make_event("JOB_STARTED")])
    assert pg_db.event_ids() == []
    sink.close()
