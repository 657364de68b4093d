"""Django: a real project (tests/integrations/django_project, copied into tmp_path) writes
events through its own DATABASES setting and streams them, served by a real server: under WSGI
with sse_view against SQLite, under ASGI (uvicorn) with route_asgi against PostgreSQL.
Plus database_url for each database Django can name."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from timelapser_workers.integrations.django import database_url, route_asgi

PROJECT = Path(__file__).resolve().parent / "django_project"
ROOT = Path(__file__).resolve().parents[2]


class Site:
    """The project served in a subprocess."""

    def __init__(self, tmp_path: Path, kind: str, db: str, table: str) -> None:
        shutil.copytree(PROJECT, tmp_path / "project")
        env = {**os.environ, "EVENTS_DB": db, "EVENTS_TABLE": table, "PYTHONDONTWRITEBYTECODE": "1",
               "DJANGO_SETTINGS_MODULE": "site_events.settings"}
        self.proc = subprocess.Popen([sys.executable, "serve.py", kind], cwd=tmp_path / "project", env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("serving "):
            self.stop()
            pytest.fail(f"the Django project did not start: {line!r} {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = line.split()[1]

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def stored(self, want: int, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get("/stored")
            if body["stored"] >= want or time.monotonic() > deadline:
                return body
            time.sleep(0.05)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stderr.read() if self.proc.stderr else ""


def _read_events(stream, count: int) -> list[dict]:
    """``count`` event messages (their data as JSON) from an open SSE response."""
    got = []
    while len(got) < count:
        line = stream.readline()
        assert line, "the stream ended early"
        if line.startswith(b"data: "):
            got.append(json.loads(line[len(b"data: "):]))
    return got


def _stream_jobs_and_count(site: Site) -> dict:
    with urllib.request.urlopen(site.url + "/events?worker=camera-1", timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert site.get("/jobs/3") == {"emitted": 3}
        [event] = _read_events(stream, 1)  # one flush: three JOB_STARTED aggregated
    assert event["type"] == "JOBS_BATCH_STARTED" and event["data"]["job_ids"] == [0, 1, 2]
    assert event["worker"] == "camera-1"
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(site.url + "/events?colour=red", timeout=10)
    assert bad.value.code == 400 and "colour" in bad.value.read().decode()
    return site.stored(3)


def test_wsgi_view_streams_and_the_sink_writes_to_djangos_sqlite(tmp_path: Path, unique_name: str) -> None:
    db = tmp_path / "django.sqlite3"
    site = Site(tmp_path, "wsgi", f"sqlite:{db}", unique_name)
    try:
        body = _stream_jobs_and_count(site)
    finally:
        err = site.stop()
    assert body == {"stored": 3, "vendor": "sqlite"}, err
    rows = sqlite3.connect(db).execute(f"SELECT type, batch_count FROM {unique_name}").fetchall()
    assert rows == [("JOBS_BATCH_STARTED", 3)]


@pytest.mark.postgres
def test_asgi_route_streams_and_the_sink_writes_to_djangos_postgresql(tmp_path: Path, unique_name: str,
                                                                      postgres_url: str, pg_conn) -> None:
    site = Site(tmp_path, "asgi", postgres_url, unique_name)
    try:
        body = _stream_jobs_and_count(site)
        with pg_conn.cursor() as cur:  # the sink's connections are Django's database's
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (unique_name,))
            assert cur.fetchone()[0] >= 1
    finally:
        err = site.stop()
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")
    assert body == {"stored": 3, "vendor": "postgresql"}, err


def test_the_view_under_asgi_says_to_use_route_asgi(tmp_path: Path, unique_name: str) -> None:
    """Django reads a synchronous stream to its end under ASGI: the view refuses, naming the fix.
    (/events is routed past Django; the project also mounts the view at /view-events.)"""
    site = Site(tmp_path, "asgi", f"sqlite:{tmp_path / 'db.sqlite3'}", unique_name)
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(site.url + "/view-events", timeout=10)
        assert refused.value.code == 500
    finally:
        err = site.stop()
    assert "sse_view streams under WSGI only" in err and "route_asgi(get_asgi_application()" in err


# --- database_url ---------------------------------------------------------------------------------
def test_database_url_for_sqlite_and_postgresql() -> None:
    databases = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/app/db.sqlite3"},
        "events": {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "USER": "writer",
                   "PASSWORD": "p@ss:w/rd", "HOST": "db.internal", "PORT": "6432",
                   "OPTIONS": {"sslmode": "require", "isolation_level": 1, "pool": True}},
    }
    sqlite_url = database_url(databases=databases)
    assert sqlite_url.drivername == "sqlite" and sqlite_url.database == "/srv/app/db.sqlite3"
    pg = database_url("events", databases=databases)
    assert pg.drivername == "postgresql+psycopg"  # Django itself uses psycopg 3 when installed
    assert (pg.username, pg.password, pg.host, pg.port, pg.database) == ("writer", "p@ss:w/rd", "db.internal", 6432, "app")
    assert dict(pg.query) == {"sslmode": "require"}  # Django's own OPTIONS are not libpq's
    assert "p@ss" not in str(pg)


@pytest.mark.parametrize("databases, alias, message", [
    ({"default": {"ENGINE": "django.db.backends.mysql", "NAME": "x"}}, "default",
     r"ENGINE'\] is 'django.db.backends.mysql'; timelapser-workers writes to SQLite and PostgreSQL"),
    ({"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}, "default",
     r"in-memory SQLite database \(':memory:'\).*give NAME a file path"),
    ({"default": {}}, "events", r"settings.DATABASES has no 'events' database \(it has \['default'\]\)"),
])
def test_database_url_refuses_what_it_cannot_write_to(databases, alias, message) -> None:
    with pytest.raises(ValueError, match=message):
        database_url(alias, databases=databases)


@pytest.mark.parametrize("prefix", ["events", "/events/", "/"])
def test_route_asgi_refuses_a_bad_prefix(prefix: str) -> None:
    async def app(scope, receive, send):  # pragma: no cover - never called
        pass

    with pytest.raises(ValueError, match=f"route {prefix!r} must start with '/'"):
        route_asgi(app, {prefix: app})
