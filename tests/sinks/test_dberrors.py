"""Error classification, on errors the real drivers raise: each PostgreSQL error below is made
to happen on the test server (a duplicate key, a bad cast, a missing table, a deadlock between
two sessions, a terminated backend ...), caught as SQLAlchemy raises it, and classified both
as wrapped and as the driver's own exception. SQLite errors likewise, on a real file."""

from __future__ import annotations

import sqlite3
import threading
from typing import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from timelapser_workers.sql.errors import ErrorKind, UnsupportedDialectError, classify_error

TRANSIENT, ROW, PERMANENT = ErrorKind.TRANSIENT, ErrorKind.ROW, ErrorKind.PERMANENT


@pytest.fixture
def pg(postgres_url: str, unique_name: str) -> Iterator[tuple[Engine, str]]:
    """An engine on the test server (psycopg2, as a plain postgresql:// sink URL uses) and a
    table of this test's own: ``id`` primary key, ``v`` int, ``s`` varchar(1) not null."""
    url = sa.make_url(postgres_url).set(drivername="postgresql+psycopg2")
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5, "application_name": unique_name})
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {unique_name} (id int PRIMARY KEY, v int, s varchar(1) NOT NULL)")
        conn.exec_driver_sql(f"INSERT INTO {unique_name} VALUES (1, 0, 'a'), (2, 0, 'b')")
    yield engine, unique_name
    engine.dispose()
    with sa.create_engine(url).begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {unique_name}")
        conn.exec_driver_sql(f"DROP ROLE IF EXISTS {unique_name}")


def _caught(engine: Engine, work: Callable[[Connection], object]) -> sa.exc.DBAPIError:
    """Run ``work`` on a fresh connection and return the error SQLAlchemy raised."""
    with pytest.raises(sa.exc.DBAPIError) as info:
        with engine.connect() as conn:
            work(conn)
    return info.value


def _check(error: sa.exc.DBAPIError, kind: ErrorKind, sqlstate: str | None) -> None:
    assert getattr(error.orig, "pgcode", None) == sqlstate, (error.orig, getattr(error.orig, "pgcode", None))
    assert classify_error(error) is kind  # as the sink sees it: wrapped by SQLAlchemy
    assert error.orig is not None
    if not error.connection_invalidated:  # invalidated: SQLAlchemy's flag decides, not the driver's
        assert classify_error(error.orig) is kind  # the driver's own exception


# (what happens, SQLSTATE, kind): statements run on one connection
STATEMENTS = [
    ("unique_violation", "INSERT INTO {t} VALUES (1, 0, 'c')", "23505", ROW),
    ("not_null_violation", "INSERT INTO {t} VALUES (3, 0, NULL)", "23502", ROW),
    ("invalid_text_representation", "SELECT 'seven'::int", "22P02", ROW),
    ("string_data_right_truncation", "INSERT INTO {t} VALUES (3, 0, 'too long')", "22001", ROW),
    ("raise_exception (a trigger refusing a row)", "DO $$ BEGIN RAISE EXCEPTION 'refused'; END $$", "P0001", ROW),
    ("undefined_table", "SELECT * FROM {t}_missing", "42P01", PERMANENT),
    ("undefined_column", "SELECT nope FROM {t}", "42703", PERMANENT),
    ("syntax_error", "SELEC 1", "42601", PERMANENT),
    ("read_only_sql_transaction", "SET TRANSACTION READ ONLY; INSERT INTO {t} VALUES (3, 0, 'c')", "25006", TRANSIENT),
    ("query_canceled (statement_timeout)", "SET statement_timeout = '50ms'; SELECT pg_sleep(5)", "57014", TRANSIENT),
]


@pytest.mark.postgres
@pytest.mark.parametrize("what, sql, sqlstate, kind", STATEMENTS, ids=[s[0] for s in STATEMENTS])
def test_real_postgresql_errors(pg: tuple[Engine, str], what: str, sql: str, sqlstate: str, kind: ErrorKind) -> None:
    engine, table = pg
    error = _caught(engine, lambda conn: conn.exec_driver_sql(sql.format(t=table)))
    _check(error, kind, sqlstate)


@pytest.mark.postgres
def test_a_nul_character_the_driver_cannot_send_is_a_row_error(pg: tuple[Engine, str]) -> None:
    engine, table = pg
    with pytest.raises(ValueError) as info:  # psycopg2 refuses before the server sees it
        with engine.connect() as conn:
            conn.exec_driver_sql(f"INSERT INTO {table} VALUES (3, 0, %s)", ("\x00",))
    assert "NUL" in str(info.value) and classify_error(info.value) is ROW


@pytest.mark.postgres
def test_insufficient_privilege_is_permanent(pg: tuple[Engine, str]) -> None:
    engine, table = pg
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {table} NOLOGIN")

    def as_role_without_rights(conn: Connection) -> None:
        conn.exec_driver_sql(f"SET ROLE {table}")
        conn.exec_driver_sql(f"INSERT INTO {table} VALUES (3, 0, 'c')")

    _check(_caught(engine, as_role_without_rights), PERMANENT, "42501")


@pytest.mark.postgres
def test_serialization_failure_is_transient(pg: tuple[Engine, str]) -> None:
    engine, table = pg
    with engine.connect() as first, engine.connect() as second:
        first.exec_driver_sql("BEGIN ISOLATION LEVEL REPEATABLE READ")
        first.exec_driver_sql(f"SELECT v FROM {table} WHERE id = 1").all()  # the snapshot is taken
        second.exec_driver_sql(f"UPDATE {table} SET v = 2 WHERE id = 1")
        second.commit()
        with pytest.raises(sa.exc.DBAPIError) as info:
            first.exec_driver_sql(f"UPDATE {table} SET v = 3 WHERE id = 1")
        first.rollback()
    _check(info.value, TRANSIENT, "40001")


@pytest.mark.postgres
def test_deadlock_between_two_sessions_is_transient(pg: tuple[Engine, str]) -> None:
    engine, table = pg
    errors: list[BaseException] = []
    with engine.connect() as first, engine.connect() as second:
        first.exec_driver_sql("SET deadlock_timeout = '10s'")  # so the second session detects it
        second.exec_driver_sql("SET deadlock_timeout = '20ms'")
        first.exec_driver_sql(f"UPDATE {table} SET v = 1 WHERE id = 1")
        second.exec_driver_sql(f"UPDATE {table} SET v = 1 WHERE id = 2")

        def first_waits_for_row_2() -> None:
            try:
                first.exec_driver_sql(f"UPDATE {table} SET v = 1 WHERE id = 2")
            except BaseException as exc:  # not expected: the second session is the victim
                errors.append(exc)

        waiter = threading.Thread(target=first_waits_for_row_2)
        waiter.start()
        with engine.connect() as observer:  # until the first session waits on the lock
            for _ in range(500):
                waiting = observer.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s", (f"UPDATE {table}%",)).scalar()
                if waiting:
                    break
                threading.Event().wait(0.01)
        with pytest.raises(sa.exc.DBAPIError) as info:
            second.exec_driver_sql(f"UPDATE {table} SET v = 1 WHERE id = 1")
        second.rollback()  # the victim's locks go: the first session goes on
        waiter.join(10)
        first.rollback()
    assert not waiter.is_alive() and errors == []
    _check(info.value, TRANSIENT, "40P01")


@pytest.mark.postgres
def test_lock_not_available_is_transient(pg: tuple[Engine, str]) -> None:
    engine, table = pg
    with engine.connect() as holder:
        holder.exec_driver_sql(f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE")
        error = _caught(engine, lambda conn: conn.exec_driver_sql(
            f"SELECT * FROM {table} WHERE id = 1 FOR UPDATE NOWAIT"))
        holder.rollback()
    _check(error, TRANSIENT, "55P03")


@pytest.mark.postgres
def test_a_terminated_backend_admin_shutdown_is_transient(pg: tuple[Engine, str]) -> None:
    """pg_terminate_backend ends the session with 57P01; psycopg2 reports the closed connection
    without the SQLSTATE, and SQLAlchemy marks the connection invalidated: transient either way."""
    engine, table = pg
    with engine.connect() as victim, engine.connect() as admin:
        pid = victim.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        victim.commit()
        assert admin.exec_driver_sql("SELECT pg_terminate_backend(%s)", (pid,)).scalar() is True
        admin.commit()
        with pytest.raises(sa.exc.DBAPIError) as info:
            for _ in range(100):  # until the backend is gone (termination is asynchronous)
                victim.exec_driver_sql("SELECT 1")
                victim.commit()
                threading.Event().wait(0.02)
    assert info.value.connection_invalidated
    _check(info.value, TRANSIENT, None)
    assert info.value.orig is not None and classify_error(info.value.orig) is TRANSIENT  # by its class alone


@pytest.mark.postgres
def test_too_many_connections_is_transient(pg: tuple[Engine, str], postgres_url: str) -> None:
    """A role allowed no connections meets 53300 at connect (a FATAL: no SQLSTATE from libpq)."""
    engine, table = pg
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {table} LOGIN CONNECTION LIMIT 0")
    error = _connect_error(sa.make_url(postgres_url).set(drivername="postgresql+psycopg2", username=table))
    assert "too many connections" in str(error)
    _check(error, TRANSIENT, None)


def test_a_refused_connection_is_transient(unused_port: int) -> None:
    error = _connect_error(sa.make_url(f"postgresql+psycopg2://postgres@127.0.0.1:{unused_port}/test"))
    assert "refused" in str(error)
    _check(error, TRANSIENT, None)


def _connect_error(url: sa.URL) -> sa.exc.DBAPIError:
    """The error SQLAlchemy raises when connecting to ``url`` fails."""
    engine = sa.create_engine(url, connect_args={"connect_timeout": 5})
    try:
        return _caught(engine, lambda conn: None)
    finally:
        engine.dispose()


@pytest.fixture
def unused_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_real_sqlite_errors(tmp_path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", timeout=0)
    conn.execute("CREATE TABLE t (k TEXT UNIQUE NOT NULL)")
    conn.execute("INSERT INTO t VALUES ('a')")
    conn.commit()
    with pytest.raises(sqlite3.IntegrityError) as integrity:
        conn.execute("INSERT INTO t VALUES ('a')")
    assert classify_error(integrity.value) is ErrorKind.ROW
    with pytest.raises(sqlite3.OperationalError) as missing:
        conn.execute("SELECT * FROM nope")
    assert classify_error(missing.value) is ErrorKind.PERMANENT
    conn.rollback()
    other = sqlite3.connect(tmp_path / "x.db", timeout=0, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError) as locked:
        conn.execute("INSERT INTO t VALUES ('b')")
    assert classify_error(locked.value) is ErrorKind.TRANSIENT
    other.execute("ROLLBACK")


def test_a_wrapped_invalidated_connection_is_transient() -> None:
    err = sa.exc.DBAPIError("stmt", None, ValueError("x"), connection_invalidated=True)
    assert classify_error(err) is ErrorKind.TRANSIENT


def test_errors_outside_the_database_are_transient() -> None:
    assert classify_error(ConnectionResetError()) is ErrorKind.TRANSIENT
    assert classify_error(sa.exc.TimeoutError()) is ErrorKind.TRANSIENT


def test_an_unsupported_database_is_permanent() -> None:
    """A ValueError, yet not a row's fault: no row of the batch would ever be written."""
    assert classify_error(UnsupportedDialectError("DatabaseSink supports sqlite and postgresql, not 'mysql'")) is ErrorKind.PERMANENT
