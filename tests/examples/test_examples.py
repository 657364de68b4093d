"""Each example runs directly, as documented, as a subprocess; the demo prints its table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.serving import SERVED_DEMO_LINE, finish_served, start_served

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples and the demo make their files with tempfile: in this test's directory."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "script, expect",
    [
        ("thumbnail_worker.py", r"made 12 thumbnails, e\.g\. frame_0000\.thumb\.jpg 160x120"),
        ("overlay_worker.py", r"stamped 8 frames; 1 job failed permanently"),
        ("scheduler_worker.py", r"captured \d+ frames; thumbnails \d+, overlays \d+"),
        ("custom_sink.py", r"50 rows written in \d+ batches"),
        ("structlog_logging.py", r"4 records stored, 2 from cam3"),
    ],
)
def test_example_runs_directly(script, expect):
    proc = _run(str(ROOT / "examples" / script))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(expect, proc.stdout), proc.stdout
    if script in ("thumbnail_worker.py", "overlay_worker.py"):
        assert "JOBS_BATCH_STARTED" in proc.stdout  # aggregation happened, with real strings


def _row(table: str, label: str) -> list[str]:
    line = next(l for l in table.splitlines() if l.startswith(label))
    return line[len(label):].split()


def test_demo_prints_the_measured_table_and_loses_nothing():
    proc = _run("-m", "timelapser_workers", "demo", "--duration", "2.5", "--period", "0.5", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    batched, single = map(int, _row(out, "events emitted"))
    assert batched > 50 and single > 50
    assert _row(out, "lost (emitted - stored)") == ["0", "0"]
    tx_b, tx_s, tx_red = _row(out, "database transactions")
    assert int(tx_s) == single  # one by one: a transaction per event
    # the README's targets (issue 6, target 4): >= 60% fewer transactions, >= 66% fewer messages
    assert float(tx_red.rstrip("%")) >= 60.0, out
    assert int(tx_b) / batched <= 0.4 * int(tx_s) / single, out  # the same, from the counts
    sse_b, sse_s, sse_red = _row(out, "SSE messages")
    assert float(sse_red.rstrip("%")) >= 66.0, out
    assert int(sse_b) / batched <= 0.34 * int(sse_s) / single, out


def test_demo_refuses_bad_arguments():
    proc = _run("-m", "timelapser_workers", "demo", "--duration", "0")
    assert proc.returncode == 2 and "--duration" in proc.stderr


def test_demo_accepts_a_postgresql_url_and_cleans_up(postgres_url, pg_conn):
    proc = _run("-m", "timelapser_workers", "demo", "--duration", "1.5", "--period", "0.5",
                "--db", postgres_url, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _row(proc.stdout, "lost (emitted - stored)") == ["0", "0"]
    with pg_conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'demo_events_%'")
        assert cur.fetchone()[0] == 0


def test_demo_serve_serves_the_dashboard_and_a_live_stream(tmp_path):
    import json
    import urllib.request

    proc, url = start_served([sys.executable, "-m", "timelapser_workers", "demo", "--serve", "--port", "0",
                              "--duration", "4", "--period", "0.5"], cwd=ROOT)
    try:
        with urllib.request.urlopen(url + "/", timeout=10) as page:
            assert "EventSource" in page.read().decode()
        with urllib.request.urlopen(url + "/events", timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("text/event-stream")
            ids = 0
            while ids < 3:  # live events arrive while the workers run
                line = stream.readline()
                assert line, "the stream ended before three events"
                ids += line.startswith(b"id:")
        with urllib.request.urlopen(url + "/stats", timeout=10) as stats:
            body = json.loads(stats.read())
            assert body["batcher"]["events_received"] > 0 and body["hub"]["events_published"] > 0
    finally:
        out, _ = finish_served(proc)
    assert re.search(SERVED_DEMO_LINE, out), out
