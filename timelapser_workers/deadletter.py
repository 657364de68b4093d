"""Dead letters, and the one thread that writes to disk for a batcher.

A dead letter is an event no sink will take: refused for good (``permanent_error``), or with
nowhere else to go (``spool_full``, ``spool_error``; and, with the spool turned off, the
outage reasons ``retries_exhausted``, ``sink_failing``, ``sink_hung``, ``shutdown_timeout``).
A handler is any callable ``handler(events, sink_name, reason, error)``. The default,
:class:`JsonLinesDeadLetter`, appends one record per event (records.py: a checksummed line,
0600; one ``write`` and one ``fsync`` per call) and logs one warning per sink and reason, the
first one naming the file's absolute path. ``timelapser-workers dead-letters`` lists, shows,
replays and purges them.

:class:`DeadLetterWriter` is the batcher's disk writer: dead letters and spool appends are
handed to it, so whoever finds them (the flush thread above all) never waits on a disk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence, Union

import orjson

from timelapser_workers.drops import RateLimitedWarnings
from timelapser_workers.events import Event
from timelapser_workers.lifecycle import after_fork_in_child
from timelapser_workers.records import Line, append_records, encode_event, read_lines
from timelapser_workers.spool import Spool
from timelapser_workers.statedir import expand, writable_dir
from timelapser_workers.threads import DaemonThread, WorkQueue, remaining

__all__ = ["DeadLetterHandler", "JsonLinesDeadLetter", "DeadLetterWriter", "resolve_dead_letter",
           "dead_letter_record", "dead_letter_lines", "read_dead_letters"]

logger = logging.getLogger(__name__)

DeadLetterHandler = Callable[[Sequence[Event], str, str, Union[BaseException, None]], None]


def _text(value: str | None) -> str | None:
    """Text as it can be written (an error message may quote a lone surrogate)."""
    return None if value is None else value.encode("utf-8", "backslashreplace").decode("utf-8")


def dead_letter_record(event: Event, sink_name: str, reason: str, error: str | None, at: float) -> bytes:
    """One dead-letter record: when, which sink, why, the error, and the event (records.py)."""
    head = {"dead_lettered_at": at, "sink": sink_name, "reason": reason, "error": error,
            "event": orjson.Fragment(encode_event(event))}
    try:
        return orjson.dumps(head)
    except TypeError:
        head.update(sink=_text(sink_name), error=_text(error))
        return orjson.dumps(head)


def dead_letter_lines(path: str | os.PathLike[str]) -> Iterator[tuple[Line, dict[str, Any] | None]]:
    """Each line of the dead-letter file ``path`` with its record (None: torn or damaged)."""
    for line in read_lines(path):
        record = None
        if line.body is not None:
            try:
                record = orjson.loads(line.body)
            except orjson.JSONDecodeError:
                pass
        yield line, record


def read_dead_letters(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], int]:
    """Every dead-letter record in ``path`` (dicts) and how many lines were torn or damaged."""
    records, corrupt = [], 0
    for _, record in dead_letter_lines(path):
        if record is None:
            corrupt += 1
        else:
            records.append(record)
    return records, corrupt


class JsonLinesDeadLetter:
    """Append each dead event as one record to ``path`` (made 0600 on first use; a relative
    path is taken from the working directory when this is made)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(os.fspath(path)))
        self._lock = threading.Lock()
        self._warnings = RateLimitedWarnings(log=logger)  # one line per sink and reason per 10 s
        self._announced = False
        after_fork_in_child(self._reset_lock)  # held weakly: this handler may go away

    def _reset_lock(self) -> None:
        self._lock = threading.Lock()

    def __call__(
        self, events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None
    ) -> None:
        now = time.time()
        err = None if error is None else f"{type(error).__name__}: {error}"
        records = [dead_letter_record(e, sink_name, reason, err, now) for e in events]
        with self._lock:
            append_records(self.path, records)
        where = str(self.path)
        if not self._announced:
            self._announced = True
            where += " (list, replay or purge them with: timelapser-workers dead-letters)"
        self._warnings.warn(
            f"{sink_name}:{reason}", "dead-lettered %d event(s) from sink %r (%s%s) to %s",
            sum(e.batch_count for e in events), sink_name, reason,
            f": {err}" if err else "", where,
        )

    def read(self) -> list[dict[str, Any]]:
        """Every record written so far (torn or damaged lines skipped)."""
        return read_dead_letters(self.path)[0]

    def __repr__(self) -> str:
        return f"JsonLinesDeadLetter({str(self.path)!r})"


def resolve_dead_letter(value: DeadLetterHandler | str | os.PathLike[str] | None,
                        default_path: str | os.PathLike[str], *, origin: str = "") -> DeadLetterHandler:
    """A handler from a callable, a path (``dead_letter=``), or None (then ``default_path``,
    the ``dead_letter_path`` setting; ``origin``: where that came from). A path is checked
    now: ValueError naming the setting if its directory cannot be written."""
    if value is None:
        return JsonLinesDeadLetter(_checked(default_path, "dead_letter_path", origin))
    if isinstance(value, (str, os.PathLike)):
        if not os.fspath(value).strip():
            raise ValueError(f"dead_letter={value!r} must be a file path, a callable or None")
        return JsonLinesDeadLetter(_checked(value, "dead_letter", ""))
    if callable(value):
        return value
    raise TypeError(
        f"dead_letter must be a callable(events, sink_name, reason, error), a path or None, "
        f"got {value!r}"
    )


def _checked(text: str | os.PathLike[str], setting: str, origin: str) -> Path:
    path = expand(text)
    if path.is_dir():
        raise ValueError(f"{setting}={os.fspath(text)!r}{origin} is a directory; give a file path "
                         "(e.g. .../dead-letters.jsonl)")
    writable_dir(path.parent, setting, origin)
    return path


class _Dead(NamedTuple):
    events: Sequence[Event]
    sink_name: str
    reason: str
    error: BaseException | None
    weight: int  # original events


class _Spooled(NamedTuple):
    spool: Spool
    line: bytes
    events: Sequence[Event]
    sink_name: str
    weight: int  # original events
    refused: Callable[[int], None]  # the lane counts what the disk refused


_STOP = object()


class DeadLetterWriter:
    """The batcher's disk writer: runs the dead-letter handler and appends to the spools on
    its own thread, so whoever hands it work (the flush thread above all, when a lane
    overflows or is isolated) does not wait on I/O.

    Bounded: with ``max_events`` waiting, ``submit`` waits for room (up to ``block_timeout``
    seconds, and never past ``deadline`` once shutting down: an overloaded disk slows the
    pipeline rather than losing events); past that a batch is not written but counted
    (``dropped``) and logged. A spool append the disk refuses (full, read-only) goes to the
    dead letter instead (``spool_error``). ``close(deadline)`` writes what is waiting until the
    deadline; what is left then is counted as dropped too. One per EventBatcher; its thread
    starts on first use.
    """

    def __init__(self, handler: DeadLetterHandler, max_events: int, name: str = "events",
                 block_timeout: float = 5.0) -> None:
        self.handler = handler
        self.max_events = max_events
        self.block_timeout = block_timeout
        self.deadline: float | None = None  # shutting down: no wait for room past this
        self.name = name
        self._queue: WorkQueue[Any] = WorkQueue(max_events)
        self._thread = DaemonThread(f"timelapser-disk-{name}", self._run)
        self._writing = 0  # events taken off the queue and not yet written
        self.written = 0  # original events handed to the handler without error
        self.errors = 0  # original events whose handler call raised
        self.dropped = 0  # original events never handed over (full, or left at close)
        self.spooled = 0  # original events appended to a spool

    def submit(self, events: Sequence[Event], sink_name: str, reason: str, error: BaseException | None) -> None:
        """Queue ``events`` for the dead-letter handler; waits only while the writer is full."""
        count = sum(e.batch_count for e in events)
        if count:
            self._put(_Dead(events, sink_name, reason, error, count))

    def spool(self, spool: Spool, line: bytes, events: Sequence[Event], sink_name: str, count: int,
              refused: Callable[[int], None]) -> None:
        """Queue one reserved spool line for appending; waits only while the writer is full."""
        self._put(_Spooled(spool, line, events, sink_name, count, refused))

    def _put(self, job: _Dead | _Spooled) -> None:
        self._thread.start()  # started on first use
        # full: wait for room (that slows whoever hands work over, and so, through the bounded
        # queue, the producers) rather than lose the batch; give up at the deadline
        wait_until = time.monotonic() + self.block_timeout
        if self.deadline is not None:
            wait_until = min(wait_until, self.deadline)
        if self._queue.put(job, job.weight, deadline=wait_until):
            return
        self._lost(job)
        logger.error("disk writer of %r is %d events behind; %d event(s) of sink %r were not written, "
                     "only counted", self.name, self.max_events, job.weight, job.sink_name)

    def _lost(self, job: _Dead | _Spooled) -> None:
        if isinstance(job, _Spooled):
            job.spool.cancel(len(job.line), job.weight)
        with self._queue.cond:
            self.dropped += job.weight

    def _run(self) -> None:
        while True:
            with self._queue.cond:
                job = self._queue.get()
                if job is _STOP:
                    return
                self._writing += job.weight
            try:
                if isinstance(job, _Spooled):
                    self._append(job)
                else:
                    self._dead_letter(job)
            except BaseException:  # a bug of ours: this job is lost, counted; the writer lives on
                with self._queue.cond:
                    self.errors += job.weight
                logger.critical("disk writer of %r failed on %d event(s) of sink %r; they are counted "
                                "as not written", self.name, job.weight, job.sink_name, exc_info=True)
            finally:
                with self._queue.cond:
                    self._writing -= job.weight
                    self._queue.cond.notify_all()

    def _append(self, job: _Spooled) -> None:
        try:
            job.spool.append(job.line, job.weight)
            self.spooled += job.weight
        except OSError as exc:
            logger.error("cannot spool %d event(s) of sink %r in %s: %s; dead-lettering them",
                         job.weight, job.sink_name, job.spool.directory, exc)
            job.refused(job.weight)
            self._dead_letter(_Dead(job.events, job.sink_name, "spool_error", exc, job.weight))

    def _dead_letter(self, job: _Dead) -> None:
        try:
            self.handler(job.events, job.sink_name, job.reason, job.error)
            self.written += job.weight
        except BaseException:  # a handler's SystemExit or KeyboardInterrupt too: never the writer's end
            self.errors += job.weight
            logger.exception(
                "dead-letter handler failed for %d event(s) of sink %r (%s); they are counted "
                "as dead-lettered but were not written", job.weight, job.sink_name, job.reason,
            )

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
        left = self._queue.remove_all(lambda item: item is not _STOP)
        for job in left:
            self._lost(job)
        if left:
            logger.error("disk writer of %r: %d event(s) not written by the deadline", self.name,
                         sum(job.weight for job in left))

    def stats(self) -> dict[str, int]:
        return {"written": self.written, "errors": self.errors, "dropped": self.dropped,
                "waiting": self.waiting, "spooled": self.spooled}
