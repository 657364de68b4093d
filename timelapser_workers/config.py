"""BatcherConfig: every batcher setting, resolved (argument > environment > default) and checked.

A bad value raises ValueError naming the setting, the value and what would be right, when the
batcher is built (never later, on a worker thread).
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

from timelapser_workers.constants import ENV_PREFIX, setting
from timelapser_workers.events import Priority

__all__ = ["BatcherConfig", "OVERFLOW_MODES"]

OVERFLOW_MODES = ("block", "drop_newest", "drop_oldest")

# field -> the constants.py name whose TIMELAPSER_ environment variable overrides it
_SETTING_NAMES = {
    "batch_size": "SSE_BATCH_SIZE",
    "batch_timeout": "SSE_BATCH_TIMEOUT_SECONDS",
    "max_retries": "SSE_BATCH_MAX_RETRIES",
    "retry_delay": "SSE_BATCH_RETRY_DELAY",
    "retry_max_delay": "SSE_BATCH_RETRY_MAX_DELAY",
    "max_queue_size": "EVENT_QUEUE_MAX_EVENTS",
    "overflow": "EVENT_QUEUE_OVERFLOW",
    "block_timeout": "EVENT_QUEUE_BLOCK_TIMEOUT_SECONDS",
    "lane_max_events": "SINK_LANE_MAX_EVENTS",
    "shutdown_timeout": "SHUTDOWN_TIMEOUT_SECONDS",
    "max_event_bytes": "MAX_EVENT_BYTES",
}


def _int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be >= {minimum}")
    return value


def _seconds(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a number of seconds")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"{name}={value!r} must be a finite number of seconds {'> 0' if positive else '>= 0'}")
    return value


@dataclasses.dataclass(frozen=True)
class BatcherConfig:
    """The settings of one EventBatcher; see constants.py for the defaults and their meaning."""

    batch_size: int
    batch_timeout: float
    max_retries: int
    retry_delay: float
    retry_max_delay: float
    max_queue_size: int
    overflow: str
    block_timeout: float
    lane_max_events: int
    shutdown_timeout: float
    max_event_bytes: int
    flush_priority: Priority = Priority.HIGH
    use_batching: bool = True

    @classmethod
    def resolve(cls, **given: Any) -> "BatcherConfig":
        """Fill each setting left as None from TIMELAPSER_<NAME> or the default, then check all."""
        unknown = set(given) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown batcher setting(s): {', '.join(sorted(unknown))}")
        values = {}
        from_env = {}
        for field, const in _SETTING_NAMES.items():
            value = given.get(field)
            if value is None:
                value = setting(const)
                if ENV_PREFIX + const in os.environ:
                    from_env[field] = ENV_PREFIX + const
            values[field] = value
        if given.get("flush_priority") is not None:
            values["flush_priority"] = given["flush_priority"]
        if given.get("use_batching") is not None:
            values["use_batching"] = given["use_batching"]
        try:
            return cls(**values)
        except ValueError as exc:
            bad = next((f for f in from_env if str(exc).startswith(f"{f}=")), None)
            if bad is None:
                raise
            raise ValueError(f"{exc} (from the environment: {from_env[bad]})") from None

    def __post_init__(self) -> None:
        _int("batch_size", self.batch_size, 1)
        _seconds("batch_timeout", self.batch_timeout)
        _int("max_retries", self.max_retries, 0)
        _seconds("retry_delay", self.retry_delay)
        _seconds("retry_max_delay", self.retry_max_delay)
        _int("max_queue_size", self.max_queue_size, 1)
        _int("lane_max_events", self.lane_max_events, 1)
        _seconds("block_timeout", self.block_timeout, positive=True)
        _seconds("shutdown_timeout", self.shutdown_timeout)
        _int("max_event_bytes", self.max_event_bytes, 1)
        if self.overflow not in OVERFLOW_MODES:
            raise ValueError(f"overflow={self.overflow!r} must be one of {', '.join(OVERFLOW_MODES)}")
        if not isinstance(self.use_batching, bool):
            raise ValueError(f"use_batching={self.use_batching!r} must be True or False")
        try:
            object.__setattr__(self, "flush_priority", Priority.parse(self.flush_priority))
        except ValueError as exc:
            raise ValueError(f"flush_priority: {exc}") from None
        # int-valued seconds from the environment arrive as int: store floats
        for name in ("batch_timeout", "retry_delay", "retry_max_delay", "block_timeout", "shutdown_timeout"):
            object.__setattr__(self, name, float(getattr(self, name)))
