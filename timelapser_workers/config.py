"""BatcherConfig: every batcher setting, declared once, resolved and checked in one place.

Each setting is one field below: its type, its default, its environment variable and its check.
A value comes from the argument if given, else from the environment (``TIMELAPSER_...``), else
from the default. A bad value raises ValueError naming the setting, the value, where it came
from and what would be right, when the batcher is built (never later, on a worker thread).

Environment names before 0.2 (``TIMELAPSER_SSE_BATCH_SIZE`` ...) are still read, with a
DeprecationWarning naming the new one; the new name wins when both are set.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import warnings
from typing import Any, Callable, Mapping

from timelapser_workers.events import Priority

__all__ = ["BatcherConfig", "Default", "OVERFLOW_MODES", "ENV_PREFIX", "check_timeout"]

ENV_PREFIX = "TIMELAPSER_"
OVERFLOW_MODES = ("block", "drop_newest", "drop_oldest")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


# --- checks: each takes (name, value) and returns the value as stored, or raises ValueError ----
def _count(minimum: int) -> Callable[[str, Any], int]:
    def check(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
        if value < minimum:
            raise ValueError(f"{name}={value!r} must be >= {minimum}")
        return value

    return check


def _seconds(*, positive: bool = False) -> Callable[[str, Any], float]:
    def check(name: str, value: Any) -> float:
        return check_timeout(name, value, positive=positive)

    return check


def check_timeout(name: str, value: Any, *, positive: bool = False) -> float:
    """``value`` as float seconds, or ValueError naming ``name``: finite, >= 0 (> 0 if
    ``positive``) and at most ``threading.TIMEOUT_MAX`` (what a lock or a join can wait)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise ValueError(f"{name}={value!r} must be a finite number of seconds {'> 0' if positive else '>= 0'}")
    if seconds > threading.TIMEOUT_MAX:
        raise ValueError(f"{name}={value!r} is longer than a thread can wait "
                         f"(threading.TIMEOUT_MAX = {threading.TIMEOUT_MAX:.0f} s)")
    return seconds


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{name}={value!r} must be one of {', '.join(choices)}")
        return str(value)

    return check


def _priority(name: str, value: Any) -> Priority:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    try:
        return Priority.parse(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be True or False")
    return value


def _path(name: str, value: Any) -> str:
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value).strip():
        raise ValueError(f"{name}={value!r} must be a non-empty path")
    return os.fspath(value)


def _from_text(kind: Callable[..., Any], text: str) -> Any:
    """The environment's text as the setting's type (checked afterwards)."""
    if kind is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise ValueError("not true/false/1/0/yes/no/on/off")
    if kind is int:
        return int(text.strip())
    if kind is float:
        return float(text.strip())
    return text.strip()


def _setting(default: Any, env: str, check: Callable[[str, Any], Any], doc: str, *,
             kind: Callable[..., Any] | None = None, old_env: str | None = None) -> Any:
    """Declare one setting (a dataclass field carrying its environment name and its check)."""
    meta = {"env": ENV_PREFIX + env, "old_env": old_env and ENV_PREFIX + old_env, "check": check,
            "kind": kind or type(default), "doc": doc}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class Default:
    """A different default (and environment variable) for one setting, for a batcher with
    another purpose: the log handler's batcher flushes at 100 records by default, read from
    ``TIMELAPSER_LOG_BATCH_SIZE``."""

    value: Any
    env: str


@dataclasses.dataclass(frozen=True)
class BatcherConfig:
    """The settings of one EventBatcher. Build it with :meth:`resolve`."""

    batch_size: int = _setting(10, "BATCH_SIZE", _count(1), old_env="SSE_BATCH_SIZE",
                               doc="flush a worker when one of its (type, source) groups has this many")
    batch_timeout: float = _setting(0.5, "BATCH_TIMEOUT_SECONDS", _seconds(), kind=float,
                                    old_env="SSE_BATCH_TIMEOUT_SECONDS",
                                    doc="... or when its oldest pending event is this old (s)")
    flush_priority: Priority = _setting(Priority.HIGH, "FLUSH_PRIORITY", _priority, kind=str,
                                        doc="... or at once for an event at or above this priority")
    max_retries: int = _setting(2, "BATCH_MAX_RETRIES", _count(0), old_env="SSE_BATCH_MAX_RETRIES",
                                doc="retries after the first attempt, per sink")
    retry_delay: float = _setting(0.5, "BATCH_RETRY_DELAY_SECONDS", _seconds(), kind=float,
                                  old_env="SSE_BATCH_RETRY_DELAY",
                                  doc="first backoff (s); doubles, plus up to this much jitter")
    retry_max_delay: float = _setting(30.0, "BATCH_RETRY_MAX_DELAY_SECONDS", _seconds(),
                                      old_env="SSE_BATCH_RETRY_MAX_DELAY", doc="backoff cap (s)")
    max_queue_size: int = _setting(10_000, "EVENT_QUEUE_MAX_EVENTS", _count(1),
                                   doc="the bounded queue, in events")
    overflow: str = _setting("drop_newest", "EVENT_QUEUE_OVERFLOW", _choice(*OVERFLOW_MODES),
                             doc="`drop_newest`, `drop_oldest`, or `block`")
    block_timeout: float = _setting(1.0, "EVENT_QUEUE_BLOCK_TIMEOUT_SECONDS", _seconds(positive=True),
                                    doc="how long `block` waits before `QueueFullError`")
    lane_max_events: int = _setting(10_000, "SINK_LANE_MAX_EVENTS", _count(1),
                                    doc="events a sink's lane holds; a full healthy lane makes the flush thread wait")
    send_timeout: float = _setting(30.0, "SINK_SEND_TIMEOUT_SECONDS", _seconds(positive=True),
                                   doc="one send longer than this: the sink is hung, isolated, its events spooled")
    shutdown_timeout: float = _setting(5.0, "SHUTDOWN_TIMEOUT_SECONDS", _seconds(),
                                       doc="`close()`/atexit deadline (s)")
    max_event_bytes: int = _setting(1_048_576, "MAX_EVENT_BYTES", _count(1),
                                    doc="largest event data, about, in bytes of JSON")
    dead_letter_path: str = _setting("$XDG_STATE_HOME/timelapser-workers/dead-letters.jsonl",
                                     "DEAD_LETTER_PATH", _path,
                                     doc="where the default dead-letter handler appends (`$XDG_STATE_HOME`: "
                                         "that variable, else `~/.local/state`)")
    spool_dir: str = _setting("$XDG_STATE_HOME/timelapser-workers/spool", "SPOOL_DIR", _path,
                              doc="where each sink's spool keeps what it could not deliver yet "
                                  "(a directory per sink name)")
    spool_max_bytes: int = _setting(268_435_456, "SPOOL_MAX_BYTES", _count(0),
                                    doc="the most one sink's spool holds on disk; past it, dead letters "
                                        "(`spool_full`); 0: no spool")
    use_batching: bool = _setting(True, "USE_BATCHING", _flag,
                                  doc="False: every event delivered on its own (the rollback switch)")
    handle_sigterm: bool = _setting(True, "HANDLE_SIGTERM", _flag,
                                    doc="on SIGTERM (default action), close every batcher first, then end by SIGTERM")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            object.__setattr__(self, field.name, field.metadata["check"](field.name, getattr(self, field.name)))

    @classmethod
    def resolve(cls, *, base: "BatcherConfig | None" = None, defaults: Mapping[str, Default] | None = None,
                **given: Any) -> "BatcherConfig":
        """Each setting from ``given`` (None counts as not given), else from ``base`` if given,
        else its environment variable, else its default (``defaults`` replaces the default and
        the variable of the settings it names). TypeError for an unknown name, ValueError for a
        bad value."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(given) - set(fields)) + sorted(set(defaults or ()) - set(fields))
        if unknown:
            raise TypeError(f"unknown batcher setting(s): {', '.join(unknown)}; "
                            f"known: {', '.join(fields)}")
        if base is not None:
            given = {k: v for k, v in given.items() if v is not None}
            made = dataclasses.replace(base, **given)
            object.__setattr__(made, "_sources", {k: v for k, v in base._origins().items() if k not in given})
            return made
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, field in fields.items():
            value = given.get(name)
            if value is not None:
                values[name] = value
                continue
            override = (defaults or {}).get(name)
            env = override.env if override else field.metadata["env"]
            old = None if override else field.metadata["old_env"]
            text, source = os.environ.get(env), env
            if text is None and old is not None and old in os.environ:
                text, source = os.environ[old], old
                warnings.warn(f"environment variable {old} is deprecated; use {env}",
                              DeprecationWarning, stacklevel=3)
            if text is None:
                values[name] = override.value if override else field.default
                continue
            kind = field.metadata["kind"]
            try:
                value = _from_text(kind, text)
            except ValueError:
                raise ValueError(f"environment variable {source}={text!r} is not a valid "
                                 f"{getattr(kind, '__name__', kind)} for {name}; unset it or give "
                                 f"a value like {field.default!r}") from None
            sources[name] = f" (from the environment variable {source}={text!r})"
            try:
                values[name] = field.metadata["check"](name, value)
            except ValueError as exc:
                raise ValueError(f"{exc}{sources[name]}") from None
        made = cls(**values)
        object.__setattr__(made, "_sources", sources)
        return made

    def _origins(self) -> dict[str, str]:
        sources: dict[str, str] = getattr(self, "_sources", {})
        return sources

    def origin(self, name: str) -> str:
        """Where setting ``name`` came from, for an error message: " (from the environment
        variable X='...')", or "" for an argument or the default."""
        return self._origins().get(name, "")

    @classmethod
    def describe(cls) -> list[tuple[str, Any, str, str]]:
        """(setting, default, environment variable, meaning) for each setting, in order."""
        return [(f.name, f.default, f.metadata["env"], f.metadata["doc"]) for f in dataclasses.fields(cls)]
