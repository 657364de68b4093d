"""DatabaseEventSource on a user's psycopg 3 Engine: it LISTENs through psycopg 3's notifies
(no fallback to polling). The PostgreSQL behaviour tests of test_db_source run again here with
`pg_engine` on psycopg 3: a NOTIFY wakes the source, out-of-order commits are not skipped, a
lost listener reconnects and catches up."""

from __future__ import annotations

from typing import Iterator

import pytest
import sqlalchemy as sa

from tests.sse.conftest import wait_until
from tests.sse.test_db_source import (  # noqa: F401  (served_hub: a fixture those tests use)
    served_hub,
    test_postgres_lost_listener_reconnects_and_catches_up,
    test_postgres_notify_wakes_and_out_of_order_commit_is_not_skipped,
)
from timelapser_workers.sinks.sse import SSEHub
from timelapser_workers.sources.database import DatabaseEventSource


@pytest.fixture
def pg_engine(pg_engine: sa.engine.Engine) -> Iterator[sa.engine.Engine]:
    """The user's own Engine on psycopg 3 (what SQLAlchemy 2.1 makes of a plain URL), on the
    server of the shared fixture (which skips, or fails under CI, when it is unreachable)."""
    engine = sa.create_engine(pg_engine.url.set(drivername="postgresql+psycopg"))
    assert engine.dialect.driver == "psycopg"
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_the_source_listens_through_psycopg3(pg_engine, pg_table, caplog):
    source = DatabaseEventSource(pg_engine, SSEHub(), table=pg_table, channel=pg_table, poll_interval_seconds=30)
    assert source.listen, "psycopg 3 listens; it does not fall back to polling"
    source.start()
    try:
        wait_until(lambda: source.stats()["listening"], 5, "the LISTEN connection")
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f"NOTIFY {pg_table}"))
        wait_until(lambda: source.stats()["notifications"] >= 1, 5, "the NOTIFY to be counted")
    finally:
        source.stop()
    assert "polling" not in caplog.text
