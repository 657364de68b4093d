"""Payloads: an event's data, validated and encoded once, on the producer's thread.

:func:`encode_payload` turns a mapping into compact JSON bytes (UTF-8) in one C-speed call
(orjson) for the common case, and falls back to a Python walk (:func:`json_safe`) only when
the fast call refuses something or might have changed a value. The walk either converts the
value the documented way or raises an error naming the key path. Either way, what is encoded
is exactly what a sink will store: Decimal becomes a string (exact), datetime/date/time ISO
8601 strings, UUID and Path strings, Enum its value, set/frozenset/tuple a list (sets sorted
when they can be), timedelta its seconds. Refused, with the key path: NaN and infinities (JSON
and PostgreSQL's JSONB cannot hold them), integers outside [-2**63, 2**64 - 1] (what orjson,
the dead letter and the spool can write), strings with a lone surrogate (no UTF-8 form),
non-string keys other than numbers and Enums, bytes, and any other type.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import enum
import math
import pathlib
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

__all__ = ["encode_payload", "json_safe", "decode_payload", "INT_MIN", "INT_MAX", "MAX_DEPTH"]

INT_MIN, INT_MAX = -(2**63), 2**64 - 1
MAX_DEPTH = 250  # orjson's own limit is 254 levels; deeper is a cycle more often than not

_FAST_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS
_PLAIN = (str, int, type(None), bool)  # copied as they are by the walk


class _Refused(Exception):
    """The fast path met something only the walk can judge (or explain)."""


def _default(value: Any) -> Any:
    """orjson's hook for what it does not encode itself: the documented conversions only."""
    cls = type(value)
    if cls is decimal.Decimal and value.is_finite():
        return str(value)
    if cls is _dt.datetime or cls is _dt.date or cls is _dt.time:
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        items = list(value)
        try:
            items.sort()
        except TypeError:
            pass
        return items
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if cls is _dt.timedelta:
        return value.total_seconds()
    raise _Refused  # subclasses, Mappings, bytes, NaN in a Decimal, the unknown: the walk decides


def _has_nonfinite(value: Any) -> bool:
    """True if a float NaN or infinity is anywhere in ``value`` (orjson writes them as null):
    in containers, sets (which _default makes lists) and Enum values too. It runs for every
    payload with a null in it: a flat dict of plain values is answered in C, the rest by a loop
    over a stack (no recursion)."""
    if value.__class__ is dict and set(map(type, value.values())) <= _SCALARS:
        return False
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        item = pop()
        cls = item.__class__
        if cls in _SCALARS:
            continue
        if cls is float:
            if item != item or item in _INFINITIES:
                return True
        elif cls is dict:
            extend(item.values())
        elif cls is list or cls is tuple or cls is set or cls is frozenset:
            extend(item)
        elif isinstance(item, enum.Enum):
            push(item.value)
        elif isinstance(item, float) and not math.isfinite(item):
            return True
    return False


_SCALARS = frozenset({str, int, bool, type(None)})
_INFINITIES = (math.inf, -math.inf)


_dumps = orjson.dumps
_join = b"".join


def _own(encoded: bytes) -> bytes:
    """A copy of orjson's output in Python's own allocator. orjson builds its bytes in a
    malloc'd buffer with room to spare; kept in an event that another thread frees later, such
    buffers make glibc's per-thread arenas lock on every free (measured: with four producer
    threads the whole pipeline ran 35-45% slower). The copy costs 50 ns; the buffer is freed
    at once, by the thread that made it."""
    return _join((encoded, b""))


def encode_payload(data: Mapping[str, Any]) -> bytes:
    """``data`` (a mapping) as compact JSON bytes, or TypeError/ValueError naming the bad key
    path. A mapping that is not a dict goes through the walk, which makes it one."""
    try:
        encoded: bytes = _dumps(data, _default, _FAST_OPTIONS)
    except (TypeError, ValueError, _Refused):  # orjson.JSONEncodeError is a TypeError
        return _own(_dumps(json_safe(data)))  # convert the slow way, or refuse with the key path
    # orjson writes NaN and infinities as null: only a null in the output can hide one
    if encoded.find(b"null") >= 0 and _has_nonfinite(data):
        return _own(_dumps(json_safe(data)))
    return _join((encoded, b""))  # _own(encoded), without a call on the hot path


def decode_payload(payload: bytes) -> dict[str, Any]:
    """The data an encoded payload holds (a new dict each call)."""
    data: dict[str, Any] = orjson.loads(payload)
    return data


# --- the walk: convert or explain ----------------------------------------------------------------
def _path(base: str, key: Any) -> str:
    return f"{base}[{key!r}]"


def json_safe(value: Any, path: str = "data") -> Any:
    """Return ``value`` as plain JSON types (dict, list, str, int, float, bool, None), converted
    as the module docstring says, or raise TypeError/ValueError naming the key path, e.g.
    ``data['stats']['when']``."""
    return _safe(value, path, 0)


def _safe(value: Any, path: str, depth: int) -> Any:
    if value is None or value is True or value is False:
        return value
    cls = type(value)
    if cls is str:
        if not value.isascii():
            _check_utf8(value, path)
        return value
    if cls is int:
        return _check_int(value, path)
    if cls is float:
        if math.isfinite(value):
            return value
        raise ValueError(f"{path} is {value!r}: JSON has no NaN or Infinity; send None or a string")
    if depth > MAX_DEPTH:
        raise ValueError(f"{path} is nested more than {MAX_DEPTH} levels deep (a cycle?)")
    if cls is dict or isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                k = _json_key(k, path)
                if k in out or k in value:  # 1 and "1" would be one JSON key: one would be lost
                    raise ValueError(f"{_path(path, k)}: two keys of {path} become the JSON key {k!r}; "
                                     "keep one, or make the keys distinct strings")
            elif not k.isascii():
                _check_utf8(k, f"{path} key {k[:40]!r}")
            # a key path is only built (it costs a repr) when there is something to descend into
            if type(v) in _PLAIN and not (type(v) is int and not INT_MIN <= v <= INT_MAX):
                out[k] = v
                if v.__class__ is str and not v.isascii():
                    _check_utf8(v, _path(path, k))
            else:
                out[k] = _safe(v, _path(path, k), depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_safe(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, (set, frozenset)):
        items = [_safe(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        try:
            items.sort()
        except TypeError:
            pass
        return items
    if isinstance(value, enum.Enum):
        return _safe(value.value, path, depth + 1)
    if isinstance(value, bool):  # bool subclasses other than True/False do not exist; keep mypy calm
        return bool(value)
    if isinstance(value, int):
        return _check_int(int(value), path)
    if isinstance(value, float):
        return _safe(float(value), path, depth)
    if isinstance(value, str):  # a str subclass: keep the plain text
        return _safe(str(value), path, depth)
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise ValueError(f"{path} is Decimal({str(value)!r}): JSON has no NaN or Infinity")
        return str(value)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (uuid.UUID, pathlib.PurePath)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        raise TypeError(
            f"{path} is {type(value).__name__}, which JSON cannot hold; decode it or base64 it first"
        )
    raise TypeError(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which is not "
        "JSON-safe; send str, int, float, bool, None, dict, list, Decimal, datetime, UUID, "
        "Enum or Path"
    )


def _check_int(value: int, path: str) -> int:
    if INT_MIN <= value <= INT_MAX:
        return value
    digits = len(str(abs(value))) if value.bit_length() < 10_000 else "thousands of"
    raise ValueError(
        f"{path} is an integer of {digits} digits, outside [-2**63, 2**64 - 1]: no sink, dead "
        "letter or spool can store it exactly; send it as a string"
    )


def _check_utf8(text: str, path: str) -> None:
    """Refuse text that has no UTF-8 form (a lone surrogate from a bad decode): no database,
    browser or file could take it, and it would fail a whole batch later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{path} holds {text[exc.start:exc.end]!r} at position {exc.start}, a lone surrogate "
            "with no UTF-8 form; decode the source with errors='replace' or send bytes as base64"
        ) from None


def _json_key(k: Any, path: str) -> str:
    """A mapping key as a JSON object key: str, an Enum's value, or a number as text."""
    if isinstance(k, enum.Enum):
        k = k.value
    if isinstance(k, (int, float)) and not isinstance(k, bool):
        k = str(k)
    if not isinstance(k, str):
        raise TypeError(
            f"{_path(path, k)}: key {k!r} of type {type(k).__name__} is not a string; "
            "JSON object keys must be strings"
        )
    return k
