"""Event records: an event as bytes on disk and back, and the one line format of our files.

:func:`encode_event` and :func:`decode_event` are the only way an event goes to disk and comes
back: the dead letter, the spool and the ``dead-letters`` command use nothing else. A record
is compact JSON of the event's id, type, data (the payload as encoded at the edge, spliced in,
not encoded again), source, worker, priority, created_at and batch_count, and, for an
aggregated event, its ``members``, each a record of its own: an aggregated event comes back
whole, and can be split back into the events it stands for.

Files hold one record per line, ``<crc32 as 8 hex digits> <json>\\n`` (:func:`frame`), each
line written by one ``write`` call. A line torn by a crash or a full disk, or damaged later,
fails its checksum and is skipped (and counted) by :func:`read_lines`, never the whole file.
Files are made 0600 and directories 0700 (:func:`open_append`, :func:`private_dir`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import orjson

from timelapser_workers.events import Event, Priority

__all__ = [
    "encode_event",
    "decode_event",
    "event_from_record",
    "frame",
    "unframe",
    "Line",
    "read_lines",
    "open_append",
    "write_once",
    "batch_lines",
    "private_dir",
    "append_records",
    "rewrite_records",
    "locked_fd",
]

_PRIORITIES = {p.name: p for p in Priority}


# --- event <-> record --------------------------------------------------------------------------
def _fields(event: Event, text: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "id": event.id, "type": text(event.type), "data": orjson.Fragment(event.payload),
        "source": text(event.source), "worker": text(event.worker), "priority": event.priority.name,
        "created_at": event.created_at, "batch_count": len(event.members) or 1,
    }
    if event.members:
        record["members"] = [orjson.Fragment(encode_event(m)) for m in event.members]
    return record


def _same(value: Any) -> Any:
    return value


def _utf8(value: Any) -> Any:
    """Text with no UTF-8 form (a lone surrogate in a worker name) made writable, visibly."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def encode_event(event: Event) -> bytes:
    """``event`` as one compact JSON record (bytes), its payload spliced in as it is."""
    try:
        return orjson.dumps(_fields(event, _same))
    except TypeError:  # a name with a lone surrogate (the payload was checked at the edge)
        return orjson.dumps(_fields(event, _utf8))


def decode_event(data: bytes | str) -> Event:
    """The Event a record (from :func:`encode_event`) holds; ValueError if it is not one."""
    try:
        record = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not an event record: {exc}") from None
    return event_from_record(record)


def event_from_record(record: Mapping[str, Any]) -> Event:
    """The Event of a record already parsed (a dict); ValueError if it is not one."""
    try:
        payload = orjson.dumps(record["data"])
        members = tuple(event_from_record(m) for m in record.get("members") or ())
        created_at = float(record["created_at"])
        event_id, etype = record["id"], record["type"]
        if not isinstance(event_id, str) or not isinstance(etype, str):
            raise TypeError("id and type must be strings")
        data = record["data"]
        job = data.get("job_id") if isinstance(data, dict) else None
        return Event(
            id=event_id, type=etype, payload=payload, source=record.get("source"),
            worker=record.get("worker"), priority=_PRIORITIES[record.get("priority") or "NORMAL"],
            created_at=created_at,
            # the monotonic clock of this process, as far back as the event's age
            created_mono=time.monotonic() - max(0.0, time.time() - created_at),
            members=members,
            job_id=job if type(job) in (str, int, float) else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"not an event record: {type(exc).__name__}: {exc}") from None


# --- lines -------------------------------------------------------------------------------------
def frame(record: bytes) -> bytes:
    """``record`` (one JSON document, no newline in it) as a line of our files."""
    return b"%08x %s\n" % (zlib.crc32(record), record)


def unframe(line: bytes) -> bytes | None:
    """The JSON of one line (newline stripped or not), or None if its checksum fails."""
    line = line.rstrip(b"\n")
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:]
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None
    return body if zlib.crc32(body) == crc else None


class Line(NamedTuple):
    """One line of a file: where it starts and ends (bytes), and its JSON (None: corrupt)."""

    start: int
    end: int
    body: bytes | None


def read_lines(path: str | os.PathLike[str], start: int = 0, stop: int | None = None) -> Iterator[Line]:
    """Every line of ``path`` from byte ``start`` (to ``stop``), checked. A line that fails
    its checksum (torn by a crash, damaged) comes back with ``body=None``; a missing file
    has no lines."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(start)
        pos = start
        for raw in f:
            end = pos + len(raw)
            if stop is not None and end > stop:
                raw, end = raw[: stop - pos], stop
            yield Line(pos, end, unframe(raw))
            pos = end
            if stop is not None and pos >= stop:
                return


# --- files -------------------------------------------------------------------------------------
def private_dir(path: Path) -> Path:
    """Make ``path`` and any missing parents, each 0700 (existing ones are left as they are)."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            pass
    return path


def open_append(path: Path) -> int:
    """A descriptor appending to ``path``, made 0600 if it is new."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)


def write_once(fd: int, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` with one ``write`` call (then fsync, if ``sync``); OSError if the disk took
    less than all of it (a full disk: the caller decides what to do about the torn part)."""
    written = os.write(fd, data)
    if written != len(data):
        raise OSError(errno.ENOSPC, f"only {written} of {len(data)} bytes were written (disk full?)")
    if sync:
        os.fsync(fd)


def _needs_newline(fd: int) -> bool:
    """True if the file behind ``fd`` does not end with a newline (a torn last line)."""
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def batch_lines(records: Sequence[bytes], fd: int) -> bytes:
    """``records`` framed as lines, after a newline if the file's last line is torn (so the
    first new record never glues onto it)."""
    data = b"".join(frame(r) for r in records)
    return b"\n" + data if _needs_newline(fd) else data


# --- shared files: appends and rewrites under one lock -------------------------------------------
_LOCK_WAIT = 10.0  # seconds an append waits for a rewrite (the dead-letters command) to finish


def locked_fd(path: Path, flags: int, wait: float) -> int | None:
    """``path`` opened with ``flags`` (made 0600) and exclusively flock'ed, the very file now at
    ``path`` (a rewrite replaces it: whoever waited on the old one opens the new one); None if
    the lock is not free within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(fd)
                        return None
                    time.sleep(0.01)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            return fd
        os.close(fd)


def _locked(path: Path, flags: int) -> int:
    fd = locked_fd(path, flags, _LOCK_WAIT)
    if fd is None:
        raise OSError(errno.EAGAIN, f"{path} stayed locked for {_LOCK_WAIT:.0f} s")
    return fd


def append_records(path: Path, records: Sequence[bytes], *, sync: bool = True) -> None:
    """Append ``records`` as lines of ``path`` (made 0600) with one ``write`` (and an fsync),
    under the file's lock. OSError if the disk refused any of it: the reader skips the torn part."""
    fd = _locked(path, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        write_once(fd, batch_lines(records, fd), sync=sync)
    finally:
        os.close(fd)


def rewrite_records(path: Path, keep: Callable[[Line], bool], *, inode: int | None = None) -> tuple[int, int]:
    """Rewrite ``path`` atomically with the lines ``keep`` says yes to (a temporary file, fsync,
    rename), under the file's lock, so appends made meanwhile are neither lost nor torn.
    ``inode``: the file must still be that one (else OSError: someone rewrote it since it was
    read). Returns (lines kept, lines dropped); corrupt lines are dropped."""
    fd = _locked(path, os.O_RDWR)
    try:
        if inode is not None and os.fstat(fd).st_ino != inode:
            raise OSError(errno.ESTALE, f"{path} was rewritten since it was read; run the command again")
        kept = dropped = 0
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            chunks = []
            for line in read_lines(path):
                if line.body is not None and keep(line):
                    chunks.append(frame(line.body))
                    kept += 1
                else:
                    dropped += 1
            write_once(out, b"".join(chunks))
        except BaseException:
            os.close(out)
            tmp.unlink(missing_ok=True)
            raise
        os.close(out)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return kept, dropped
    finally:
        os.close(fd)
