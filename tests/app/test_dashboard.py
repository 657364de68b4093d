"""The dashboard's web app (timelapser_workers.app.dashboard), served by the repository's
examples/dashboard/serve.py as a user runs it: the page, /stats and a Prometheus scrape of
/metrics over HTTP, parsed with prometheus_client's parser."""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.app.serving import finish_served, start_served

ROOT = Path(__file__).resolve().parents[2]


def test_examples_dashboard_serves_page_stats_and_metrics():
    proc, url = start_served(
        [sys.executable, "examples/dashboard/serve.py", "--port", "0", "--duration", "3", "--rate", "50"], cwd=ROOT)
    try:
        with urllib.request.urlopen(url + "/", timeout=10) as page:
            assert "EventSource" in page.read().decode()
        deadline = time.monotonic() + 10
        while True:  # the sample workers' threads start with the server: wait for their first event
            with urllib.request.urlopen(url + "/stats", timeout=10) as response:
                stats = json.loads(response.read())["batcher"]
            if stats["events_received"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert stats["events_received"] > 0, "the sample workers are running"
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            text = response.read().decode()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        [received] = [s for s in families["timelapser_events_received"].samples if s.name.endswith("_total")]
        assert received.labels == {"batcher": "events"}
        assert received.value > 0  # (stats() can over-count events_received for a moment: see the report)
        sent = [s for s in families["timelapser_sink_events_sent"].samples if s.name.endswith("_total")]
        assert [s.labels["sink"] for s in sent] == ["sse"]
        assert families["timelapser_queue_capacity"].samples[0].value == stats["queue_capacity"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(url + "/nope", timeout=10)
        assert missing.value.code == 404 and "/metrics" in missing.value.read().decode()
    finally:
        finish_served(proc)

