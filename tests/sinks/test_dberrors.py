"""Error classification, on errors the real drivers raise."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from timelapser_workers.sql.errors import ErrorKind, UnsupportedDialectError, classify_error


class FakePgError(Exception):
    """Only a carrier for a SQLSTATE (psycopg2's errors cannot be built without a server)."""

    def __init__(self, pgcode: str) -> None:
        super().__init__(pgcode)
        self.pgcode = pgcode


@pytest.mark.parametrize(
    "code, kind",
    [
        ("08006", ErrorKind.TRANSIENT),  # connection_failure
        ("40001", ErrorKind.TRANSIENT),  # serialization_failure
        ("40P01", ErrorKind.TRANSIENT),  # deadlock_detected
        ("53300", ErrorKind.TRANSIENT),  # too_many_connections
        ("57P01", ErrorKind.TRANSIENT),  # admin_shutdown
        ("23505", ErrorKind.ROW),  # unique_violation
        ("22P02", ErrorKind.ROW),  # invalid_text_representation
        ("P0001", ErrorKind.ROW),  # raise_exception in a trigger
        ("42P01", ErrorKind.PERMANENT),  # undefined_table
        ("42601", ErrorKind.PERMANENT),  # syntax_error
    ],
)
def test_postgres_sqlstates(code: str, kind: ErrorKind) -> None:
    assert classify_error(FakePgError(code)) is kind
    wrapped = sa.exc.DBAPIError("stmt", None, FakePgError(code))
    assert classify_error(wrapped) is kind


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


def test_a_value_the_driver_cannot_bind_is_a_row_error() -> None:
    assert classify_error(ValueError("A string literal cannot contain NUL (0x00) characters.")) is ErrorKind.ROW


def test_an_unsupported_database_is_permanent() -> None:
    """A ValueError, yet not a row's fault: no row of the batch would ever be written."""
    assert classify_error(UnsupportedDialectError("DatabaseSink supports sqlite and postgresql, not 'mysql'")) is ErrorKind.PERMANENT
