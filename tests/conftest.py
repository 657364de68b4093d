"""Fixtures shared by every test package: the real PostgreSQL server when a test needs it,
batchers that clean up after themselves, and sinks that misbehave on purpose (real sinks,
driven through the real batcher)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pytest

from timelapser_workers.sinks import MemorySink, Sink
from timelapser_workers import EventBatcher, JsonLinesDeadLetter, TransientSinkError
from timelapser_workers.events import Event

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def eventually(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is truthy (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def ci() -> bool:
    """True under CI: any non-empty ``CI`` value other than ``0`` or ``false`` (any case)."""
    value = os.environ.get("CI", "").strip().lower()
    return bool(value) and value not in ("0", "false")


def _unreachable(reason: str) -> None:
    """Under CI a missing server fails the test; on a laptop it skips with one line of reason."""
    if ci():
        pytest.fail(f"PostgreSQL needed under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unreachable: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    # Run in the background by a non-interactive shell (`cmd &`), the tests start with SIGINT
    # ignored, and every server and program they start would inherit that: their real Ctrl-C
    # tests would then wait for a signal that never arrives. Caught here, it is reset to the
    # default in each child at exec, where Python installs its KeyboardInterrupt handler.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own temporary directory: whatever it writes to a relative path
    (the default dead-letter file above all) lands there, never in the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _state_home(tmp_path_factory, monkeypatch) -> None:
    """The library's default files (dead letters, spools) go to the user's state directory:
    for a test (and the programs it runs), a temporary one of its own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))


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



class FlakySink(MemorySink):
    """Fails the first ``failures`` calls with ``error``, then records like MemorySink."""

    def __init__(self, failures: int, error: Callable[[], Exception] = lambda: TransientSinkError("flaky")) -> None:
        super().__init__("flaky")
        self.failures = failures
        self.calls = 0
        self.error = error

    def send(self, batch: Sequence[Event]) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error()
        super().send(batch)


class GateSink(MemorySink):
    """Blocks in send() until ``gate`` is set (a slow or hung sink); records afterwards."""

    def __init__(self, name: str = "gate") -> None:
        super().__init__(name)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def send(self, batch: Sequence[Event]) -> None:
        self.entered.set()
        self.gate.wait(60)  # released by the test (or its teardown) long before this
        super().send(batch)


@pytest.fixture
def dead_letter(tmp_path) -> JsonLinesDeadLetter:
    return JsonLinesDeadLetter(tmp_path / "dead.jsonl")


@pytest.fixture
def make_batcher(dead_letter):
    """Build EventBatchers with a dead-letter file in tmp_path; closed at teardown."""
    made: list[EventBatcher] = []
    gates: list[GateSink] = []

    def make(sinks: Sequence[Sink] = (), **kwargs) -> EventBatcher:
        kwargs.setdefault("dead_letter", dead_letter)
        kwargs.setdefault("retry_delay", 0.01)
        batcher = EventBatcher(sinks, **kwargs)
        made.append(batcher)
        gates.extend(s for s in sinks if isinstance(s, GateSink))
        return batcher

    yield make
    for gate in gates:
        gate.gate.set()
    for batcher in made:
        batcher.close(timeout=5)


@pytest.fixture
def flaky_sink() -> type[FlakySink]:
    return FlakySink


@pytest.fixture
def gate_sink() -> type[GateSink]:
    return GateSink
