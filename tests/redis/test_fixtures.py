"""Without a Redis server the Redis tests skip with a reason, and under CI they fail (an error in
the fixture, so the run fails): pytest run as a subprocess against a port nobody listens on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.redis.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("ci, outcome", [("", "skipped"), ("0", "skipped"), ("false", "skipped"),
                                         ("true", "error"), ("1", "error"), ("yes", "error")])
def test_no_redis_skips_with_a_reason_or_fails_under_ci(ci: str, outcome: str, tmp_path: Path) -> None:
    env = {**os.environ, "CI": ci, "TIMELAPSER_TEST_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    test = "tests/redis/test_sink.py::test_maxlen_keeps_about_that_many_entries_or_exactly"
    out = subprocess.run([sys.executable, "-m", "pytest", test, "-q", "-rs", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert f"1 {outcome}" in out.stdout, out.stdout[-2000:]  # a fixture that fails: an error
    assert (out.returncode == 0) == (outcome == "skipped")
    assert "Connection refused" in out.stdout  # the reason names what is wrong
