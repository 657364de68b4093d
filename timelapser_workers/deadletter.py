"""Dead letters: where events go that a sink could not take, so no loss is ever silent.

A handler is any callable ``handler(events, sink_name, reason, error)``. The default appends
one JSON line per event to a file and logs one warning per batch. Reasons used by the library:
``permanent_error``, ``retries_exhausted``, ``lane_full``, ``shutdown_timeout``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence, Union

from timelapser_workers.events import Event

__all__ = ["DeadLetterHandler", "JsonLinesDeadLetter", "resolve_dead_letter"]

logger = logging.getLogger(__name__)

DeadLetterHandler = Callable[[Sequence[Event], str, str, Union[BaseException, None]], None]


class JsonLinesDeadLetter:
    """Append each dead event as one JSON line to ``path`` (created on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._reset_lock)

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()

    def __call__(
        self, events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None
    ) -> None:
        now = time.time()
        err = None if error is None else f"{type(error).__name__}: {error}"
        lines = "".join(
            json.dumps(
                {"dead_lettered_at": now, "sink": sink_name, "reason": reason, "error": err,
                 "event": e.to_dict()},
                separators=(",", ":"),
            )
            + "\n"
            for e in events
        )
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(lines)
        logger.warning(
            "dead-lettered %d event(s) from sink %r (%s%s) to %s",
            sum(e.batch_count for e in events), sink_name, reason,
            f": {err}" if err else "", self.path,
        )

    def read(self) -> list[dict]:
        """Every record written so far (for tests and replay tools)."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def __repr__(self) -> str:
        return f"JsonLinesDeadLetter({str(self.path)!r})"


def resolve_dead_letter(value: DeadLetterHandler | str | os.PathLike[str] | None) -> DeadLetterHandler:
    """A handler from a callable, a path, or None (the DEAD_LETTER_PATH setting)."""
    if value is None:
        from timelapser_workers.constants import setting

        return JsonLinesDeadLetter(setting("DEAD_LETTER_PATH"))
    if isinstance(value, (str, os.PathLike)):
        return JsonLinesDeadLetter(value)
    if callable(value):
        return value
    raise TypeError(
        f"dead_letter must be a callable(events, sink_name, reason, error), a path or None, "
        f"got {value!r}"
    )
