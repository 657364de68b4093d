"""Server-Sent Events: a hub that fans batches out to browsers, WSGI and ASGI endpoints, and a
DatabaseEventSource that tails the events table into a hub across processes.

    sink = SSESink(replay_events=1000)          # give it to the EventBatcher
    app = sink.wsgi_app()                       # or sink.asgi_app(); mount at /events
"""

from typing import Any

from sinks.sse.endpoint import SSEEndpoint, SSERequest
from sinks.sse.hub import STREAM_RESET, HubFullError, SSEClient, SSEHub, Subscription
from sinks.sse.sink import SSESink
from sinks.sse.wsgi import SSEWsgiApp
from timelapser_workers.errors import SSERefused

__all__ = [
    "SSESink",
    "SSEHub",
    "SSEClient",
    "Subscription",
    "HubFullError",
    "STREAM_RESET",
    "SSEEndpoint",
    "SSERequest",
    "SSERefused",
    "SSEWsgiApp",
    "SSEAsgiApp",
    "DatabaseEventSource",
]


def __getattr__(name: str) -> Any:  # the ASGI app and the database source load on first use
    if name == "SSEAsgiApp":
        from sinks.sse.asgi import SSEAsgiApp

        return SSEAsgiApp
    if name == "DatabaseEventSource":
        from sinks.sse.db_source import DatabaseEventSource

        return DatabaseEventSource
    raise AttributeError(f"module 'sinks.sse' has no attribute {name!r}")
