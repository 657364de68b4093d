"""Turn the text options of a sink URL's query into typed keyword arguments, or say what is wrong."""

from __future__ import annotations

import re
from typing import Any, Mapping

__all__ = ["parse_options", "parse_bool", "redact_url"]

# scheme://user:PASSWORD@host (the password runs to the last '@' before the host: it may hold
# '/', quotes or '@' written raw, as SQLAlchemy reads them)
_CREDENTIALS = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):(?P<password>\S*?)@(?=[^@\s/]*(?:[/?#\s'\"]|$))"
)
# a secret given as a query option: ?password=..., &sslpassword=..., &token=...
_QUERY_SECRET = re.compile(r"(?i)(?P<key>[?&][A-Za-z_]*(?:pass|secret|token)[A-Za-z_]*)=[^&\s'\"#]*")


def redact_url(text: str) -> str:
    """``text`` with the password of every URL in it shown as ``***`` (user and host kept), for
    errors, logs and stats: ``postgresql://app:***@db/app``."""
    text = _CREDENTIALS.sub(lambda m: f"{m.group('head')}:***@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m.group('key')}=***", text)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(text: str, key: str = "value") -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` in any case; ValueError naming ``key`` else."""
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ValueError(f"option {key}={text!r} is not a boolean; use true or false")


def parse_options(spec: Mapping[str, type], given: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    """Check ``given`` (text from a URL query, or typed values) against ``spec`` (name -> type).

    Unknown names and values that do not parse raise ValueError naming the option, the value,
    ``where`` it came from, and what would be right. Text is converted; typed values are checked.
    An option repeated in a query (a tuple of texts) is refused.
    """
    out: dict[str, Any] = {}
    for key, value in given.items():
        want = spec.get(key)
        if want is None:
            raise ValueError(
                f"unknown option {key!r} in {where!r}; known options: {', '.join(sorted(spec)) or 'none'}"
            )
        if isinstance(value, (tuple, list)):
            raise ValueError(f"option {key!r} is given {len(value)} times in {where!r}; give it once")
        if isinstance(value, str) and want is not str:
            try:
                value = parse_bool(value, key) if want is bool else want(value.strip())
            except ValueError:
                raise ValueError(
                    f"option {key}={value!r} in {where!r} is not a valid {want.__name__}"
                ) from None
        elif not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            if not (want is float and isinstance(value, int) and not isinstance(value, bool)):
                raise ValueError(
                    f"option {key}={value!r} in {where!r} must be a {want.__name__}, "
                    f"not {type(value).__name__}"
                )
        if want in (int, float) and value < 0:
            raise ValueError(f"option {key}={value!r} in {where!r} must not be negative")
        out[key] = value
    return out
