"""Apps for the server-stop tests, each a whole program's worth of wiring; run by real servers.

Environment: ``TL_DB`` a SQLite URL for the DatabaseSink; ``TL_PENDING`` events emitted at import
(the batcher holds them: ``batch_timeout`` 60 s, so only a flush at stop can deliver them);
each row's ``worker`` is ``pid-<pid>`` of the process that emitted it.

    uvicorn tests.sse._server_apps:asgi_app          gunicorn tests.sse._server_apps:wsgi_app
    python -m tests.sse._server_apps flask PORT      (Flask's development server)
"""

from __future__ import annotations

import os
import sys

from timelapser_workers import EventBatcher
from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sinks.sse import SSESink

SSE_OPTIONS = {"keepalive_seconds": 0.5, "retry_milliseconds": 100}


def _wire() -> tuple[SSESink, EventBatcher]:
    sink = SSESink(wants_aggregated=False)  # one frame per event: the test counts them
    db = DatabaseSink(os.environ["TL_DB"], table="events", wants_aggregated=False)
    batcher = EventBatcher([sink, db], batch_size=100_000, batch_timeout=60, max_queue_size=100_000,
                           dead_letter=os.environ["TL_DB"].replace("sqlite:///", "") + ".dead.jsonl")
    for k in range(int(os.environ.get("TL_PENDING", "0"))):
        batcher.emit("JOB_COMPLETED", {"k": k}, worker=f"pid-{os.getpid()}", source="stop-test")
    # the test counts these lines: one write each, so two workers starting together cannot
    # interleave them on the shared pipe (print writes the text and the newline separately)
    os.write(2, f"app ready in pid {os.getpid()}\n".encode())
    return sink, batcher


_sink, _batcher = _wire()
wsgi_app = _sink.wsgi_app(**SSE_OPTIONS)
asgi_app = _sink.asgi_app(**SSE_OPTIONS)


def flask_main(port: int) -> None:
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    app = Flask(__name__)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/events": wsgi_app})  # type: ignore[method-assign]
    print(f"listening on {port}", file=sys.stderr, flush=True)
    app.run("127.0.0.1", port, threaded=True)


if __name__ == "__main__":
    flask_main(int(sys.argv[2]))
