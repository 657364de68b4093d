"""One bad event costs only itself, with any sink: a refusal that names nothing is bisected, an
aggregated event is split into its members, and each refused event carries its own error."""

from __future__ import annotations

from typing import Sequence

from timelapser_workers import PermanentSinkError, TransientSinkError
from timelapser_workers.events import JOB_STARTED, Event
from timelapser_workers.refusals import settle
from timelapser_workers.sinks import MemorySink


class Picky(MemorySink):
    """Refuses, for good and without saying which, any batch holding a 'bad' value (even
    inside an aggregated event); stores the others."""

    def __init__(self, name: str = "picky", **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.sends = 0

    def send(self, batch: Sequence[Event]) -> None:
        self.sends += 1
        if any(b'"bad"' in e.payload for e in batch):
            raise PermanentSinkError("refused: a bad value")
        super().send(batch)


def test_a_refusal_naming_nothing_is_bisected_down_to_the_bad_events(make_batcher, dead_letter):
    sink = Picky(wants_aggregated=False)
    batcher = make_batcher([sink], batch_size=64, batch_timeout=5)
    bad = {batcher.emit("E", {"n": n, "v": "bad" if n in (5, 40) else "ok"}, worker="w").id for n in (5, 40)}
    good = [batcher.emit("E", {"n": n, "v": "ok"}, worker="w").id for n in range(62)]
    result = batcher.flush(timeout=10)
    assert (result.delivered, result.failed, result.pending) == (62, 2, 0)
    assert sorted(e.id for e in sink.events) == sorted(good)
    assert {r["event"]["id"] for r in dead_letter.read()} == bad
    assert {r["error"] for r in dead_letter.read()} == {"PermanentSinkError: refused: a bad value"}
    assert sink.sends <= 1 + 2 * 2 * 6  # about 2 k log2(n) more sends for k bad among n


def test_an_aggregated_event_refused_is_split_into_its_members(make_batcher, dead_letter):
    sink = Picky()
    batcher = make_batcher([sink], batch_size=10, batch_timeout=5)
    ids = [batcher.emit(JOB_STARTED, {"job_id": n, "v": "bad" if n == 3 else "ok"}, worker="w").id
           for n in range(10)]
    result = batcher.flush(timeout=10)
    assert (result.delivered, result.failed) == (9, 1)
    assert sorted(e.id for e in sink.events) == sorted(ids[:3] + ids[4:])  # raw, not aggregated
    assert [r["event"]["id"] for r in dead_letter.read()] == [ids[3]]


def test_each_refused_event_keeps_the_error_the_sink_gave_it():
    events = [Event(id=f"e{n}", type="E", payload=b'{"n":%d}' % n) for n in range(4)]
    named = PermanentSinkError("2 refused", events=[events[1], "e3"],
                               errors={"e1": "e1 is too long", "e3": "e3 has a NUL"})
    settled = settle(lambda batch: None, events, named)
    assert [(r.event.id, r.error) for r in settled.refused] == [("e1", "e1 is too long"), ("e3", "e3 has a NUL")]
    assert settled.sends == 0 and settled.unsent == []  # the others were stored, as the error says


def test_a_transient_error_while_settling_leaves_the_rest_unsent():
    calls = []

    def send(batch: Sequence[Event]) -> None:
        calls.append(len(batch))
        raise TransientSinkError("down again")

    events = [Event(id=f"e{n}", type="E", payload=b"{}") for n in range(8)]
    settled = settle(send, events, PermanentSinkError("no"))
    assert settled.refused == [] and sorted(e.id for e in settled.unsent) == sorted(e.id for e in events)
    assert calls == [4]  # the first half failed transiently: nothing more was tried
