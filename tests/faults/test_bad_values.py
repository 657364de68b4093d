"""Bad values, swept through a real pipeline: what no built-in sink or the dead letter could
write is refused at the edge, naming the key path; what one sink alone cannot store is that
sink's refusal of that one event. Either way the neighbours are stored."""

from __future__ import annotations

import math

import pytest

from timelapser_workers import EventBatcher, JsonLinesDeadLetter
from timelapser_workers.events import JOB_STARTED
from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sql.codec import row_record


def _stored(sink: DatabaseSink) -> list[dict]:
    with sink.engine.connect() as conn:
        return [row_record(r) for r in conn.execute(sink.table.select().order_by(sink.table.c.id))]


@pytest.fixture
def pipeline(tmp_path):
    made = []

    def make(url: str | None = None, **sink_options):
        sink = DatabaseSink(url or f"sqlite:///{tmp_path}/events.db", wants_aggregated=False, **sink_options)
        dead = JsonLinesDeadLetter(tmp_path / "dead.jsonl")
        batcher = EventBatcher([sink], batch_size=50, batch_timeout=5, dead_letter=dead,
                               spool_dir=tmp_path / "spool")
        made.append((batcher, sink))
        return batcher, sink, dead

    yield make
    for batcher, sink in made:
        batcher.close(timeout=5)


EDGE_REFUSED = [
    ({"n": 7 ** 5917}, r"data\['n'\] is an integer of thousands of digits"),             # the case
    ({"deep": {"n": 2 ** 64}}, r"data\['deep'\]\['n'\] is an integer of 20 digits"),
    ({"n": -(2 ** 63) - 1}, r"data\['n'\] is an integer of 19 digits"),
    ({"ratio": math.nan}, r"data\['ratio'\] is nan"),
    ({"ratio": [1.0, -math.inf]}, r"data\['ratio'\]\[1\] is -inf"),
    ({"name": "caf\udce9"}, r"data\['name'\] holds '\\udce9' at position 3, a lone surrogate"),
    ({"caf\udce9": 1}, r"data key 'caf\\udce9' holds '\\udce9'"),
]


@pytest.mark.parametrize("data,message", EDGE_REFUSED, ids=["5000-digit-int", "2**64", "-2**63-1", "nan",
                                                           "-inf", "surrogate-value", "surrogate-key"])
def test_what_nothing_could_write_is_refused_at_the_edge_and_the_neighbours_are_stored(pipeline, data, message):
    batcher, sink, dead = pipeline()
    before = batcher.emit(JOB_STARTED, {"job_id": 1}, worker="w")
    with pytest.raises(ValueError, match=message):
        batcher.emit(JOB_STARTED, data, worker="w")
    after = batcher.emit(JOB_STARTED, {"job_id": 2}, worker="w")
    assert batcher.flush(timeout=10).delivered == 2
    assert [r["id"] for r in _stored(sink)] == [before.id, after.id]
    assert dead.read() == []


def test_the_edges_of_what_is_accepted_are_stored_exactly(pipeline):
    batcher, sink, dead = pipeline()
    values = {"max": 2 ** 64 - 1, "min": -(2 ** 63), "tiny": 5e-324, "big": 1.7976931348623157e308,
              "nul": "a\x00b", "astral": "\U0001f600", "empty": ""}
    batcher.emit(JOB_STARTED, values, worker="w")
    assert batcher.flush(timeout=10).delivered == 1
    assert _stored(sink)[0]["data"] == values and dead.read() == []


def test_a_name_only_some_sinks_cannot_store_costs_only_its_event(pipeline):
    """A lone surrogate in a worker name (not checked at the edge: names are not data) is
    SQLite's refusal of that one event; the dead letter still writes it, visibly escaped."""
    batcher, sink, dead = pipeline()
    good = [batcher.emit(JOB_STARTED, {"job_id": n}, worker="w").id for n in range(5)]
    bad = batcher.emit(JOB_STARTED, {"job_id": 5}, worker="cam\udce9").id
    good += [batcher.emit(JOB_STARTED, {"job_id": n}, worker="w").id for n in range(6, 10)]
    result = batcher.flush(timeout=10)
    assert (result.delivered, result.failed) == (9, 1)
    assert sorted(r["id"] for r in _stored(sink)) == sorted(good)
    records = dead.read()
    assert [r["event"]["id"] for r in records] == [bad] and records[0]["event"]["worker"] == "cam\\udce9"
    assert records[0]["reason"] == "permanent_error" and "surrogate" in records[0]["error"]


@pytest.mark.postgres
@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_on_postgresql_a_nul_or_a_surrogate_name_costs_only_its_event(pipeline, postgres_url, unique_name,
                                                                     pg_conn, use_copy):
    batcher, sink, dead = pipeline(postgres_url, table=unique_name, use_copy=use_copy)
    try:
        good = [batcher.emit(JOB_STARTED, {"job_id": n, "max": 2 ** 64 - 1, "min": -(2 ** 63)}, worker="w").id
                for n in range(8)]
        nul = batcher.emit(JOB_STARTED, {"job_id": 8, "note": "a\x00b"}, worker="w").id
        name = batcher.emit(JOB_STARTED, {"job_id": 9}, worker="cam\udce9").id
        good += [batcher.emit(JOB_STARTED, {"job_id": n}, worker="w").id for n in range(10, 14)]
        result = batcher.flush(timeout=10)
        assert (result.delivered, result.failed) == (12, 2)
        stored = _stored(sink)
        assert sorted(r["id"] for r in stored) == sorted(good)
        assert stored[0]["data"]["max"] == 2 ** 64 - 1 and stored[0]["data"]["min"] == -(2 ** 63)
        assert sorted(r["event"]["id"] for r in dead.read()) == sorted([nul, name])
        assert len({r["error"] for r in dead.read()}) == 2  # each its own error
    finally:
        batcher.close(timeout=5)
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {unique_name}")
