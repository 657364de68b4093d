"""Sort database errors into three kinds: retry the batch, split it, or refuse it.

``TRANSIENT``: the batch may succeed later as it is (connection lost, serialization failure,
deadlock, too many connections, admin shutdown, SQLite busy). ``ROW``: some row of the batch is
at fault (integrity or data error); splitting the batch finds it. ``PERMANENT``: the batch will
never succeed, whatever its rows (programming error: missing table, bad SQL, permissions).

:func:`sink_error` turns a database error into the sink error the lanes act on: transient ->
``TransientSinkError`` (retried), anything else -> ``PermanentSinkError`` (dead letter). Row
errors are split first where the writer can (:mod:`timelapser_workers.sql.split`).
"""

from __future__ import annotations

import enum
import sqlite3
from typing import Sequence

from sqlalchemy import exc as sa_exc

from timelapser_workers.errors import PermanentSinkError, TransientSinkError
from timelapser_workers.events import Event

__all__ = ["ErrorKind", "classify_error", "UnsupportedDialectError", "short_error", "sink_error"]


class UnsupportedDialectError(ValueError):
    """A writer was given a database it cannot write to (it names the ones it can)."""


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    ROW = "row"
    PERMANENT = "permanent"


# PostgreSQL SQLSTATE classes and codes (Appendix A of its manual).
_PG_TRANSIENT_CLASSES = ("08", "53", "57", "58")  # connection, resources, operator intervention, system
_PG_TRANSIENT_CODES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available
    "55006",  # object_in_use
    "25006",  # read_only_sql_transaction (a failover to a standby)
}
_PG_ROW_CLASSES = ("22", "23")  # data exception, integrity constraint violation
_PG_ROW_CODES = {"P0001"}  # raise_exception: a user's trigger refusing a row

_SQLITE_TRANSIENT = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN", "SQLITE_PROTOCOL")
_SQLITE_ROW = ("SQLITE_CONSTRAINT", "SQLITE_MISMATCH", "SQLITE_TOOBIG", "SQLITE_RANGE")


def classify_error(error: BaseException) -> ErrorKind:
    """Return what to do about ``error`` raised while writing a batch.

    Looks through SQLAlchemy's wrapper to the driver's exception: PostgreSQL errors by their
    SQLSTATE (psycopg2's ``pgcode``, psycopg 3's ``sqlstate``), SQLite errors by their result
    code name; errors without either by the DB-API class (OperationalError/InterfaceError:
    transient; IntegrityError/DataError: row; ProgrammingError and the rest: permanent). Anything that is not a database error
    (a socket error, a timeout) is transient, except ValueError and TypeError, which drivers
    raise for a value they cannot bind: row. An UnsupportedDialectError is permanent.
    """
    if isinstance(error, UnsupportedDialectError):
        return ErrorKind.PERMANENT
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return ErrorKind.TRANSIENT
        orig: BaseException = error.orig if error.orig is not None else error
    elif isinstance(error, sa_exc.StatementError) and error.orig is not None:
        orig = error.orig  # raised while binding a row's parameters
    elif isinstance(error, sa_exc.SQLAlchemyError):
        # Pool timeouts and disconnects are transient; the rest are misuse of the API.
        if isinstance(error, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):
            return ErrorKind.TRANSIENT
        return ErrorKind.PERMANENT
    else:
        orig = error
    pgcode = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)  # psycopg2, psycopg 3
    if isinstance(pgcode, str) and len(pgcode) == 5:
        if pgcode in _PG_TRANSIENT_CODES or pgcode[:2] in _PG_TRANSIENT_CLASSES:
            return ErrorKind.TRANSIENT
        if pgcode in _PG_ROW_CODES or pgcode[:2] in _PG_ROW_CLASSES:
            return ErrorKind.ROW
        return ErrorKind.PERMANENT
    if isinstance(orig, sqlite3.Error):
        name = getattr(orig, "sqlite_errorname", "") or ""
        if name.startswith(_SQLITE_TRANSIENT):
            return ErrorKind.TRANSIENT
        if name.startswith(_SQLITE_ROW):
            return ErrorKind.ROW
        if name == "SQLITE_ERROR":  # no such table or column, SQL syntax: the batch cannot help it
            return ErrorKind.PERMANENT
        if isinstance(orig, sqlite3.OperationalError) and "locked" in str(orig):
            return ErrorKind.TRANSIENT
    return _by_dbapi_class(orig)


def _by_dbapi_class(orig: BaseException) -> ErrorKind:
    # DB-API 2 exception names are the same in every driver; match by name, not by module.
    names = {cls.__name__ for cls in type(orig).__mro__}
    if names & {"IntegrityError", "DataError"}:
        return ErrorKind.ROW
    if names & {"OperationalError", "InterfaceError"}:
        return ErrorKind.TRANSIENT
    if names & {"ProgrammingError", "NotSupportedError", "InternalError", "DatabaseError"}:
        return ErrorKind.PERMANENT
    if isinstance(orig, (ValueError, TypeError)):
        return ErrorKind.ROW  # the driver could not bind a row's value (psycopg2: a NUL character)
    return ErrorKind.TRANSIENT  # OSError, timeouts, anything outside the database


def short_error(exc: BaseException) -> str:
    """``exc`` in one line for a message: its type and the driver's first line (no SQL, no
    parameters), at most 300 characters."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def sink_error(exc: BaseException, name: str, events: Sequence[Event]) -> TransientSinkError | PermanentSinkError:
    """The sink error for ``exc``, raised by sink ``name`` writing ``events``: TransientSinkError
    if the same write may succeed later, else PermanentSinkError(events) (a row error included:
    a caller that can split the batch does so before asking)."""
    if classify_error(exc) is ErrorKind.TRANSIENT:
        return TransientSinkError(f"{name}: {short_error(exc)}")
    return PermanentSinkError(f"{name}: {short_error(exc)}", events=list(events))
