"""Server-Sent Events wire format: turn events, comments and hints into injection-proof bytes.

An SSE stream is lines of ``field: value``; a blank line ends an event. Anything that lets a
CR or LF into a value could start a new field or a new event, so every field value written
here goes through :func:`field_value` (CR, LF and NUL become U+FFFD) and every ``data`` line
is compact JSON, which escapes control characters itself and so is always one line.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["field_value", "event_frame", "json_frame", "comment_frame", "retry_frame", "json_line"]

_UNSAFE = {ord("\r"): "\ufffd", ord("\n"): "\ufffd", ord("\0"): "\ufffd"}


def field_value(value: str) -> str:
    """``value`` with CR, LF and NUL replaced by U+FFFD, so it can never end its line."""
    return value.translate(_UNSAFE)


def json_line(data: Any) -> str:
    """``data`` as compact JSON on one line (JSON escapes CR, LF and every control character)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # json.dumps never emits a raw CR or LF; keep the guarantee explicit and cheap.
    return text if "\n" not in text and "\r" not in text else field_value(text)


def event_frame(data: Any, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE event: optional ``id:`` and ``event:`` lines, one ``data:`` line of JSON."""
    return json_frame(json_line(data).encode("utf-8"), event=event, id=id)


def json_frame(data: bytes, *, event: str | None = None, id: str | None = None) -> bytes:
    """:func:`event_frame` for data that is JSON already (an event's ``to_json()``: its payload
    encoded once, where the event was made). Compact JSON holds no raw CR or LF."""
    head = ""
    if id is not None:
        head = f"id: {field_value(id)}\n"
    if event is not None and event != "message":
        head += f"event: {field_value(event)}\n"
    if b"\n" in data or b"\r" in data:  # not from an encoder we know: keep it one line
        data = field_value(data.decode("utf-8", "replace")).encode("utf-8")
    return b"".join((head.encode("utf-8"), b"data: ", data, b"\n\n"))


def comment_frame(text: str = "") -> bytes:
    """A comment line (ignored by EventSource; used as keep-alive and to open the stream)."""
    return f": {field_value(text)}\n\n".encode("utf-8")


def retry_frame(milliseconds: int) -> bytes:
    """The ``retry:`` hint: how long a browser waits before it reconnects."""
    return f"retry: {int(milliseconds)}\n\n".encode("ascii")
