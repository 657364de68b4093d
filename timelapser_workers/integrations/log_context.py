"""What a log record carries besides its standard fields, as one JSON-safe dict: the
``extra={...}`` fields, and structlog's context, for BatchingDatabaseHandler's ``extra`` column.

Three ways context reaches a record, all kept:

- ``log.info("saved", extra={"job_id": 7, "camera": "cam3"})``: the extra fields are attributes
  of the record that a plain LogRecord does not have;
- structlog through the standard library: ``render_to_log_kwargs`` passes the event dict as
  ``extra`` (the case above); ``ProcessorFormatter.wrap_for_formatter`` passes the event dict
  itself as the record's message (its ``event`` becomes the message, the rest the context);
- structlog's bound context variables (``structlog.contextvars.bind_contextvars``), read on the
  logging thread when structlog is installed, so they reach records logged through plain
  ``logging`` calls too.

The record's own fields win over context variables. Values are made JSON-safe as events are
(datetimes, UUIDs, Decimals ...); a value JSON cannot hold is stored as its ``repr()``, so a
record is never lost for one odd field.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from timelapser_workers.events import json_safe

__all__ = ["record_context", "STANDARD_ATTRIBUTES"]

#: Attributes every LogRecord has (and the ones formatters add): not context.
STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName",
}
# what structlog's wrap_for_formatter and ProcessorFormatter put on a record for themselves
_STRUCTLOG_OWN = frozenset({"_logger", "_name", "_from_structlog", "_record"})


def _structlog_contextvars() -> Callable[[], dict[str, Any]] | None:
    try:
        from structlog.contextvars import get_contextvars
    except ImportError:
        return None
    return get_contextvars


_get_contextvars = _structlog_contextvars()


def record_context(record: logging.LogRecord, *, contextvars: bool = True) -> tuple[str, dict[str, Any], Any]:
    """``(message, context, exc_info)`` of ``record``: its message text, its context fields
    (JSON-safe, maybe empty) and the exception it carries (``record.exc_info``, or the
    ``exc_info`` of a structlog event dict). ``contextvars``: merge structlog's bound context
    variables (the record's own fields win)."""
    context: dict[str, Any] = {}
    if contextvars and _get_contextvars is not None:
        context.update(_get_contextvars())
    exc_info: Any = record.exc_info
    msg = record.msg
    if isinstance(msg, dict) and hasattr(record, "_logger") and not record.args:
        event = dict(msg)  # structlog's ProcessorFormatter.wrap_for_formatter: the event dict
        message = str(event.pop("event", ""))
        event_exc_info = event.pop("exc_info", None)
        exc_info = exc_info or event_exc_info
        context.update(event)
    else:
        message = record.getMessage()
    for key, value in record.__dict__.items():
        if key not in STANDARD_ATTRIBUTES and key not in _STRUCTLOG_OWN:
            context[key] = value
    return message, {str(k): _json_value(k, v) for k, v in context.items()}, exc_info


def _json_value(key: Any, value: Any) -> Any:
    try:
        return json_safe(value, f"extra[{key!r}]")
    except (TypeError, ValueError):
        return repr(value)
