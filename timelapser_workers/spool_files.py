"""The spool's files: directory names, owner locks, and counting what a segment holds.

A spool directory is ``<spool_dir>/<sink name, percent-encoded>/``; in it each owner (a
process's spool, named ``<pid>-<random>``) has ``<owner>.lock`` (an exclusive ``flock`` held
while it lives) and segments ``<owner>.<n>.seg`` with their watermarks ``<owner>.<n>.ack``.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote, unquote

from timelapser_workers.records import locked_fd, read_lines

__all__ = ["sink_dirname", "sink_of_dirname", "segment_events", "record_count", "spooled_events", "lock", "release", "mtime"]


def sink_dirname(sink_name: str) -> str:
    """The directory name of a sink's spool: the name percent-encoded (readable, reversible)."""
    encoded = quote(sink_name, safe="")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded


def sink_of_dirname(dirname: str) -> str:
    return unquote(dirname)


def segment_events(path: Path) -> tuple[tuple[int, int], int]:
    """((size, acknowledged bytes), events not yet acknowledged) of one segment file."""
    end = path.stat().st_size
    acked = 0
    try:
        text = path.with_suffix(".ack").read_bytes()
        value = int(text.strip() or b"0", 16)
        acked = value if 0 <= value <= end else 0
    except (OSError, ValueError):
        pass
    count = sum(record_count(line.body) for line in read_lines(path, acked, end) if line.body is not None)
    return (end, acked), count


def record_count(body: bytes) -> int:
    """The events a checked spool line says it holds (its leading ``{"n":N,``), 0 if unreadable."""
    if not body.startswith(b'{"n":'):
        return 0
    digits = body[5:body.find(b",")]
    return int(digits) if digits.isdigit() else 0


def spooled_events(root: Path) -> dict[str, int]:
    """Sink name -> events waiting in its spool under ``root`` (every owner's, alive or not):
    what the ``dead-letters`` command and the tests read, without taking anything over."""
    found: dict[str, int] = {}
    try:
        dirs = sorted(p for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return found
    for directory in dirs:
        total = 0
        for path in sorted(directory.glob("*.seg")):
            try:
                total += segment_events(path)[1]
            except OSError:
                continue
        if total:
            found[sink_of_dirname(directory.name)] = total
    return found


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def lock(path: Path) -> int | None:
    """An exclusive flock on ``path`` (made 0600 if missing), or None if another holds it."""
    return locked_fd(path, os.O_RDWR | os.O_CREAT, 0.0)


def release(path: Path, fd: int) -> None:
    """Delete a lock file we hold, then let it go."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    os.close(fd)
