"""`timelapser-workers dead-letters`: list, show, replay and purge the dead-letter file.

::

    timelapser-workers dead-letters list                      # counts by sink, reason and age
    timelapser-workers dead-letters show --sink postgresql:sse_events --limit 5
    timelapser-workers dead-letters replay --to postgresql://app@db/app
    timelapser-workers dead-letters purge --older-than 30d

The file is the default one (the ``dead_letter_path`` setting, from ``TIMELAPSER_DEAD_LETTER_PATH``
or the state directory) unless ``--file`` names another. ``replay`` sends the events again
through a sink loaded by URL (``load_sink``): sinks dedupe by event id, so replaying twice
stores nothing twice. What is refused again is settled as the lanes do (an aggregated event
split into its members, a refusal bisected) and stays in the file; so does everything after
a transient failure. ``replay`` and ``purge`` rewrite the file atomically, under its lock:
records a running batcher appends meanwhile are kept. ``list`` also shows what the sinks'
spools hold (waiting for their sink, delivered automatically).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from timelapser_workers.config import BatcherConfig
from timelapser_workers.errors import PermanentSinkError
from timelapser_workers.events import Event
from timelapser_workers.deadletter import dead_letter_lines
from timelapser_workers.records import Line, event_from_record, rewrite_records
from timelapser_workers.refusals import settle
from timelapser_workers.spool_files import spooled_events
from timelapser_workers.statedir import expand

__all__ = ["add_arguments", "run", "parse_age"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``30d``, ``12h``, ``45m``, ``90s``, ``2w`` or plain seconds, as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age; use e.g. 90s, 45m, 12h, 30d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--file", type=Path, help="the dead-letter file (default: the dead_letter_path setting)")
    common.add_argument("--sink", help="only records of this sink name")
    common.add_argument("--reason", help="only records of this reason (permanent_error, spool_full, ...)")
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("list", parents=[common], help="counts by sink, reason and age; what the spools hold")
    show = sub.add_parser("show", parents=[common], help="print records, one JSON document a line")
    show.add_argument("--limit", type=int, default=None, help="at most this many (the oldest first)")
    replay = sub.add_parser("replay", parents=[common], help="send the events again; keep what is refused")
    replay.add_argument("--to", required=True, metavar="SINK_URL", help="e.g. sqlite:///events.db, postgresql://...")
    replay.add_argument("--batch", type=int, default=500, help="events per send (default 500)")
    purge = sub.add_parser("purge", parents=[common], help="delete records older than an age")
    purge.add_argument("--older-than", required=True, type=parse_age, metavar="AGE",
                       help="e.g. 30d, 12h, 45m, 90s")


class _Record:
    __slots__ = ("line", "data")

    def __init__(self, line: Line, data: dict[str, Any]) -> None:
        self.line = line
        self.data = data


def _read(path: Path, args: argparse.Namespace) -> tuple[list[_Record], int]:
    """The records of ``path`` that match the filters, and how many lines are damaged."""
    records, damaged = [], 0
    for line, data in dead_letter_lines(path):
        if data is None:
            damaged += 1
            continue
        if args.sink is not None and data.get("sink") != args.sink:
            continue
        if args.reason is not None and data.get("reason") != args.reason:
            continue
        records.append(_Record(line, data))
    return records, damaged


def run(args: argparse.Namespace) -> int:
    path = expand(args.file) if args.file is not None else expand(BatcherConfig.resolve().dead_letter_path)
    if args.action == "list":
        return _list(path, args)
    if args.action == "show":
        return _show(path, args)
    if args.action == "replay":
        return _replay(path, args)
    return _purge(path, args)


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _list(path: Path, args: argparse.Namespace) -> int:
    records, damaged = _read(path, args)
    now = time.time()
    groups: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    events: collections.Counter[tuple[str, str]] = collections.Counter()
    for r in records:
        key = (str(r.data.get("sink")), str(r.data.get("reason")))
        groups[key].append(float(r.data.get("dead_lettered_at") or 0.0))
        events[key] += int(r.data.get("event", {}).get("batch_count") or 1)
    total = sum(events.values())
    print(f"dead letters in {path}: {len(records)} record(s), {total} event(s)"
          + (f", {damaged} damaged line(s) skipped" if damaged else ""))
    if groups:
        rows = [(sink, reason, str(events[(sink, reason)]), _ago(now - max(ts)), _ago(now - min(ts)))
                for (sink, reason), ts in sorted(groups.items())]
        _table(["sink", "reason", "events", "newest", "oldest"], rows)
    spool_dir = expand(BatcherConfig.resolve().spool_dir)
    waiting = spooled_events(spool_dir)
    if waiting:
        print(f"\nspooled in {spool_dir}, waiting for their sink (delivered automatically):")
        _table(["sink", "events"], [(sink, str(n)) for sink, n in sorted(waiting.items())])
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _show(path: Path, args: argparse.Namespace) -> int:
    records, damaged = _read(path, args)
    for r in records[: args.limit]:
        sys.stdout.write(r.line.body.decode() + "\n" if r.line.body is not None else "")
    if damaged:
        print(f"({damaged} damaged line(s) skipped)", file=sys.stderr)
    return 0


def _replay(path: Path, args: argparse.Namespace) -> int:
    from timelapser_workers.errors import SinkLoadError
    from timelapser_workers.sinks.registry import load_sink  # the app layer may load sinks
    from timelapser_workers.sinks.options import redact_url

    try:
        inode = os.stat(path).st_ino
    except FileNotFoundError:
        print(f"no dead letters: {path} does not exist")
        return 0
    records, damaged = _read(path, args)
    if not records:
        print(f"nothing to replay in {path}")
        return 0
    try:
        sink = load_sink(args.to)
    except SinkLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = redact_url(args.to)
    events: list[tuple[Event, int]] = []  # each record's event, and the line it came from
    for r in records:
        try:
            events.append((event_from_record(r.data["event"]), r.line.start))
        except (KeyError, ValueError) as exc:
            print(f"skipped the record at byte {r.line.start}: {exc}", file=sys.stderr)
    delivered: set[int] = set()
    refused = unsent = 0
    try:
        step = max(1, args.batch)
        for i in range(0, len(events), step):
            part = events[i:i + step]
            batch = [e for e, _ in part]
            try:
                sink.send(batch)
                delivered.update(start for _, start in part)
                continue
            except PermanentSinkError as exc:
                found = settle(sink.send, batch, exc)
            except Exception as exc:  # down: keep this batch and the rest for another time
                print(f"{target} failed ({type(exc).__name__}: {exc}); stopping", file=sys.stderr)
                unsent = sum(e.batch_count for e, _ in events[i:])
                break
            for item in found.refused:
                print(f"refused again: {item.event.id} ({item.event.type}): {item.error}", file=sys.stderr)
            # a record stays whole if any of it was refused or not sent (an aggregated event
            # partly stored included: replaying it again stores nothing twice)
            bad = {r.event.id for r in found.refused} | {e.id for e in found.unsent}
            delivered.update(start for e, start in part if not ({e.id, *(m.id for m in e.members)} & bad))
            refused += found.refused_count
            if found.unsent:
                unsent = found.unsent_count + sum(e.batch_count for e, _ in events[i + step:])
                print(f"{target} failed while settling a refusal; stopping", file=sys.stderr)
                break
    finally:
        close = getattr(sink, "close", None)
        if close is not None:
            close(10.0)
    if delivered:
        rewrite_records(path, lambda line: line.start not in delivered, inode=inode)
    print(f"replayed to {target}: {len(delivered)} record(s) delivered and removed, {refused} event(s) "
          f"refused again and kept, {unsent} not sent (kept)"
          + (f"; {damaged} damaged line(s) dropped" if damaged and delivered else ""))
    return 1 if unsent else 0


def _purge(path: Path, args: argparse.Namespace) -> int:
    if not path.exists():
        print(f"no dead letters: {path} does not exist")
        return 0
    inode = os.stat(path).st_ino
    records, _ = _read(path, args)
    cutoff = time.time() - args.older_than
    old = {r.line.start for r in records if float(r.data.get("dead_lettered_at") or 0.0) < cutoff}
    if not old:
        print(f"nothing older than {args.older_than:.0f} s in {path}")
        return 0
    kept, dropped = rewrite_records(path, lambda line: line.start not in old, inode=inode)
    print(f"purged {len(old)} record(s) from {path}; {kept} kept")
    return 0
