"""Fixtures for the core tests: batchers that clean up after themselves, and sinks that
misbehave on purpose (they are real sinks, driven through the real batcher)."""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import pytest

from sinks import MemorySink, Sink
from timelapser_workers import EventBatcher, JsonLinesDeadLetter, TransientSinkError
from timelapser_workers.events import Event


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
