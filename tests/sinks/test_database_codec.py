"""The event <-> row codec: every form a writer sends holds the same values, and rows read back
from a real database are the events' own records."""

from __future__ import annotations

import datetime as dt
import json
import types

import pytest
import sqlalchemy as sa

from timelapser_workers.events import Event, Priority, make_event
from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sql.codec import EVENT_COLUMNS, copy_buffer, event_row, row_record, sqlite_rows
from timelapser_workers.sql.schema import events_table


def tricky_events() -> list[Event]:
    plain = [make_event("JOB_COMPLETED", {"job_id": i, "note": "tab\there\nnew\rline back\\slash ünï \u2603"},
                        worker="w\t1", source="cam\\1", priority=Priority.HIGH) for i in range(3)]
    bare = make_event("JOB_STARTED", {"n": None, "f": 0.5, "l": [1, {"a": "\\N"}]}).replace(created_at=1_600_000_000.0)
    agg = make_event("JOBS_BATCH_COMPLETED", {"items": [1, 2]}).replace(members=tuple(plain[:2]))
    return plain + [bare, agg]


def _uncopy(field: str) -> str | None:
    """A COPY text field back to its value (the inverse of copy_text)."""
    if field == "\\N":
        return None
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\":
            out.append({"t": "\t", "n": "\n", "r": "\r", "\\": "\\"}[field[i + 1]])
            i += 2
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def test_the_column_list_is_the_tables_written_columns() -> None:
    table = events_table(sa.MetaData(), "t")
    assert EVENT_COLUMNS == tuple(c.name for c in table.c if c.name not in ("id", "inserted_at"))


def test_the_dict_the_sqlite_tuple_and_the_copy_line_hold_the_same_values() -> None:
    events = tricky_events()
    tuples = sqlite_rows(events)
    lines = copy_buffer(events).getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == len(events) + 1
    for event, tup, line in zip(events, tuples, lines):
        row = event_row(event)
        assert list(row) == list(EVENT_COLUMNS)
        fields = [_uncopy(f) for f in line.split("\t")]
        assert len(tup) == len(fields) == len(EVENT_COLUMNS)
        for k, column in enumerate(EVENT_COLUMNS):
            want = row[column]
            if column == "data":
                assert json.loads(tup[k]) == json.loads(fields[k] or "") == want == event.data
            elif column == "created_at":
                assert want == event.created_datetime
                assert dt.datetime.fromisoformat(tup[k]).replace(tzinfo=dt.timezone.utc) == want
                assert dt.datetime.fromisoformat(fields[k] or "") == want
            elif column == "batch_count":
                assert tup[k] == int(fields[k] or "") == want == event.batch_count
            else:
                assert tup[k] == fields[k] == want
    assert tuples[0][3] == "HIGH" and tuples[-1][7] == 2


@pytest.mark.parametrize("use_copy", [True, False], ids=["copy", "insert"])
def test_rows_read_back_are_the_events_records(db, use_copy: bool) -> None:
    events = tricky_events()
    sink = DatabaseSink(db.url, table=db.table, use_copy=use_copy)
    sink.send(events)
    with sink.engine.connect() as conn:  # read as DatabaseEventSource reads: plain SQL text
        rows = conn.execute(sa.text(f"SELECT id, {', '.join(EVENT_COLUMNS)} FROM {db.table} ORDER BY id")).fetchall()
    sink.close()
    records = [row_record(r) for r in rows]
    for record, event in zip(records, events, strict=True):
        want = event.to_dict()
        assert record["created_at"] == pytest.approx(want.pop("created_at"), abs=1e-6)
        record.pop("created_at")
        assert record == want
        assert list(row_record(rows[0])) == list(event.to_dict())  # the same keys, in order


def test_a_row_whose_data_is_not_json_keeps_its_text() -> None:
    row = types.SimpleNamespace(event_id="e1", type="T", data=b"not json", priority="LOW", source=None,
                                worker=None, created_at="2020-09-13 12:26:40.000000", batch_count=None)
    record = row_record(row)
    assert record["data"] == {"raw": "not json"}
    assert record["created_at"] == 1_600_000_000.0 and record["batch_count"] == 1


def test_utc_text_prints_what_datetime_prints() -> None:
    """The codec's cached time formatting, against datetime itself, on 20,000 random times
    and the rounding edges (half a microsecond either way of a second)."""
    import random

    from timelapser_workers.sql.codec import utc_text

    rnd = random.Random(7)
    times = [rnd.uniform(0, 4e9) for _ in range(20_000)]
    times += [1_600_000_000.9999995, 1_600_000_000.0000005, 0.5e-6, 1.5e-6, 2.5e-6, 0.0]
    for t in times:
        when = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        assert utc_text(t) == f"{when:%Y-%m-%d %H:%M:%S.%f}", t
        assert utc_text(t, "T") + "+00:00" == when.isoformat(timespec="microseconds"), t
