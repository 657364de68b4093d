"""The dashboard in a real headless Chromium (Debian's package), driven over the DevTools
protocol: events arrive live, a server-side close is survived, every event is shown once."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from timelapser_workers.sinks.sse import SSESink
from timelapser_workers.sinks.sse.wsgi import ServerThread, make_server
from tests.sse.conftest import wait_until
from timelapser_workers.batcher import EventBatcher

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("dashboard_serve", ROOT / "examples" / "dashboard" / "serve.py")
dashboard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dashboard)

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    reason = "no chromium on PATH (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"browser test needs Chromium under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


class DevTools:
    """A minimal DevTools-protocol client: one page target, Runtime.evaluate and navigation."""

    def __init__(self, browser_port: int, timeout: float = 30.0) -> None:
        import websocket  # websocket-client, test extra

        with urllib.request.urlopen(f"http://127.0.0.1:{browser_port}/json/list", timeout=timeout) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        assert pages, "Chromium has no page target"
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # skip protocol events until our answer
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise AssertionError(f"{method} failed: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            return None
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def browser() -> Iterator[DevTools]:
    chromium = find_chromium()
    profile = tempfile.mkdtemp(prefix="timelapser-chromium-")
    proc = subprocess.Popen(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    devtools = None
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 30, "Chromium's DevTools port", 0.05)
        devtools = DevTools(int(port_file.read_text().splitlines()[0]))
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_shows_live_events_survives_reconnect_every_event_once(browser: DevTools) -> None:
    sink = SSESink(replay_events=5000)
    batcher = EventBatcher([sink], batch_size=10, batch_timeout=0.05)
    app = dashboard.make_app(sink, batcher.stats, retry_milliseconds=200, keepalive_seconds=1.0)
    server = ServerThread(make_server(app)).start()
    workers = dashboard.SampleWorkers(batcher, count=3, jobs_per_second=100)
    try:
        browser.call("Page.navigate", url=f"{server.url}/")
        snapshot = lambda: browser.evaluate("window.dashboard && window.dashboard.snapshot()")  # noqa: E731
        wait_until(lambda: (snapshot() or {}).get("state") == "open", 15, "the page to connect")
        workers.start()
        # live: events appear while the workers run
        wait_until(lambda: len(snapshot()["ids"]) >= 20, 20, "live events on the page")
        # forced reconnect: the server closes every stream; the workers keep emitting meanwhile
        assert sink.hub.disconnect_all() == 1
        wait_until(lambda: snapshot()["opens"] >= 2 and snapshot()["state"] == "open", 20, "the page to reconnect")
        shown = len(snapshot()["ids"])
        wait_until(lambda: len(snapshot()["ids"]) >= shown + 10, 20, "events on the new connection too")
        workers.stop()
        # a last event after everything else: once the page shows it, nothing is still on its way
        batcher.emit("JOB_COMPLETED", {"job_id": -1, "marker": True}, worker=workers.names[0], source="dashboard")
        assert batcher.flush(10).complete
        published = sink.hub.replay_ids()
        wait_until(lambda: snapshot()["ids"][-1:] == published[-1:], 20, "the last event on the page")
        final = snapshot()
        assert final["ids"] == published  # every event exactly once, in order
        assert final["duplicates"] == 0 and final["errors"] == 0 and final["resets"] == 0
        assert final["workers"] == final["shownWorkers"] == sorted(workers.names)
        originals = batcher.stats()["events_received"]
        assert final["originals"] == originals  # aggregated events counted by their batch_count
        assert sink.hub.stats()["clients_closed_by_server"] == 1
        wait_until(lambda: browser.evaluate("document.querySelectorAll('#stats-body tr').length"), 5, "the stats panel")
    finally:
        workers.stop()
        batcher.close(5.0)
        server.stop()
