import dataclasses
import datetime as dt
import decimal
import json
import enum
import pathlib
import uuid

import pytest

from timelapser_workers.events import JOB_STARTED, Event, Priority, json_safe, make_event, new_event_id


class Color(enum.Enum):
    RED = "red"


class Kind(str, enum.Enum):
    JOB_STARTED = "JOB_STARTED"


def test_payload_is_made_json_safe_on_creation():
    u = uuid.uuid4()
    event = make_event(
        JOB_STARTED,
        {
            "price": decimal.Decimal("1.10"),
            "when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
            "day": dt.date(2026, 1, 2),
            "at": dt.time(3, 4),
            "id": u,
            "color": Color.RED,
            "tags": {"b", "a"},
            "pair": (1, 2),
            "path": pathlib.PurePosixPath("/frames/1.jpg"),
            "nested": {"list": [decimal.Decimal("2")]},
        },
    )
    assert event.data == {
        "price": "1.10",
        "when": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "at": "03:04:00",
        "id": str(u),
        "color": "red",
        "tags": ["a", "b"],
        "pair": [1, 2],
        "path": "/frames/1.jpg",
        "nested": {"list": ["2"]},
    }


def test_unsupported_value_names_its_key_path():
    with pytest.raises(TypeError, match=r"data\['stats'\]\['when'\]"):
        make_event("X", {"stats": {"when": object()}})
    with pytest.raises(TypeError, match=r"data\['rows'\]\[1\]"):
        make_event("X", {"rows": [1, b"raw"]})
    with pytest.raises(ValueError, match=r"data\['ratio'\].*NaN"):
        make_event("X", {"ratio": float("nan")})


def test_cycle_is_refused_not_a_recursion_error():
    looped: dict = {}
    looped["self"] = looped
    with pytest.raises(ValueError, match="nested more than"):
        json_safe(looped)


def test_payload_is_copied_so_later_changes_do_not_leak_in():
    data = {"job_id": 1, "tags": ["a"]}
    event = make_event(JOB_STARTED, data)
    data["job_id"] = 2
    data["tags"].append("b")
    assert event.data == {"job_id": 1, "tags": ["a"]}


def test_event_is_immutable():
    event = make_event(JOB_STARTED, {"job_id": 1})
    with pytest.raises(AttributeError):
        event.type = "OTHER"  # type: ignore[misc]


def test_str_enum_type_becomes_its_value_not_its_repr():
    # the original fault: f"{Kind.JOB_STARTED}" gave "Kind.JOB_STARTED" and aggregation never matched
    assert make_event(Kind.JOB_STARTED).type == "JOB_STARTED"


@pytest.mark.parametrize("bad", ["", None, 5])
def test_bad_type_is_refused(bad):
    with pytest.raises(TypeError, match="event type"):
        make_event(bad)


def test_priority_parse():
    assert Priority.parse("high") is Priority.HIGH
    assert Priority.parse(3) is Priority.CRITICAL
    with pytest.raises(ValueError, match="'urgent'"):
        Priority.parse("urgent")
    with pytest.raises(ValueError):
        make_event("X", priority=9)


def test_ids_are_unique_and_sort_by_creation():
    ids = [new_event_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_to_dict_is_plain_json():
    import json

    event = make_event(JOB_STARTED, {"job_id": 7}, worker="w", source="s", priority="high")
    d = json.loads(json.dumps(event.to_dict()))
    assert d["type"] == "JOB_STARTED" and d["priority"] == "HIGH" and d["batch_count"] == 1
    assert isinstance(event, Event) and event.created_datetime.tzinfo is not None


def test_a_lone_surrogate_is_refused_where_the_event_is_made():
    with pytest.raises(ValueError, match=r"data\['name'\].*lone surrogate"):
        make_event("X", {"name": "frame\ud800.jpg"})
    with pytest.raises(ValueError, match=r"data\['tags'\]\[0\].*lone surrogate"):
        make_event("X", {"tags": ["\udcff"]})
    with pytest.raises(ValueError, match="lone surrogate"):
        make_event("X", {"k\ud800": 1})
    assert make_event("X", {"name": "caméra ☀"}).data == {"name": "caméra ☀"}


class _Str(str):
    pass


class _Int(int):
    pass


class _Dict(dict):
    pass


@dataclasses.dataclass
class _Point:
    x: int


_SWEEP = [
    None, True, 0, -(2**63), 2**64 - 1, 1.5, -0.0, 1e308, "", "snow \u2603", "\u00e9" * 3,
    [1, None, [2.5]], (1, "a"), {"k": {"k": [None]}}, decimal.Decimal("1.10"),
    dt.datetime(2026, 1, 2, 3, 4, 5, 6), dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
    dt.date(2026, 1, 2), dt.time(3, 4, 5, 6), dt.timedelta(seconds=1.5), uuid.UUID(int=7),
    Color.RED, Kind.JOB_STARTED, {3, 1, 2}, frozenset({"b", "a"}), pathlib.PurePosixPath("/a/b"),
    _Str("sub"), _Int(5), _Dict(a=1), {1: "int key"}, {Color.RED: "enum key"},
]


@pytest.mark.parametrize("value", _SWEEP, ids=[repr(v)[:30] for v in _SWEEP])
def test_the_fast_encoder_stores_what_the_documented_conversion_says(value):
    """make_event encodes in one C call where it can; the result must be exactly what the
    documented conversion (the walk, json_safe) gives, value for value."""
    event = make_event("X", {"v": value, "n": None})
    assert event.data == json_safe({"v": value, "n": None})


@pytest.mark.parametrize("value, path, error", [
    (float("nan"), r"data\['v'\]", ValueError),
    ([None, [float("inf")]], r"data\['v'\]\[1\]\[0\]", ValueError),   # hidden behind a None
    ({"x": -float("inf"), "y": None}, r"data\['v'\]\['x'\]", ValueError),
    (2**64, r"data\['v'\]", ValueError),
    (-(2**63) - 1, r"data\['v'\]", ValueError),
    (10**5000, r"data\['v'\]", ValueError),  # beyond even str()'s 4300 digits
    ("lone \ud800", r"data\['v'\]", ValueError),
    (b"bytes", r"data\['v'\]", TypeError),
    (_Point(1), r"data\['v'\]", TypeError),
    (decimal.Decimal("NaN"), r"data\['v'\]", ValueError),
    ({(1, 2): "tuple key"}, r"data\['v'\]", TypeError),
], ids=lambda v: type(v).__name__)
def test_what_no_sink_can_store_is_refused_at_the_edge_naming_the_key_path(value, path, error):
    with pytest.raises(error, match=path):
        make_event("X", {"v": value, "ok": None})


def test_the_payload_is_encoded_once_and_the_event_reads_it_back():
    event = make_event("X", {"job_id": 7, "snow": "\u2603"}, worker="w")
    assert event.payload == b'{"job_id":7,"snow":"\xe2\x98\x83"}'
    assert event.data == {"job_id": 7, "snow": "\u2603"} and event.job_id == 7
    assert json.loads(event.to_json()) == event.to_dict()
    caller = {"job_id": 7}
    event = make_event("X", caller)
    caller["job_id"] = 8  # the event keeps what was sent
    assert event.data == {"job_id": 7}


@pytest.mark.parametrize("value", [
    {1.0, float("nan")}, frozenset({float("inf")}), enum.Enum("Odd", {"A": float("nan")}).A,
])
def test_nan_hidden_in_a_set_or_an_enum_is_refused_too(value):
    with pytest.raises(ValueError, match=r"data\['v'\].*NaN"):
        make_event("X", {"v": value, "ok": None})


def test_two_keys_that_become_one_json_key_are_refused_not_merged():
    with pytest.raises(ValueError, match=r"become the JSON key '1'"):
        make_event("X", {1: "a", "1": "b"})
