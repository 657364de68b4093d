"""The engine factory: how the sinks and sources make an Engine from a URL they were given.

An Engine the user gives stays the user's (never disposed by us); only engines made here from
a URL are ours to dispose.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.engine.url import URL

__all__ = [
    "create_sink_engine",
    "default_postgres_driver",
    "DEFAULT_BUSY_TIMEOUT_SECONDS",
    "DEFAULT_CONNECT_TIMEOUT_SECONDS",
]

DEFAULT_BUSY_TIMEOUT_SECONDS = 5.0
_SQLITE_REOPEN = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR")
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5


def default_postgres_driver() -> str:
    """The driver a plain ``postgresql://`` URL gets here: psycopg2 if it is installed (what
    0.1 used; SQLAlchemy 2.1 itself would pick psycopg 3), else psycopg 3 if that is, else
    psycopg2 (whose import error then names what to install)."""
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return driver
    return "psycopg2"


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
    synchronous=NORMAL (durable across a process crash; WAL keeps it consistent); a
    connection that met a read-only, missing or failing file is dropped, not reused (SQLite
    would keep it read-only after the file became writable again).
    PostgreSQL: the driver the URL names (``postgresql+psycopg2://``, ``postgresql+psycopg://``;
    a plain ``postgresql://`` gets :func:`default_postgres_driver`), pool pre-ping (a dead
    pooled connection is replaced, not handed out),
    ``connect_timeout`` seconds to connect, TCP keepalives, ``application_name`` (so an operator,
    or a test, can find the sink's backends in ``pg_stat_activity``).
    """
    u = make_url(url)
    if u.port is not None and not 0 < u.port < 65536:  # the driver would refuse it at every try
        raise ValueError(f"port {u.port} is not a TCP port (1-65535)")
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

        @sa.event.listens_for(engine, "handle_error")
        def _reopen_after(context: Any) -> None:
            # a connection opened while the file was read-only (or missing, or its disk
            # failing) stays so: drop it, so the next attempt opens the file afresh
            name = getattr(context.original_exception, "sqlite_errorname", "") or ""
            if name.startswith(_SQLITE_REOPEN):
                context.is_disconnect = True

        return engine
    if backend == "postgresql":
        if u.drivername in ("postgresql", "postgres"):
            u = u.set(drivername=f"postgresql+{default_postgres_driver()}")
        connect_args: dict[str, Any] = {}
        if u.get_driver_name() in ("psycopg2", "psycopg"):  # both take libpq's keywords
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
