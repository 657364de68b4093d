"""A web app that tails the events table into its hub, for ``gunicorn --preload``: the
DatabaseEventSource is made and started at import, in the master, before the workers fork.

Environment: ``TL_PG`` the database URL, ``TL_TABLE`` the table (it may not exist yet).
``/stats`` answers this process's pid and the source's stats as JSON; anything else is the stream.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable

from timelapser_workers.sinks.sse import SSEHub, SSEWsgiApp
from timelapser_workers.sources import DatabaseEventSource

hub = SSEHub(replay_events=1000)
source = DatabaseEventSource(os.environ["TL_PG"], hub, table=os.environ["TL_TABLE"],
                             channel=os.environ["TL_TABLE"], poll_interval_seconds=0.2).start()
_sse = SSEWsgiApp(hub, keepalive_seconds=0.5, retry_milliseconds=100)


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == "/stats":
        body = json.dumps({"pid": os.getpid(), **source.stats()}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]
    return _sse(environ, start_response)
