"""Django: write events with the project's own database settings, and serve the SSE stream
from a Django project (a view under WSGI, a route beside Django's app under ASGI).

::

    # yourproject/events.py: one batcher per process
    from timelapser_workers import EventBatcher
    from timelapser_workers.integrations.django import database_url
    from timelapser_workers.sinks import DatabaseSink
    from timelapser_workers.sinks.sse import SSESink

    sse = SSESink()
    batcher = EventBatcher([DatabaseSink(database_url("default")), sse])

    # urls.py, under WSGI (runserver, gunicorn): a view
    path("events", sse_view(events.sse))

    # asgi.py, under ASGI (uvicorn, daphne): a route beside Django, one task per client
    application = route_asgi(get_asgi_application(), {"/events": events.sse.asgi_app()})

The sink gets its own SQLAlchemy engine built from ``settings.DATABASES`` rather than Django's
connection: Django's connections belong to the request thread that opened them, the sink writes
from its lane's thread, and it needs its own transaction per batch (with COPY on PostgreSQL).
Both point at the same database, with the same driver Django uses (psycopg 3 when installed,
else psycopg2).

Django is not a dependency: this module imports it only when called.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Mapping, MutableMapping

from sqlalchemy.engine import URL

from timelapser_workers.sinks.sse import SSEHub, SSESink
from timelapser_workers.sinks.sse.wsgi import SSEWsgiApp

__all__ = ["database_url", "sse_view", "route_asgi"]

# Django's PostgreSQL OPTIONS that are Django's own, not libpq connection keywords.
_DJANGO_ONLY_OPTIONS = {"isolation_level", "server_side_binding", "pool", "assume_role", "cursor_factory"}
_POSTGRES_ENGINES = ("django.db.backends.postgresql", "django.contrib.gis.db.backends.postgis")
_SQLITE_ENGINES = ("django.db.backends.sqlite3", "django.contrib.gis.db.backends.spatialite")


def database_url(alias: str = "default", *, databases: Mapping[str, Mapping[str, Any]] | None = None) -> URL:
    """The SQLAlchemy URL of Django's ``DATABASES[alias]`` (``databases``: that setting,
    default ``django.conf.settings.DATABASES``), for ``DatabaseSink``, ``DatabaseEventSource``
    and ``BatchingDatabaseHandler``.

    SQLite: the same file. PostgreSQL: the same server, user, password, database and libpq
    OPTIONS (``sslmode`` ...), through the driver Django uses. Anything else raises ValueError
    naming the ENGINE and the two supported ones. Pass the URL object itself (``str()`` of it
    hides the password)."""
    if databases is None:
        from django.conf import settings  # type: ignore[import-untyped]

        databases = settings.DATABASES
    if alias not in databases:
        raise ValueError(f"settings.DATABASES has no {alias!r} database (it has {sorted(databases)})")
    db = databases[alias]
    engine = str(db.get("ENGINE", ""))
    name = db.get("NAME")
    if engine in _SQLITE_ENGINES:
        if not name or str(name) == ":memory:" or "mode=memory" in str(name):
            raise ValueError(
                f"DATABASES[{alias!r}] is an in-memory SQLite database ({name!r}): other connections "
                "cannot see it; give NAME a file path")
        return URL.create("sqlite", database=str(name))
    if engine in _POSTGRES_ENGINES:
        options = {str(k): str(v) for k, v in dict(db.get("OPTIONS") or {}).items()
                   if k not in _DJANGO_ONLY_OPTIONS and isinstance(v, (str, int, float))}
        port = db.get("PORT")
        return URL.create(
            f"postgresql+{_django_postgres_driver()}",
            username=db.get("USER") or None,
            password=db.get("PASSWORD") or None,
            host=db.get("HOST") or None,
            port=int(port) if port else None,
            database=str(name) if name else None,
            query=options,
        )
    raise ValueError(
        f"DATABASES[{alias!r}]['ENGINE'] is {engine!r}; timelapser-workers writes to SQLite and "
        f"PostgreSQL ({_SQLITE_ENGINES[0]!r}, {_POSTGRES_ENGINES[0]!r})")


def _django_postgres_driver() -> str:
    """The driver Django's PostgreSQL backend uses: psycopg 3 if installed, else psycopg2."""
    try:
        from django.db.backends.postgresql.psycopg_any import is_psycopg3  # type: ignore[import-untyped]
    except ImportError:  # Django < 4.2 knows only psycopg2
        return "psycopg2"
    return "psycopg" if is_psycopg3 else "psycopg2"


def sse_view(source: SSESink | SSEHub, **options: Any) -> Callable[[Any], Any]:
    """A Django view streaming ``source``'s events (an SSESink or its hub); ``options`` as for
    :class:`~timelapser_workers.sinks.sse.endpoint.SSEEndpoint` (authorize, cors_origins,
    keepalive_seconds, retry_milliseconds).

    It runs the SSE WSGI app on the request's environ and returns a StreamingHttpResponse, so
    query parameters, ``Last-Event-ID``, refusals (400, 401/403, 503) and a vanished client
    behave as in :class:`SSEWsgiApp`. Each open stream holds a worker thread: run gunicorn with
    threads (``--worker-class gthread``). Keep GZipMiddleware off this path: it buffers.

    WSGI only: under ASGI, Django reads a synchronous stream to its end before sending any of
    it, which an event stream never reaches; the view raises ImproperlyConfigured naming
    :func:`route_asgi`, the way to serve it there."""
    from django.core.exceptions import ImproperlyConfigured  # type: ignore[import-untyped]
    from django.core.handlers.asgi import ASGIRequest  # type: ignore[import-untyped]
    from django.http import StreamingHttpResponse  # type: ignore[import-untyped]

    hub = source.hub if isinstance(source, SSESink) else source
    app = SSEWsgiApp(hub, **options)

    def view(request: Any) -> Any:
        if isinstance(request, ASGIRequest):
            raise ImproperlyConfigured(
                "sse_view streams under WSGI only; under ASGI serve the stream beside Django: "
                "application = route_asgi(get_asgi_application(), {'/events': sink.asgi_app()}) "
                "in asgi.py (timelapser_workers.integrations.django.route_asgi)")
        started: list[tuple[str, list[tuple[str, str]]]] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            started.append((status, headers))

        body = app(request.META, start_response)
        status, headers = started[-1]
        response = StreamingHttpResponse(body, status=int(status.split(" ", 1)[0]))
        for name, value in headers:
            response[name] = value
        return response

    return view


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def route_asgi(django_app: ASGIApp, routes: Mapping[str, ASGIApp]) -> ASGIApp:
    """An ASGI app that sends HTTP requests for each path in ``routes`` (the path itself, or
    below it) to that app, and everything else, lifespan included, to ``django_app``.
    ``route_asgi(get_asgi_application(), {"/events": sink.asgi_app()})``."""
    for prefix in routes:
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ValueError(f"route {prefix!r} must start with '/' and not end with one (e.g. '/events')")
    table = sorted(routes.items(), key=lambda item: -len(item[0]))  # the longest prefix wins

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            for prefix, target in table:
                if path == prefix or path.startswith(prefix + "/"):
                    await target(scope, receive, send)
                    return
        await django_app(scope, receive, send)

    return app
