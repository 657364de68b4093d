"""The README's mounting recipes, served for real: Flask (WSGI) and Starlette/FastAPI (ASGI)."""

from __future__ import annotations

import http.client
import socket
import threading

from timelapser_workers.sinks.sse import SSESink
from timelapser_workers.sinks.sse.wsgi import ServerThread, make_server
from tests.sse.conftest import SSETestClient, events, wait_until


def _get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, body


def test_mounted_in_flask():
    from flask import Flask
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    sink = SSESink()
    app = Flask(__name__)

    @app.route("/")
    def index() -> str:
        return "flask page"

    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/events": sink.wsgi_app(keepalive_seconds=0.5)})
    server = ServerThread(make_server(app)).start()
    try:
        port = server.server.server_address[1]
        assert _get(port, "/") == (200, "flask page")
        client = SSETestClient(port, "/events?worker=w1")
        assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
        wait_until(lambda: sink.hub.client_count == 1, 5, "registration")
        sink.send(events(2, worker="w2") + events(3, worker="w1"))
        assert [m["json"]["worker"] for m in client.wait_for(3)] == ["w1"] * 3
    finally:
        sink.close()
        server.stop()


def test_mounted_in_starlette_as_fastapi_does():
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    sink = SSESink()
    app = Starlette(
        routes=[
            Route("/", lambda request: PlainTextResponse("starlette page")),
            # an ASGI app (not a function) as a Route's endpoint is served as is, at exactly /events
            Route("/events", sink.asgi_app(keepalive_seconds=0.5)),
            # Mount works too, but redirects /events to /events/ (307)
            Mount("/mounted", app=sink.asgi_app(keepalive_seconds=0.5)),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn to start")
        assert _get(port, "/") == (200, "starlette page")
        client = SSETestClient(port, "/events?type=JOB_FAILED")
        assert client.status == 200
        wait_until(lambda: sink.hub.client_count == 1, 5, "registration")
        sink.send(events(2) + events(1, type="JOB_FAILED"))
        assert [m["json"]["type"] for m in client.wait_for(1)] == ["JOB_FAILED"]
        assert _get(port, "/events?nope=1")[0] == 400
        mounted = SSETestClient(port, "/mounted/")
        assert mounted.status == 200
        wait_until(lambda: sink.hub.client_count == 2, 5, "registration")
        sink.send(events(1))
        assert mounted.wait_for(1)
    finally:
        sink.close()
        server.should_exit = True
        thread.join(10)


def test_readme_flask_and_fastapi_blocks_run_as_written_and_print_what_they_show(tmp_path):
    """The README's two mounting recipes run unchanged (no sketch) and print their comments
    (the output convention of tests/test_readme.py)."""
    import subprocess
    import sys

    from tests.test_readme import BLOCKS, expected_output, matches

    blocks = [b for b in BLOCKS if "Flask(" in b or "FastAPI(" in b]
    assert len(blocks) == 2 and not any(b.startswith("# a sketch") for b in blocks)
    for block in blocks:
        shown = expected_output(block)
        assert shown
        proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        printed = proc.stdout.splitlines()
        assert len(printed) == len(shown) and all(map(matches, shown, printed)), (printed, shown)
