"""The server side of bench/sse_fanout.py, run by uvicorn or gunicorn in a subprocess.

Environment: ``BENCH_CLIENTS`` (start emitting once that many streams are open), ``BENCH_RATE``
(events/s), ``BENCH_EVENTS`` (how many). Events go emit -> EventBatcher (default settings:
batch_size 10, batch_timeout 0.5 s) -> a sink -> the streams; each event's data carries its
sequence number and the wall-clock time it was emitted.

    ours_asgi / ours_wsgi   SSESink -> SSEHub -> SSEAsgiApp / SSEWsgiApp
    starlette_asgi          sse-starlette's EventSourceResponse, one async generator per
                            client yielding each event from its asyncio.Queue (its broadcast
                            pattern): one write per event per client
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import threading
import time
from typing import Any, AsyncIterator, Callable

from timelapser_workers import EventBatcher
from timelapser_workers.contract import BaseSink

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))

CLIENTS = int(os.environ.get("BENCH_CLIENTS", "1000"))
RATE = float(os.environ.get("BENCH_RATE", "100"))
EVENTS = int(os.environ.get("BENCH_EVENTS", "1000"))


def _emit_when_ready(batcher: EventBatcher, connected: Callable[[], int]) -> None:
    def run() -> None:
        while connected() < CLIENTS:
            time.sleep(0.01)
        start = time.monotonic()
        for seq in range(EVENTS):
            pause = start + seq / RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            batcher.emit("JOB_COMPLETED", {"seq": seq, "t": time.time()}, worker="bench", source="bench")
        batcher.flush(30)

    threading.Thread(target=run, name="bench-emitter", daemon=True).start()


def _ours() -> Any:
    from timelapser_workers.sinks.sse import SSESink

    sink = SSESink(max_clients=CLIENTS + 10, wants_aggregated=False)
    batcher = EventBatcher([sink])
    _emit_when_ready(batcher, lambda: sink.hub.client_count)
    return sink


def ours_asgi() -> Any:
    return _ours().asgi_app()


def ours_wsgi() -> Any:
    return _ours().wsgi_app()


def starlette_asgi() -> Any:
    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    queues: set[asyncio.Queue[dict[str, Any]]] = set()
    loop: list[asyncio.AbstractEventLoop] = []

    def fan_out(records: list[dict[str, Any]]) -> None:  # on the loop
        for queue in queues:
            for record in records:
                queue.put_nowait(record)

    class QueueSink(BaseSink):
        name = "sse-starlette"
        wants_aggregated = False

        def send(self, batch: Any) -> None:
            if loop:
                loop[0].call_soon_threadsafe(fan_out, [e.to_dict() for e in batch])

    async def events(request: Request) -> EventSourceResponse:
        if not loop:
            loop.append(asyncio.get_running_loop())
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        queues.add(queue)

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while True:
                    record = await queue.get()
                    yield {"id": record["id"], "data": json.dumps(record)}
            finally:
                queues.discard(queue)

        return EventSourceResponse(stream(), ping=15)

    batcher = EventBatcher([QueueSink()])
    _emit_when_ready(batcher, lambda: len(queues))
    return Starlette(routes=[Route("/events", events)])


app = {"ours_asgi": ours_asgi, "ours_wsgi": ours_wsgi, "starlette_asgi": starlette_asgi}[os.environ["BENCH_APP"]]()
