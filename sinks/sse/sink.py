"""SSESink: the batcher's sink that hands each batch to an :class:`SSEHub` for browsers."""

from __future__ import annotations

import logging
from typing import Any, Sequence

from timelapser_workers.contract import BaseSink, Event
from timelapser_workers.sinks.sse.hub import SSEHub

__all__ = ["SSESink"]

log = logging.getLogger(__name__)

_HUB_DEFAULTS = {"replay_events": 1000, "client_queue_events": 1000, "max_clients": 1000, "named_events": False}


class SSESink(BaseSink):
    """Publish every batch to ``hub`` (made from the hub options when not given; see SSEHub).

    Loadable by name: ``load_sink("sse?replay_events=5000")``.

    ``send`` never waits for a browser: it builds each frame once and queues it per client.
    Serve the hub with :meth:`wsgi_app` or :meth:`asgi_app`.
    """

    name = "sse"

    def __init__(
        self,
        hub: SSEHub | None = None,
        *,
        name: str = "sse",
        wants_aggregated: bool = True,
        replay_events: int = 1000,
        client_queue_events: int = 1000,
        max_clients: int = 1000,
        named_events: bool = False,
    ) -> None:
        options: dict[str, Any] = {
            "replay_events": replay_events,
            "client_queue_events": client_queue_events,
            "max_clients": max_clients,
            "named_events": named_events,
        }
        if hub is not None:
            changed = sorted(k for k, v in options.items() if v != _HUB_DEFAULTS[k])
            if changed:
                raise TypeError(f"give SSESink a hub or hub options, not both (got {changed})")
        self.name = name
        self.wants_aggregated = wants_aggregated
        self.hub = hub if hub is not None else SSEHub(
            replay_events=replay_events, client_queue_events=client_queue_events,
            max_clients=max_clients, named_events=named_events,
        )

    def send(self, batch: Sequence[Event]) -> None:
        self.hub.publish(batch)

    def close(self, timeout: float | None = None) -> None:
        """End every stream (each gets a last ``retry`` hint; browsers reconnect and resume),
        waiting up to ``timeout`` (at most 2 s) for the writers to send it."""
        self.hub.close(2.0 if timeout is None else max(0.0, min(timeout, 2.0)))

    def wsgi_app(self, **options: Any) -> Any:
        """A WSGI app serving this sink's hub (options as for :class:`SSEEndpoint`)."""
        from timelapser_workers.sinks.sse.wsgi import SSEWsgiApp

        return SSEWsgiApp(self.hub, **options)

    def asgi_app(self, **options: Any) -> Any:
        """An ASGI app serving this sink's hub (options as for :class:`SSEEndpoint`)."""
        from timelapser_workers.sinks.sse.asgi import SSEAsgiApp

        return SSEAsgiApp(self.hub, **options)
