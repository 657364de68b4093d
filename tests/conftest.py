"""Fixtures shared by every test package: the real PostgreSQL server, when a test needs it."""

from __future__ import annotations

import os
import uuid
from typing import Iterator

import pytest

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _unreachable(reason: str) -> None:
    """Under CI a missing server fails the test; on a laptop it skips with one line of reason."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL needed under CI=true: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unreachable: {reason}")


@pytest.fixture(scope="session")
def _postgres_probe() -> tuple[str, str | None]:
    url = os.environ.get("TIMELAPSER_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
    try:
        import psycopg2
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        return url, f"psycopg2 is not installed ({exc})"
    try:
        conn = psycopg2.connect(url, connect_timeout=3)
    except Exception as exc:
        return url, f"{url}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}"
    conn.close()
    return url, None


@pytest.fixture
def postgres_url(_postgres_probe: tuple[str, str | None]) -> str:
    """The test server's URL (env TIMELAPSER_TEST_POSTGRES_URL); skip or fail if it is down."""
    url, problem = _postgres_probe
    if problem:
        _unreachable(problem)
    return url


@pytest.fixture
def unique_name() -> str:
    """A table (or channel) name no other test uses: tests run side by side on one server."""
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_conn(postgres_url: str) -> Iterator[object]:
    """A plain autocommit psycopg2 connection to the test server, for the test's own checks."""
    import psycopg2

    conn = psycopg2.connect(postgres_url, application_name="timelapser-test-observer")
    conn.autocommit = True
    yield conn
    conn.close()
