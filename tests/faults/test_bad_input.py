"""Bad input, swept: each gets a clear error naming the bad value, and the pipeline keeps
delivering everything else."""

from __future__ import annotations

import decimal
import math

import pytest

from timelapser_workers.sinks import MemorySink
from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers import EventBatcher, JsonLinesDeadLetter, signals
from timelapser_workers.events import JOB_STARTED, make_event


@pytest.fixture
def batcher(tmp_path):
    made = []

    def make(sinks, **kwargs):
        kwargs.setdefault("dead_letter", JsonLinesDeadLetter(tmp_path / "dead.jsonl"))
        b = EventBatcher(sinks, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.close(timeout=5)


BAD_CONFIG = [
    ("batch_size", 0), ("batch_size", "10"), ("batch_size", 2.5), ("batch_size", True),
    ("batch_timeout", -1), ("batch_timeout", math.inf), ("batch_timeout", "0.5"),
    ("max_retries", -1), ("retry_delay", math.nan), ("max_queue_size", 0),
    ("overflow", "drop_everything"), ("block_timeout", 0), ("lane_max_events", 0),
    ("shutdown_timeout", -0.1), ("max_event_bytes", 0), ("max_event_bytes", "1MB"),
    ("flush_priority", "URGENT"), ("flush_priority", 9),
    # longer than a thread can wait: would kill the flush thread (OverflowError) later
    ("batch_timeout", 1e10), ("shutdown_timeout", 1e10), ("block_timeout", 1e10),
    ("dead_letter_path", ""), ("use_batching", "no"),
]


@pytest.mark.parametrize("name,value", BAD_CONFIG)
def test_bad_config_is_refused_naming_the_setting(name, value, tmp_path):
    with pytest.raises(ValueError, match=name):
        EventBatcher([], dead_letter=tmp_path / "d.jsonl", **{name: value})


@pytest.mark.parametrize("env,value", [("BATCH_SIZE", "ten"), ("MAX_EVENT_BYTES", "1MB"),
                                       ("EVENT_QUEUE_OVERFLOW", "spill")])
def test_bad_environment_setting_names_the_variable(monkeypatch, env, value, tmp_path):
    monkeypatch.setenv(f"TIMELAPSER_{env}", value)
    with pytest.raises(ValueError, match=f"TIMELAPSER_{env}={value!r}"):
        EventBatcher([], dead_letter=tmp_path / "d.jsonl")


class _Opaque:
    pass


BAD_PAYLOADS = [
    ({"when": _Opaque()}, TypeError, r"data\['when'\]"),
    ({"blob": b"\x00\x01"}, TypeError, r"data\['blob'\] is bytes"),
    ({"x": {"y": [1, math.nan]}}, ValueError, r"data\['x'\]\['y'\]\[1\].*NaN"),
    ({"d": decimal.Decimal("Infinity")}, ValueError, r"data\['d'\]"),
    ({("a", 1): 1}, TypeError, "not a string"),
]


@pytest.mark.parametrize("data,error,message", BAD_PAYLOADS)
def test_non_json_payloads_get_a_clear_error_and_the_rest_is_delivered(batcher, data, error, message):
    sink = MemorySink("m", wants_aggregated=False)
    b = batcher([sink], batch_timeout=0.01)
    b.emit(JOB_STARTED, {"job_id": 1}, worker="w")
    with pytest.raises(error, match=message):
        b.emit(JOB_STARTED, data, worker="w")
    b.emit(JOB_STARTED, {"job_id": 2}, worker="w")
    assert b.flush(timeout=5).pending == 0
    assert [e.data["job_id"] for e in sink.events] == [1, 2]


def test_a_cyclic_payload_is_refused_not_recursed_forever(batcher):
    cyclic: dict = {}
    cyclic["self"] = cyclic
    with pytest.raises(ValueError, match="nested more than"):
        make_event(JOB_STARTED, cyclic)


def test_bad_payloads_through_signals_are_refused_counted_and_others_delivered(batcher):
    sink = MemorySink("m", wants_aggregated=False)
    b = batcher([sink], batch_timeout=0.01, max_event_bytes=10_000)
    signal = signals.declare("FAULTS_BAD_INPUT")
    b.connect(signal)
    for n in range(5):
        signal.send("w", n=n)
        signal.send("w", n=n, bad=_Opaque())             # not JSON
        signal.send("w", n=n, huge="x" * 20_000)          # over max_event_bytes
    assert b.flush(timeout=5).pending == 0
    assert [e.data["n"] for e in sink.events] == list(range(5))
    assert b.stats()["events_rejected"] == {"invalid": 10}


@pytest.mark.parametrize("data", [
    {"image": "x" * 2_000_000},                          # one enormous string
    {"ids": list(range(200_000))},                       # an enormous list
    {"nested": {"deep": [{"k": "v" * 100}] * 20_000}},   # enormous, nested
])
def test_enormous_payloads_are_refused_naming_size_and_limit(batcher, data):
    sink = MemorySink("m", wants_aggregated=False)
    b = batcher([sink], batch_timeout=0.01)  # the default limit: 1 MiB
    with pytest.raises(ValueError, match=r"is [\d,]+ bytes of JSON, over max_event_bytes=1,048,576"):
        b.emit(JOB_STARTED, data, worker="w")
    b.emit(JOB_STARTED, {"job_id": 3}, worker="w")
    assert b.flush(timeout=5).pending == 0
    assert [e.data for e in sink.events] == [{"job_id": 3}]


def test_a_payload_under_the_limit_passes(batcher):
    sink = MemorySink("m", wants_aggregated=False)
    b = batcher([sink], batch_timeout=0.01, max_event_bytes=100_000)
    b.emit(JOB_STARTED, {"text": "y" * 90_000}, worker="w")
    assert b.flush(timeout=5).pending == 0 and len(sink.events) == 1


@pytest.mark.parametrize("url,error,message", [
    ("nonsense", ValueError, "does not parse"),
    ("://", ValueError, "does not parse"),
    (42, TypeError, "42"),
])
def test_invalid_sink_urls_get_a_clear_error(url, error, message):
    with pytest.raises(error, match=message):
        DatabaseSink(url)


def test_a_sink_without_send_is_refused_naming_it(batcher):
    with pytest.raises(TypeError, match="no send"):
        batcher([object()])
