"""Dead letters as the README promises them, through the public API only (a dead-letter
callable and ``stats()["dead_letter"]``), whatever the default file's format: written by their
own thread; when that thread is ``lane_max_events`` behind, whoever hands it more waits, up to
``shutdown_timeout``, and only then is a batch counted as unwritten (``dropped``); a handler
that fails is counted (``errors``), never silent."""

from __future__ import annotations

import threading
import time
from typing import Sequence

from tests.conftest import eventually
from timelapser_workers import PermanentSinkError
from timelapser_workers.events import Event
from timelapser_workers.sinks import MemorySink


class _Refusing(MemorySink):
    """Refuses every batch for good: each one goes to the dead letter at once."""

    def __init__(self) -> None:
        super().__init__("refusing")
        self.calls = 0

    def send(self, batch: Sequence[Event]) -> None:
        self.calls += 1
        raise PermanentSinkError("no such table")


class _SlowHandler:
    """A dead-letter handler that cannot write until ``gate`` opens (a stalled disk)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.written: list[int] = []

    def __call__(self, events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None) -> None:
        self.gate.wait(30)
        self.written += [e.data["n"] for e in events]


def _dead_letter_stats(batcher) -> dict[str, int]:
    return batcher.stats()["dead_letter"]


def test_a_stalled_dead_letter_holds_back_its_senders_and_loses_nothing(make_batcher) -> None:
    handler, sink = _SlowHandler(), _Refusing()
    batcher = make_batcher([sink], use_batching=False, lane_max_events=5, shutdown_timeout=10,
                           dead_letter=handler)
    for n in range(20):
        batcher.emit("E", {"n": n}, worker="w")
    # the writer holds lane_max_events queued plus the batch it is writing, and no more: the
    # lane that hands it the next one waits (and so its own queue, and then the ingress, fill)
    assert eventually(lambda: _dead_letter_stats(batcher)["waiting"] == 5 + 1)
    most, deadline = 0, time.monotonic() + 0.3
    while time.monotonic() < deadline:
        stats = _dead_letter_stats(batcher)
        most = max(most, stats["waiting"])
        assert stats["dropped"] == 0 and stats["written"] == 0
    assert most == 6 and sink.calls <= 5 + 1 + 1  # the lane is stuck handing over its 7th
    assert batcher.stats()["sinks"]["refusing"]["pending"] > 0
    handler.gate.set()
    assert batcher.flush(timeout=10).pending == 0
    assert batcher.stats()["sinks"]["refusing"]["dead_lettered"] == 20
    assert handler.written == list(range(20))  # every one written, in order, none dropped
    assert _dead_letter_stats(batcher) == {"written": 20, "errors": 0, "dropped": 0, "waiting": 0, "spooled": 0}


def test_past_shutdown_timeout_a_batch_is_counted_as_unwritten(make_batcher, caplog) -> None:
    handler, sink = _SlowHandler(), _Refusing()
    batcher = make_batcher([sink], use_batching=False, lane_max_events=2, shutdown_timeout=0.3,
                           dead_letter=handler)
    for n in range(6):
        batcher.emit("E", {"n": n}, worker="w")
    assert eventually(lambda: _dead_letter_stats(batcher)["waiting"] == 2 + 1)
    full = time.monotonic()
    assert eventually(lambda: _dead_letter_stats(batcher)["dropped"] > 0)
    assert time.monotonic() - full >= 0.3 - 0.1  # it waited about shutdown_timeout first
    assert "were not written, only counted" in caplog.text
    handler.gate.set()
    assert batcher.flush(timeout=10).pending == 0
    stats = _dead_letter_stats(batcher)
    assert stats["written"] + stats["dropped"] == 6 and stats["dropped"] >= 1
    assert (stats["errors"], stats["waiting"]) == (0, 0)
    assert len(handler.written) == stats["written"]
    assert batcher.stats()["sinks"]["refusing"]["dead_lettered"] == 6  # all six counted as failed


def test_a_failing_dead_letter_handler_is_counted_and_logged(make_batcher, caplog) -> None:
    def broken(events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None) -> None:
        raise OSError("disk full")

    batcher = make_batcher([_Refusing()], use_batching=False, dead_letter=broken)
    for n in range(3):
        batcher.emit("E", {"n": n}, worker="w")
    assert batcher.flush(timeout=10).failed == 3
    assert _dead_letter_stats(batcher) == {"written": 0, "errors": 3, "dropped": 0, "waiting": 0, "spooled": 0}
    assert "dead-letter handler failed" in caplog.text and "disk full" in caplog.text


def test_a_dead_letter_handler_raising_a_base_exception_costs_its_call_not_the_writer(make_batcher) -> None:
    written: list[int] = []
    interrupted: list[int] = []

    def handler(events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None) -> None:
        if not interrupted:
            interrupted.extend(e.data["n"] for e in events)
            raise KeyboardInterrupt  # once: the writer thread must carry on
        written.extend(e.data["n"] for e in events)

    batcher = make_batcher([_Refusing()], use_batching=False, dead_letter=handler)
    for n in range(3):
        batcher.emit("E", {"n": n}, worker="w")
    assert batcher.flush(timeout=10).failed == 3
    assert _dead_letter_stats(batcher) == {"written": 2, "errors": 1, "dropped": 0, "waiting": 0, "spooled": 0}
    assert (interrupted, written) == ([0], [1, 2])
