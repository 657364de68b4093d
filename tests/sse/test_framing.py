"""The wire format on its own: no value can end its line, data is one line of JSON."""

from __future__ import annotations

import json

from timelapser_workers.sinks.sse.framing import comment_frame, event_frame, field_value, retry_frame


def test_field_values_cannot_break_lines():
    assert field_value("a\rb\nc\0d") == "a\ufffdb\ufffdc\ufffdd"
    frame = event_frame({"x": 1}, event="T\r\nid: 9\n\ndata: forged", id="1\n2")
    text = frame.decode()
    assert text.endswith("\n\n") and text.count("\n\n") == 1
    lines = text[:-2].split("\n")
    assert [line.split(":", 1)[0] for line in lines] == ["id", "event", "data"]
    assert "\r" not in text


def test_data_is_one_line_of_json_that_round_trips():
    payload = {"s": "line\nbreak\r\n\r\nevent: x\ndata: y", "u": "\u2028\u2029\x00", "n": [1, 2.5, None]}
    text = event_frame(payload, id="abc").decode()
    data_lines = [line for line in text.split("\n") if line.startswith("data: ")]
    assert len(data_lines) == 1
    assert json.loads(data_lines[0][6:]) == payload


def test_message_events_have_no_event_line_and_controls_no_id():
    assert event_frame({}, event="message", id="1").decode() == "id: 1\ndata: {}\n\n"
    assert event_frame({}, event="stream-reset").decode() == "event: stream-reset\ndata: {}\n\n"
    assert comment_frame("a\nb") == b": a\xef\xbf\xbdb\n\n"
    assert retry_frame(1500) == b"retry: 1500\n\n"
