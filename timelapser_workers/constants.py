"""Default settings, each overridable by an environment variable named ``TIMELAPSER_<NAME>``.

The values here are only defaults: an argument given to a constructor wins over the
environment, and the environment wins over this module. Settings are read when an object is
built, not at import, so a test or a deployment can change the environment at any time before.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

__all__ = [
    "SSE_BATCH_SIZE",
    "SSE_BATCH_TIMEOUT_SECONDS",
    "SSE_BATCH_MAX_RETRIES",
    "SSE_BATCH_RETRY_DELAY",
    "SSE_BATCH_RETRY_MAX_DELAY",
    "EVENT_QUEUE_MAX_EVENTS",
    "EVENT_QUEUE_OVERFLOW",
    "EVENT_QUEUE_BLOCK_TIMEOUT_SECONDS",
    "SINK_LANE_MAX_EVENTS",
    "SHUTDOWN_TIMEOUT_SECONDS",
    "MAX_EVENT_BYTES",
    "DEAD_LETTER_PATH",
    "LOG_BATCH_SIZE",
    "LOG_BATCH_TIMEOUT_SECONDS",
    "LOG_BATCH_MAX_RETRIES",
    "ENV_PREFIX",
    "setting",
]

ENV_PREFIX = "TIMELAPSER_"

# Batching: flush a group at this many events, or when its oldest event is this old.
SSE_BATCH_SIZE = 10
SSE_BATCH_TIMEOUT_SECONDS = 0.5
# Delivery: retries after the first attempt, first delay, and the cap of the exponential backoff.
SSE_BATCH_MAX_RETRIES = 2
SSE_BATCH_RETRY_DELAY = 0.5
SSE_BATCH_RETRY_MAX_DELAY = 30.0
# The ingress queue: its bound in events, what happens when it is full, how long `block` waits.
EVENT_QUEUE_MAX_EVENTS = 10_000
EVENT_QUEUE_OVERFLOW = "drop_newest"
EVENT_QUEUE_BLOCK_TIMEOUT_SECONDS = 1.0
# Each sink's lane holds at most this many events waiting for the sink.
SINK_LANE_MAX_EVENTS = 10_000
# close() and the atexit hook give up after this long.
SHUTDOWN_TIMEOUT_SECONDS = 5.0
# An event's data may be about this many bytes of JSON at most (1 MiB); larger is refused
# with ValueError where it is made. Events are notices, not file transfers.
MAX_EVENT_BYTES = 1_048_576
# Where the default dead-letter handler appends batches that could not be delivered.
DEAD_LETTER_PATH = "timelapser-dead-letter.jsonl"
# Log-record batching (BatchingDatabaseHandler).
LOG_BATCH_SIZE = 100
LOG_BATCH_TIMEOUT_SECONDS = 5.0
LOG_BATCH_MAX_RETRIES = 3

T = TypeVar("T")


def setting(name: str, parse: Callable[[str], T] | None = None) -> T:
    """Return the setting ``name``: ``TIMELAPSER_<name>`` from the environment, else the default.

    ``parse`` turns the environment's text into a value (default: the type of the default).
    A value that does not parse raises ValueError naming the variable and the text it held.
    """
    default = globals()[name]
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None:
        return default
    convert = parse or type(default)
    try:
        return convert(raw.strip())  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"environment variable {ENV_PREFIX}{name}={raw!r} is not a valid "
            f"{type(default).__name__} ({exc}); unset it or give a value like {default!r}"
        ) from None
