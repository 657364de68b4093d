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
from typing import Any, Callable, Sequence, Union

from timelapser_workers.drops import RateLimitedWarnings
from timelapser_workers.events import Event
from timelapser_workers.lifecycle import after_fork_in_child
from timelapser_workers.threads import DaemonThread, WorkQueue, remaining

__all__ = ["DeadLetterHandler", "JsonLinesDeadLetter", "DeadLetterWriter", "resolve_dead_letter"]

logger = logging.getLogger(__name__)

DeadLetterHandler = Callable[[Sequence[Event], str, str, Union[BaseException, None]], None]


class JsonLinesDeadLetter:
    """Append each dead event as one JSON line to ``path`` (created on first use)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._warnings = RateLimitedWarnings(log=logger)  # one line per sink and reason per 10 s
        after_fork_in_child(self._reset_lock)  # held weakly: this handler may go away

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
        self._warnings.warn(
            f"{sink_name}:{reason}", "dead-lettered %d event(s) from sink %r (%s%s) to %s",
            sum(e.batch_count for e in events), sink_name, reason,
            f": {err}" if err else "", self.path,
        )

    def read(self) -> list[dict[str, Any]]:
        """Every record written so far (for tests and replay tools)."""
        if not self.path.exists():
            return []
        with open(self.path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def __repr__(self) -> str:
        return f"JsonLinesDeadLetter({str(self.path)!r})"


def resolve_dead_letter(value: DeadLetterHandler | str | os.PathLike[str] | None,
                        default_path: str) -> DeadLetterHandler:
    """A handler from a callable, a path, or None (then ``default_path``)."""
    if value is None:
        return JsonLinesDeadLetter(default_path)
    if isinstance(value, (str, os.PathLike)):
        return JsonLinesDeadLetter(value)
    if callable(value):
        return value
    raise TypeError(
        f"dead_letter must be a callable(events, sink_name, reason, error), a path or None, "
        f"got {value!r}"
    )


_Job = tuple[Sequence[Event], str, str, Union[BaseException, None], int]
_STOP = object()


class DeadLetterWriter:
    """Runs a dead-letter handler on its own thread, so whoever finds a dead batch (the flush
    thread above all, when a lane overflows) does not wait on the handler's I/O.

    Bounded: with ``max_events`` waiting, ``submit`` waits for room (up to ``block_timeout``
    seconds: an overloaded disk slows the pipeline rather than losing dead letters); past
    that a batch is not written but counted (``dropped``) and logged. ``close(deadline)``
    writes what is waiting until the deadline; what is left then is counted as dropped too.
    One per EventBatcher; its thread starts on the first dead letter.
    """

    def __init__(self, handler: DeadLetterHandler, max_events: int, name: str = "events",
                 block_timeout: float = 5.0) -> None:
        self.handler = handler
        self.max_events = max_events
        self.block_timeout = block_timeout
        self.name = name
        self._queue: WorkQueue[Any] = WorkQueue(max_events)
        self._thread = DaemonThread(f"timelapser-deadletter-{name}", self._run)
        self._writing = 0  # events taken off the queue and not yet written
        self.written = 0  # original events handed to the handler without error
        self.errors = 0  # original events whose handler call raised
        self.dropped = 0  # original events never handed over (full, or left at close)

    def submit(self, events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None) -> None:
        """Queue ``events`` for the handler; waits only while the writer is full."""
        count = sum(e.batch_count for e in events)
        if not count:
            return
        self._thread.start()  # started on first use
        # full: wait for room (that slows whoever is dead-lettering, and so, through the
        # bounded queue, the producers) rather than lose the batch; give up at the deadline
        job: _Job = (events, sink_name, reason, error, count)
        if self._queue.put(job, count, deadline=time.monotonic() + self.block_timeout):
            return
        with self._queue.cond:
            self.dropped += count
        logger.error(
            "dead-letter writer of %r is %d events behind; %d event(s) of sink %r (%s) were "
            "not written, only counted", self.name, self.max_events, count, sink_name, reason,
        )

    def _run(self) -> None:
        while True:
            with self._queue.cond:
                job = self._queue.get()
                if job is _STOP:
                    return
                self._writing += job[4]
            events, sink_name, reason, error, count = job
            try:
                self.handler(events, sink_name, reason, error)
                self.written += count
            except Exception:
                self.errors += count
                logger.exception(
                    "dead-letter handler failed for %d event(s) of sink %r (%s); they are counted "
                    "as dead-lettered but were not written", count, sink_name, reason,
                )
            with self._queue.cond:
                self._writing -= count
                self._queue.cond.notify_all()

    @property
    def waiting(self) -> int:
        """Events queued or being written."""
        return self._queue.weight + self._writing

    def wait_idle(self, deadline: float) -> bool:
        """Wait until everything submitted so far is written, or ``deadline`` passes."""
        with self._queue.cond:
            return self._queue.cond.wait_for(lambda: self.waiting == 0, remaining(deadline))

    def close(self, deadline: float) -> None:
        """Write what is waiting until ``deadline`` (time.monotonic()); count what is left."""
        if self._thread.started:
            self._queue.put(_STOP)
            if self._thread.join(deadline):
                return
        left = sum(job[4] for job in self._queue.remove_all(lambda item: item is not _STOP))
        with self._queue.cond:
            self.dropped += left
        if left:
            logger.error("dead-letter writer of %r: %d event(s) not written by the deadline", self.name, left)

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "errors": self.errors, "dropped": self.dropped,
                "waiting": self.waiting}
