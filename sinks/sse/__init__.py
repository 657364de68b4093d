"""Server-Sent Events: a hub that fans batches out to browsers, and WSGI and ASGI endpoints.

Layers: framing (bytes on the wire) -> hub (fan-out, replay) -> endpoint (HTTP behaviour) ->
thin WSGI and ASGI apps. Feeding a hub from other processes is a source's job: see
:mod:`timelapser_workers.sources`.

    sink = SSESink(replay_events=1000)          # give it to the EventBatcher
    app = sink.wsgi_app()                       # or sink.asgi_app(); mount at /events
"""

from typing import Any

from timelapser_workers.sinks.sse.endpoint import SSEEndpoint, SSERequest
from timelapser_workers.sinks.sse.hub import STREAM_RESET, HubFullError, SSEClient, SSEHub, Subscription
from timelapser_workers.sinks.sse.sink import SSESink
from timelapser_workers.sinks.sse.wsgi import SSEWsgiApp
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
]


def __getattr__(name: str) -> Any:  # the ASGI app loads on first use
    if name == "SSEAsgiApp":
        from timelapser_workers.sinks.sse.asgi import SSEAsgiApp

        return SSEAsgiApp
    raise AttributeError(f"module 'timelapser_workers.sinks.sse' has no attribute {name!r}")
