"""The live dashboard's web app: the page, its event stream, the counters as JSON and as
Prometheus metrics. Used by ``timelapser-workers demo --serve`` and examples/dashboard/serve.py.

    /          the page (static/dashboard.html, shipped inside the package: plain JavaScript
               with EventSource, no build step)
    /events    the SSE stream of the sink's hub
    /stats     the batchers' stats() and the hub's counters, as JSON
    /metrics   the batchers' counters in the Prometheus exposition format (needs
               prometheus_client, the ``prometheus`` extra; without it: 501 and what to install)
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Callable, Iterable, Mapping, Sequence

from timelapser_workers.integrations.metrics import StatsSource
from timelapser_workers.sinks.sse import SSESink
from timelapser_workers.sinks.sse.wsgi import SSEWsgiApp

__all__ = ["make_app", "page"]

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def page() -> bytes:
    """The dashboard page, read from the installed package."""
    return resources.files("timelapser_workers.app").joinpath("static", "dashboard.html").read_bytes()


def make_app(
    sink: SSESink,
    stats: Callable[[], Mapping[str, Any]] | None = None,
    *,
    batchers: Sequence[StatsSource] = (),
    **sse_options: Any,
) -> WsgiApp:
    """A WSGI app serving ``/``, ``/events``, ``/stats`` and ``/metrics`` (see the module).

    ``stats`` is what ``/stats`` shows as ``batcher`` (default: the first of ``batchers``);
    ``batchers`` are what ``/metrics`` exports; ``sse_options`` go to :class:`SSEWsgiApp`."""
    sse = SSEWsgiApp(sink.hub, **sse_options)
    body_of_page = page()
    if stats is None and batchers:
        stats = batchers[0].stats
    metrics = _metrics_renderer(batchers)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        status = "200 OK"
        if path == "/events":
            return sse(environ, start_response)
        if path in ("/", "/index.html"):
            body, kind = body_of_page, "text/html; charset=utf-8"
        elif path == "/stats":
            body = json.dumps({"batcher": dict(stats()) if stats else {}, "hub": sink.hub.stats()},
                              default=str).encode()
            kind = "application/json"
        elif path == "/metrics":
            status, body, kind = metrics(environ.get("HTTP_ACCEPT"))
        else:
            status, kind = "404 Not Found", "text/plain; charset=utf-8"
            body = f"not found: {path!r}; try / /events /stats /metrics\n".encode()
        start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body))),
                                ("Cache-Control", "no-store")])
        return [body]

    return app


def _metrics_renderer(batchers: Sequence[StatsSource]) -> Callable[[str | None], tuple[str, bytes, str]]:
    """``/metrics``: (status, body, content type) for a request's Accept header."""
    try:
        from timelapser_workers.integrations.prometheus import TimelapserCollector, render
    except ImportError as exc:
        message = (f"/metrics needs prometheus_client ({exc}): "
                   "pip install 'timelapser-workers[prometheus]'\n").encode()
        return lambda accept: ("501 Not Implemented", message, "text/plain; charset=utf-8")
    collector = TimelapserCollector(*batchers)

    def metrics(accept: str | None) -> tuple[str, bytes, str]:
        body, kind = render(collector, accept)
        return "200 OK", body, kind

    return metrics
