"""The spool: what a sink could not take yet, kept on disk in order until it can.

One spool per sink name, a directory under ``spool_dir`` (the name percent-encoded). Each
batch is one record (records.py: a checksummed JSON line, written with one ``write`` and an
``fsync``) appended to a segment file; the lane reads them back oldest first and acknowledges
each one it delivered by moving a watermark (``<segment>.ack``, one ``pwrite``, no fsync: a
watermark lost to a power cut only means a batch delivered twice, and sinks dedupe on event
id). A segment is deleted when everything in it is acknowledged. bench/bench_spool.py measured
this against a SQLite file in WAL mode (bench/README.md): appends cost the same fsync either
way, but acknowledging a batch is a 17-byte pwrite here against a DELETE and a commit there,
and a torn tail is a skipped line instead of a recovery.

Several processes may spool for the same sink name at once: each writes segments of its own,
named by an owner token, and holds an exclusive ``flock`` on ``<owner>.lock`` while it lives.
A spool that finds segments whose owner's lock is free (the owner was killed, or closed with
events left) adopts them and delivers them first (:meth:`Spool.adopt`).

Who does what: ``reserve`` (any thread, no I/O) counts a record in against ``max_bytes``;
``append`` (the disk-writer thread) writes it; ``next``/``ack`` (the lane thread) read and
acknowledge. Nothing here waits on a sink.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import NamedTuple

import orjson

from timelapser_workers.events import Event
from timelapser_workers.lifecycle import after_fork_in_child
from timelapser_workers.records import event_from_record, frame, private_dir, read_lines, write_once
from timelapser_workers.spool_files import lock, mtime, record_count, release, segment_events, sink_dirname
from timelapser_workers.threads import remaining

__all__ = ["Spool", "SpoolRecord", "spool_line", "SEGMENT_BYTES"]

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 8 * 1024 * 1024  # a new segment past this: delivered ones are deleted sooner


def spool_line(records: list[bytes], count: int) -> bytes:
    """One batch as a spool line: ``{"n": events it stands for, "at": time, "events": [...]}``."""
    body = b'{"n":%d,"at":%s,"events":[%s]}' % (count, orjson.dumps(time.time()), b",".join(records))
    return frame(body)


class _Segment:
    __slots__ = ("owner", "path", "end", "acked", "fd", "ack_fd", "own")

    def __init__(self, owner: str, path: Path, end: int, acked: int, own: bool, fd: int | None = None) -> None:
        self.owner = owner
        self.path = path
        self.end = end  # bytes appended (and synced)
        self.acked = acked  # bytes delivered (or skipped)
        self.fd = fd  # appending (own tail segment only)
        self.ack_fd: int | None = None
        self.own = own

    @property
    def ack_path(self) -> Path:
        return self.path.with_suffix(".ack")


class SpoolRecord(NamedTuple):
    """One batch read back: where it lies, its events, and how many original events they are."""

    segment: _Segment
    start: int
    end: int
    events: tuple[Event, ...]
    originals: int  # the original events they stand for


class Spool:
    """The spool of the sink ``sink_name`` under ``root``; see the module docstring."""

    def __init__(self, root: Path, sink_name: str, max_bytes: int) -> None:
        self.sink_name = sink_name
        self.directory = root / sink_dirname(sink_name)
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._segments: collections.deque[_Segment] = collections.deque()
        self._tail: _Segment | None = None  # the own segment being appended to
        self._owner = f"{os.getpid()}-{os.urandom(4).hex()}"
        self._lock_fd: int | None = None
        self._appending = False  # the disk writer is writing to the tail (outside the lock)
        self._adopted: dict[str, int] = {}  # owner -> its lock, held while we deliver for it
        self._seq = 0
        self._in_transit = 0  # reserved, not yet appended
        self.bytes = 0  # reserved and not yet acknowledged
        self.events = 0  # original events in it (on disk or on the way there)
        self.adopted = 0  # events found from earlier processes
        self.entered = 0  # events ever counted in (reserved or adopted)
        self.left = 0  # events ever counted out (acknowledged, or never appended)
        self.corrupt = 0  # lines skipped: torn or damaged
        self.closed = False
        after_fork_in_child(self._forget)  # held weakly

    # --- any thread, no I/O ------------------------------------------------------------------
    def reserve(self, nbytes: int, count: int) -> bool:
        """Count a line of ``nbytes`` (``count`` events) in, if it fits under ``max_bytes``."""
        with self._cond:
            if self.closed or self.bytes + nbytes > self.max_bytes:
                return False
            self.bytes += nbytes
            self.events += count
            self.entered += count
            self._in_transit += 1
            return True

    def cancel(self, nbytes: int, count: int) -> None:
        """Take back a reservation whose line was never appended."""
        with self._cond:
            self.bytes -= nbytes
            self.events -= count
            self.left += count
            self._in_transit -= 1
            self._cond.notify_all()

    @property
    def empty(self) -> bool:
        """Nothing on disk to deliver, nothing on the way there."""
        return self.events == 0 and self._in_transit == 0

    # --- the disk writer ---------------------------------------------------------------------
    def append(self, line: bytes, count: int) -> None:
        """Write one reserved line (one write, fsync); OSError if the disk refused it, with the
        segment left as it was and the reservation taken back."""
        try:
            seg, fd = self._writable()
        except OSError:
            self.cancel(len(line), count)
            raise
        try:
            write_once(fd, line)
        except OSError:
            try:
                os.ftruncate(fd, seg.end)  # no torn line stays
            except OSError:
                pass
            self._end_append(fd)
            self.cancel(len(line), count)
            raise
        closed = self._end_append(fd)
        with self._cond:
            self._in_transit -= 1
            if closed:  # written, in a segment close() kept for the next start
                self._cond.notify_all()
                return
            seg.end += len(line)
            if seg.end >= SEGMENT_BYTES and seg is self._tail:
                self._tail = None  # the next line starts a new segment
                os.close(fd)
                seg.fd = None
            self._cond.notify_all()

    def _end_append(self, fd: int) -> bool:
        """The write with ``fd`` is over; True if close() came meanwhile (it left ``fd`` to us)."""
        with self._cond:
            self._appending = False
            if not self.closed:
                return False
        os.close(fd)
        return True

    def _writable(self) -> tuple[_Segment, int]:
        """The tail segment and its descriptor, marked as being written (close() leaves that
        descriptor to the writer)."""
        with self._cond:
            if self.closed:
                raise OSError(f"the spool of sink {self.sink_name!r} is closed")
            tail = self._tail
            if tail is not None and tail.fd is not None:
                self._appending = True
                return tail, tail.fd
        if self._lock_fd is None:
            private_dir(self.directory)
            self._lock_fd = lock(self.directory / f"{self._owner}.lock")
            if self._lock_fd is None:  # pragma: no cover - the token is new
                raise OSError(f"cannot lock {self.directory / self._owner}.lock")
        self._seq += 1
        path = self.directory / f"{self._owner}.{self._seq:06d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        seg = _Segment(self._owner, path, 0, 0, True, fd)
        if self._new_tail(seg):
            return seg, fd
        os.close(fd)  # closed meanwhile: the new segment is empty
        path.unlink(missing_ok=True)
        raise OSError(f"the spool of sink {self.sink_name!r} is closed")

    def _new_tail(self, seg: _Segment) -> bool:
        """Make ``seg`` the tail, being written; False if the spool has closed."""
        with self._cond:
            if self.closed:
                return False
            self._segments.append(seg)
            self._tail = seg
            self._appending = True
            return True

    # --- the lane thread ---------------------------------------------------------------------
    def next(self, timeout: float) -> SpoolRecord | None:
        """The oldest record not yet acknowledged, read from disk; None if there is none by
        ``timeout`` seconds (or the spool is closed). Corrupt lines are skipped and counted."""
        deadline = time.monotonic() + timeout
        while True:
            retired: list[_Segment] = []
            target: tuple[_Segment, int, int] | None = None
            with self._cond:
                while not self.closed:
                    seg = self._segments[0] if self._segments else None
                    if seg is not None and seg.acked < seg.end:
                        target = (seg, seg.acked, seg.end)
                        break
                    if seg is None and self._in_transit == 0 and self.events:
                        self._reconcile_locked()
                    if seg is not None and (seg is not self._tail or self._in_transit == 0):
                        self._segments.popleft()  # all of it delivered, and no more will come
                        if seg is self._tail:
                            self._tail = None
                        retired.append(seg)
                        continue
                    if retired:
                        break  # delete those first (not under the lock), then look again
                    left = remaining(deadline)
                    if not left:
                        break
                    self._cond.wait(left)
            for old in retired:
                self._retire(old)
            if target is None:
                if retired and not self.closed:
                    continue
                return None
            record = self._read(*target)
            if record is not None:
                return record

    def _read(self, seg: _Segment, start: int, stop: int) -> SpoolRecord | None:
        for line in read_lines(seg.path, start, stop):
            count = 0  # a torn line's events are unknown (a segment's count left it out too)
            if line.body is not None:
                try:
                    obj = orjson.loads(line.body)
                    events = tuple(event_from_record(r) for r in obj["events"])
                    return SpoolRecord(seg, line.start, line.end, events, int(obj["n"]))
                except (ValueError, KeyError, TypeError) as exc:
                    # checked but not an event record this version reads (a newer version's
                    # spool, say): kept whole, and counted out as the segment counted it in
                    count = record_count(line.body)
                    kept = self._keep_undecodable(line.body)
                    logger.error("spool of sink %r: a record of %d event(s) in %s at byte %d does not "
                                 "decode (%s); skipped, %s", self.sink_name, count, seg.path,
                                 line.start, exc, kept)
            else:
                logger.error("spool of sink %r: a torn or damaged line in %s at byte %d; skipped",
                             self.sink_name, seg.path, line.start)
            self.corrupt += 1
            self._advance(seg, line.end, line.end - line.start, count)
            return None
        self._advance(seg, stop, stop - start, 0)  # the file is shorter than we thought
        return None

    def _keep_undecodable(self, body: bytes) -> str:
        """Append ``body`` to ``undecodable.jsonl`` in the spool's directory (0600); say where."""
        path = self.directory / "undecodable.jsonl"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                write_once(fd, body + b"\n")
            finally:
                os.close(fd)
        except OSError as exc:
            return f"and could not be kept in {path}: {exc}"
        return f"kept in {path}"

    def _reconcile_locked(self) -> None:
        """Nothing is left on disk or on its way: whatever ``events`` still says was in lines
        that could not be read (damaged while this process ran). Count it out, so flushes
        waiting for the spool to empty do not wait for lines that are gone."""
        logger.error("spool of sink %r: %d event(s) counted in were in lines that could not be read",
                     self.sink_name, self.events)
        self.left += self.events
        self.events = 0
        self.bytes = 0
        self._cond.notify_all()

    def ack(self, record: SpoolRecord) -> None:
        """``record`` was delivered (or dead-lettered): never read it again."""
        self._advance(record.segment, record.end, record.end - record.start, record.originals)

    def _advance(self, seg: _Segment, to: int, nbytes: int, count: int) -> None:
        with self._cond:
            if self.closed or to <= seg.acked:
                return
            seg.acked = to
            self.bytes = max(0, self.bytes - nbytes)
            self.events = max(0, self.events - count)
            self.left += count
            self._cond.notify_all()
        try:
            if seg.ack_fd is None:
                seg.ack_fd = os.open(seg.ack_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.pwrite(seg.ack_fd, b"%016x\n" % to, 0)
        except OSError as exc:  # delivered twice after a restart, at worst
            logger.warning("spool of sink %r: cannot record delivery in %s: %s", self.sink_name, seg.ack_path, exc)

    def _retire(self, seg: _Segment) -> None:
        """Delete a segment everything of which was delivered; let its owner go once all are."""
        for fd in (seg.fd, seg.ack_fd):
            if fd is not None:
                os.close(fd)
        seg.fd = seg.ack_fd = None
        for path in (seg.path, seg.ack_path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if not seg.own:
            with self._cond:
                done = all(s.owner != seg.owner for s in self._segments)
                fd = self._adopted.pop(seg.owner, None) if done else None
            if fd is not None:
                release(self.directory / f"{seg.owner}.lock", fd)

    # --- earlier processes' segments ---------------------------------------------------------
    def adopt(self) -> int:
        """Take over the segments of owners no longer alive (their lock is free), oldest owner
        first, behind what this spool holds; return the events found."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        except OSError as exc:  # appends will fail too: their events go to the dead letter
            logger.error("spool of sink %r: cannot read %s: %s", self.sink_name, self.directory, exc)
            return 0
        owners: dict[str, list[str]] = {}
        for name in names:
            owner, _, rest = name.partition(".")
            if rest == "lock" or rest.endswith(".seg"):
                owners.setdefault(owner, []).append(name)
        found = 0
        order = sorted(owners, key=lambda o: min(mtime(self.directory / n) for n in owners[o]))
        for owner in order:
            if owner == self._owner or owner in self._adopted:
                continue
            lock_path = self.directory / f"{owner}.lock"
            fd = lock(lock_path)
            if fd is None:
                continue  # alive
            segs = sorted(n for n in owners[owner] if n.endswith(".seg"))
            if not segs:
                release(lock_path, fd)  # a lock left behind by a process killed before spooling
                continue
            loaded = [self._load(owner, self.directory / n) for n in segs]
            with self._cond:
                for seg, count in loaded:
                    self._segments.append(seg)
                    self.bytes += seg.end - seg.acked
                    self.events += count
                    self.entered += count
                    found += count
                self._adopted[owner] = fd
                self._cond.notify_all()
        if found:
            self.adopted += found
            logger.warning("spool of sink %r: %d event(s) left by an earlier process in %s; delivering "
                           "them first", self.sink_name, found, self.directory)
        return found

    def _load(self, owner: str, path: Path) -> tuple[_Segment, int]:
        (end, acked), count = segment_events(path)
        return _Segment(owner, path, end, acked, False), count

    # --- the end -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop; delete this spool's own files if it holds nothing, else leave them for the next
        process (its lock released: adoptable at once)."""
        with self._cond:
            if self.closed:
                return
            empty = self.empty
            self.closed = True
            writing = self._tail if self._appending else None  # its descriptor is the writer's
            segments = list(self._segments)
            self._segments.clear()
            self._tail = None
            self._cond.notify_all()
        kept: set[str] = set()
        for seg in segments:
            for fd in (seg.fd, seg.ack_fd):
                if fd is not None and not (seg is writing and fd == seg.fd):
                    os.close(fd)
            seg.fd = seg.ack_fd = None
            if seg is not writing and (empty or seg.acked >= seg.end):  # delivered: never needed again
                for path in (seg.path, seg.ack_path):
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        pass
            else:
                kept.add(seg.owner)
        for owner, fd in list(self._adopted.items()):
            if owner in kept:
                os.close(fd)  # its files stay: adoptable again
            else:
                release(self.directory / f"{owner}.lock", fd)
        self._adopted.clear()
        if self._lock_fd is not None:
            if self._owner not in kept:
                release(self.directory / f"{self._owner}.lock", self._lock_fd)
            else:
                os.close(self._lock_fd)
                logger.warning("spool of sink %r keeps %d event(s) in %s for the next start",
                               self.sink_name, self.events, self.directory)
            self._lock_fd = None

    def _forget(self) -> None:
        """In a forked child: close what was inherited (the parent keeps its locks and files)."""
        with self._cond:
            self.closed = True
            segments = list(self._segments)
            self._segments.clear()
        fds = [fd for s in segments for fd in (s.fd, s.ack_fd) if fd is not None]
        fds += list(self._adopted.values()) + ([self._lock_fd] if self._lock_fd is not None else [])
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._adopted.clear()
        self._lock_fd = None
        self._cond = threading.Condition()

    def stats(self) -> dict[str, int]:
        return {"spool_events": self.events, "spool_bytes": self.bytes, "spool_adopted": self.adopted,
                "spool_corrupt": self.corrupt}


