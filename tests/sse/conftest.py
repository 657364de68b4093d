"""Shared helpers for the SSE tests: real servers (wsgiref threads, uvicorn) on 127.0.0.1 and a
small SSE client over http.client that records every event, comment and control message."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterator

import pytest

from timelapser_workers.sinks.sse import SSEHub
from timelapser_workers.sinks.sse.asgi import SSEAsgiApp
from timelapser_workers.sinks.sse.wsgi import ServerThread, SSEWsgiApp, make_server
from tests.conftest import _unreachable
from timelapser_workers.events import Event, make_event


def wait_until(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it is truthy; fail naming ``what`` after ``timeout`` seconds (a
    callable ``what`` is asked then, so the message can carry what a server printed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what() if callable(what) else what}")
        time.sleep(interval)


class SSEMessage(dict):
    """One dispatched SSE message: keys id, event, data (text) and json (parsed data)."""


class SSETestClient:
    """Connects to ``url`` + ``path`` and parses the stream on its own thread, as a browser would.

    Anything that goes wrong while reading (a malformed frame, a broken connection) is recorded
    in ``error`` and raised again by every method a test calls afterwards: a stream that broke
    can never pass for one where nothing more arrived. Ending cleanly (EOF) is not an error;
    :meth:`close` by the test is not either.
    """

    def __init__(self, port: int, path: str = "/events", headers: dict[str, str] | None = None, timeout: float = 20.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", path, headers=headers or {})
        self.sock = self.conn.sock  # getresponse() hands the socket to the response for HTTP/1.0
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}
        self.messages: list[SSEMessage] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self.ended = threading.Event()
        self.error: BaseException | None = None
        self._closing = False
        self._cond = threading.Condition()
        if self.status == 200:
            self.thread = threading.Thread(target=self._read, daemon=True)
            self.thread.start()
        else:
            self.body = self.response.read().decode("utf-8")
            self.conn.close()
            self.ended.set()

    def _read(self) -> None:
        fields: dict[str, str] = {}
        data: list[str] = []
        try:
            while True:
                raw = self.response.readline()
                if not raw:
                    break
                line = raw.decode("utf-8").rstrip("\n").rstrip("\r")
                if line == "":
                    if data:
                        msg = SSEMessage(id=fields.get("id"), event=fields.get("event", "message"), data="\n".join(data))
                        try:
                            msg["json"] = json.loads(msg["data"])
                        except ValueError as exc:
                            raise AssertionError(f"malformed SSE data {msg['data']!r}: {exc}") from exc
                        msg["t"] = time.monotonic()
                        with self._cond:
                            self.messages.append(msg)
                            self._cond.notify_all()
                    fields, data = {}, []
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if name == "data":
                        data.append(value)
                    elif name == "retry":
                        self.retry = int(value)
                    elif name in ("id", "event"):
                        fields[name] = value
                    else:
                        raise AssertionError(f"unknown SSE field in line {line!r}")
        except BaseException as exc:
            if not self._closing:  # closed under us by close(): not the stream's fault
                self.error = exc
        else:  # the server ended the stream: let the connection go, as a browser may
            self.response.close()
            self.conn.close()
        finally:
            self.ended.set()
            with self._cond:
                self._cond.notify_all()

    def check(self) -> None:
        """Raise what went wrong while reading, if anything did."""
        if self.error is not None:
            raise AssertionError(f"the SSE reader failed: {self.error!r}") from self.error

    def assert_alive(self) -> None:
        """The stream is still open and nothing went wrong reading it."""
        self.check()
        assert not self.ended.is_set(), "the stream ended"

    def events(self) -> list[SSEMessage]:
        """Real events (those with an id)."""
        self.check()
        with self._cond:
            return [m for m in self.messages if m["id"] is not None]

    def ids(self) -> list[str]:
        return [m["id"] for m in self.events()]

    def until(self, marker_id: str, timeout: float = 10.0) -> list[SSEMessage]:
        """Wait for the event ``marker_id`` (published after everything a test expects) and
        return the real events before it: "nothing more arrived" as a positive check."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(m["id"] == marker_id for m in self.messages):
                left = deadline - time.monotonic()
                self.check()
                assert left > 0 and not self.ended.is_set(), (
                    f"marker {marker_id} did not arrive; ended={self.ended.is_set()}, got {len(self.messages)} messages")
                self._cond.wait(min(left, 0.5))
        self.assert_alive()
        events = self.events()
        return events[: [m["id"] for m in events].index(marker_id)]

    def wait_comments(self, text: str, more: int, timeout: float = 10.0) -> None:
        """Wait for ``more`` further comment lines ``text`` (e.g. keep-alives: time has passed
        on a live stream, and everything the server wrote before them has been read)."""
        target = self.comments.count(text) + more
        wait_until(lambda: self.check() or self.comments.count(text) >= target, timeout, f"{more} more {text!r} comments")
        self.assert_alive()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[SSEMessage]:
        """Wait until ``count`` real events arrived; fail with what did arrive otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([m for m in self.messages if m["id"] is not None]) < count:
                left = deadline - time.monotonic()
                if left <= 0 or (self.ended.is_set()):
                    break
                self._cond.wait(min(left, 0.5))
        events = self.events()
        assert len(events) >= count, f"got {len(events)} of {count} events; ended={self.ended.is_set()}"
        return events

    def close(self) -> None:
        self._closing = not self.ended.is_set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ended.wait(2.0)
        self.response.close()  # the response's file holds the socket open until it closes too
        self.conn.close()
        self.check()


class Served:
    """A hub served over real HTTP on 127.0.0.1 by one of the apps."""

    def __init__(self, kind: str, hub: SSEHub, **options: Any) -> None:
        self.kind = kind
        self.hub = hub
        self.clients: list[SSETestClient] = []
        if kind == "wsgi":
            self.server = ServerThread(make_server(SSEWsgiApp(hub, **options), write_timeout_seconds=3.0)).start()
            self.port = self.server.server.server_address[1]
        else:
            import uvicorn

            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            config = uvicorn.Config(
                SSEAsgiApp(hub, **options), log_level="warning", lifespan="on",
                timeout_graceful_shutdown=2, backlog=512,
            )
            self.server = uvicorn.Server(config)
            self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
            self.thread.start()
            wait_until(lambda: self.server.started, 10, "uvicorn to start")

    def connect(self, path: str = "/events", headers: dict[str, str] | None = None, **kw: Any) -> SSETestClient:
        client = SSETestClient(self.port, path, headers, **kw)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        self.hub.close()
        for client in self.clients:
            client.close()
        if self.kind == "wsgi":
            self.server.stop()
        else:
            self.server.should_exit = True
            self.thread.join(10)


@pytest.fixture(params=["wsgi", "asgi"])
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[..., Served]]:
    """serve(hub=None, **endpoint_options) -> Served, for each app kind; stopped afterwards."""
    started: list[Served] = []

    def start(hub: SSEHub | None = None, **options: Any) -> Served:
        options.setdefault("keepalive_seconds", 0.5)
        options.setdefault("retry_milliseconds", 100)
        served = Served(request.param, hub or SSEHub(), **options)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def events(n: int, *, worker: str = "w1", source: str | None = "test", type: str = "JOB_COMPLETED", **data: Any) -> list[Event]:
    """``n`` fresh events with data {"i": k, **data}."""
    return [make_event(type, {"i": k, **data}, worker=worker, source=source) for k in range(n)]


def marker(*, worker: str = "w1", source: str | None = "test", type: str = "MARKER") -> Event:
    """An event published after the ones a test expects; see :meth:`SSETestClient.until`."""
    return make_event(type, {"marker": True}, worker=worker, source=source)


# --- databases -------------------------------------------------------------------------------
PG_URL = os.environ.get("TIMELAPSER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

def create_events_table(engine: Any, name: str) -> None:
    """Create the events table ``name`` exactly as DatabaseSink defines it."""
    import sqlalchemy as sa

    from timelapser_workers.sql.schema import events_table

    events_table(sa.MetaData(), name).create(engine)


def insert_sql(table: str) -> str:
    return (
        f"INSERT INTO {table} (event_id, type, data, priority, source, worker, created_at, batch_count) "
        "VALUES (:event_id, :type, :data, :priority, :source, :worker, :created_at, :batch_count)"
    )


def row_params(event: Event) -> dict[str, Any]:
    """Plain-INSERT parameters for ``event``, as the DatabaseSink stores it."""
    return {
        "event_id": event.id,
        "type": event.type,
        "data": json.dumps(event.data),
        "priority": event.priority.name,
        "source": event.source,
        "worker": event.worker,
        "created_at": event.created_datetime,
        "batch_count": event.batch_count,
    }


def write_rows(conn: Any, table: str, batch: list[Event], notify: str | None = "timelapser_events") -> None:
    """INSERT ``batch`` on an SQLAlchemy connection (and NOTIFY on PostgreSQL); caller commits."""
    import sqlalchemy as sa

    conn.execute(sa.text(insert_sql(table)), [row_params(e) for e in batch])
    if notify and conn.dialect.name == "postgresql":
        conn.execute(sa.text(f"NOTIFY {notify}"))


@pytest.fixture
def pg_engine() -> Iterator[Any]:
    """An Engine on the test PostgreSQL server; skip (or fail under CI) when unreachable."""
    import sqlalchemy as sa

    from timelapser_workers.sql.engine import create_sink_engine

    engine = create_sink_engine(PG_URL)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        engine.dispose()
        _unreachable(f"{PG_URL}: {str(exc).splitlines()[0]}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_table(pg_engine: Any) -> Iterator[str]:
    """A fresh, uniquely named events table on PostgreSQL, dropped afterwards."""
    import sqlalchemy as sa

    name = f"sse_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    create_events_table(pg_engine, name)
    yield name
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[tuple[Any, str]]:
    """An Engine on a fresh SQLite file with the events table, and the table's name."""
    import sqlalchemy as sa

    from timelapser_workers.sql.engine import create_sink_engine

    engine = create_sink_engine(f"sqlite:///{tmp_path / 'events.db'}")
    create_events_table(engine, "sse_events")
    yield engine, "sse_events"
    engine.dispose()
