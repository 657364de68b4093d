"""The engine factory: how the sinks and sources make an Engine from a URL they were given.

An Engine the user gives stays the user's (never disposed by us); only engines made here from
a URL are ours to dispose.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.url import URL

__all__ = ["create_sink_engine", "DEFAULT_BUSY_TIMEOUT_SECONDS", "DEFAULT_CONNECT_TIMEOUT_SECONDS"]

DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5


def create_sink_engine(
    url: str | URL,
    *,
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT_SECONDS,
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT_SECONDS,
    application_name: str = "timelapser-workers",
    pool_size: int = 2,
) -> Engine:
    """Make an Engine the way DatabaseSink wants one, for a URL it was given.

    SQLite: WAL journal, ``busy_timeout`` seconds of waiting on a locked database,
    synchronous=NORMAL (durable across a process crash; WAL keeps it consistent).
    PostgreSQL: pool pre-ping (a dead pooled connection is replaced, not handed out),
    ``connect_timeout`` seconds to connect, TCP keepalives, ``application_name`` (so an operator,
    or a test, can find the sink's backends in ``pg_stat_activity``).
    """
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        engine = sa.create_engine(u, connect_args={"timeout": busy_timeout}, pool_pre_ping=True)
        busy_ms = int(busy_timeout * 1000)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            try:
                if u.database not in (None, "", ":memory:"):
                    cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA busy_timeout={busy_ms:d}")
                cur.execute("PRAGMA synchronous=NORMAL")
            finally:
                cur.close()

        return engine
    if backend == "postgresql":
        if u.drivername in ("postgresql", "postgres"):
            # A plain postgresql:// means psycopg2 here (SQLAlchemy 2.1 would pick psycopg 3).
            u = u.set(drivername="postgresql+psycopg2")
        connect_args: dict[str, Any] = {}
        if u.get_driver_name() == "psycopg2":
            connect_args = {
                "connect_timeout": connect_timeout,
                "application_name": application_name,
                "keepalives": 1,
                "keepalives_idle": 10,
                "keepalives_interval": 5,
                "keepalives_count": 3,
            }
            # Options given in the URL query win over these defaults.
            for key in list(connect_args):
                if key in u.query:
                    del connect_args[key]
        return sa.create_engine(
            u, connect_args=connect_args, pool_pre_ping=True, pool_size=pool_size, max_overflow=2
        )
    return sa.create_engine(u, pool_pre_ping=True)
