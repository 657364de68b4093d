"""RedisEventSource: follow a Redis stream into an SSEHub, and answer the hub's resume look-ups
from the stream, so web processes on many hosts serve every event with resume.

Workers write through :class:`~timelapser_workers.sinks.redis.RedisStreamSink`; each web process
runs one source. The source reads the stream in order on a daemon thread (a blocking ``XREAD``
wakes it) and publishes each entry to its hub with the entry's stream id as the SSE id, so any
process can take any ``Last-Event-ID``. It is also the hub's backing log: a resume id the hub's
replay buffer does not hold is read back from the stream (``XRANGE``) up to what this hub has
published, so a client that moves to another process gets exactly what it missed; an id that
retention (``MAXLEN``) has dropped gets ``stream-reset``.

Every read is one ``MULTI`` of ``XINFO STREAM`` and ``XRANGE``: comparing the stream's
``entries-added`` with what the source has accounted for tells it, exactly, how many entries were
trimmed before it could read them (a gap: counted, logged, and reported to every client of its
hub with ``stream-reset``), and when the stream was recreated (Redis restarted without
persistence, or the key deleted: reported with the count unknown). A lost connection or a Redis
restart is retried with backoff; the source resumes from the last id it read.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from timelapser_workers.sinks.options import redact_url
from timelapser_workers.sinks.redis import connect, split_redis_url
from timelapser_workers.sinks.sse.backing_log import Backlog
from timelapser_workers.sinks.sse.hub import SSEHub

__all__ = ["RedisEventSource", "stream_id"]

log = logging.getLogger(__name__)

StreamId = tuple[int, int]


def stream_id(text: str) -> StreamId | None:
    """``"1700000000000-3"`` as (1700000000000, 3), comparable; None if it is not a stream id."""
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or len(text) > 41:
        return None
    return int(ms), int(seq)


class RedisEventSource:
    """Follow ``stream`` at ``url`` into ``hub`` on a daemon thread; ``start()``, then ``stop()``.

    ``url``: ``redis://host:port/db?stream=NAME`` (or give ``stream=``). The source attaches itself
    as the hub's backing log. ``read_count``: entries per read. ``block_seconds``: how long one
    blocking ``XREAD`` waits before the loop looks again. ``backfill_events``: entries loaded into
    the replay buffer at start (at least 1). ``resume_events``: the most a resume reads back from the stream
    (further behind gets ``stream-reset``). ``catch_up_seconds``: how long a resume waits for
    this source to reach an id another process already served. ``reconnect_max_seconds``: the
    backoff cap while Redis is unreachable. ``socket_timeout`` and ``connect_timeout`` (s)
    bound every other wait.
    """

    def __init__(
        self,
        url: str,
        hub: SSEHub,
        *,
        stream: str | None = None,
        read_count: int = 1000,
        block_seconds: float = 1.0,
        backfill_events: int = 100,
        resume_events: int = 10_000,
        catch_up_seconds: float = 2.0,
        reconnect_max_seconds: float = 5.0,
        socket_timeout: float = 5.0,
        connect_timeout: float = 3.0,
    ) -> None:
        client_url, options = split_redis_url(url, {"stream": str})
        if stream is not None and "stream" in options:
            raise ValueError(f"stream given both in the URL {redact_url(url)!r} and as an argument; give it once")
        self.stream = stream if stream is not None else options.get("stream", "timelapser_events")
        if not isinstance(self.stream, str) or not self.stream:
            raise ValueError(f"stream {self.stream!r} is not a valid stream key; give a non-empty name")
        for what, value in (("read_count", read_count), ("resume_events", resume_events)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RedisEventSource {what}={value!r} must be a positive int")
        if not isinstance(backfill_events, int) or isinstance(backfill_events, bool) or backfill_events < 1:
            raise ValueError(f"RedisEventSource backfill_events={backfill_events!r} must be an int >= 1 "
                             "(the newest entry, at least, anchors resumes right after start)")
        if hub.backing_log is not None and hub.backing_log is not self:
            raise ValueError(f"hub {hub!r} already has a backing log ({hub.backing_log!r}); one source per hub")
        self.hub = hub
        self.read_count = read_count
        self.block_seconds = float(block_seconds)
        self.backfill_events = backfill_events
        self.resume_events = resume_events
        self.catch_up_seconds = float(catch_up_seconds)
        self.reconnect_max_seconds = float(reconnect_max_seconds)
        # the reader blocks in XREAD: its socket waits that long plus the usual deadline
        self._reader = connect(client_url, socket_timeout=self.block_seconds + socket_timeout,
                               connect_timeout=connect_timeout, decode=True)
        self._client = connect(client_url, socket_timeout=socket_timeout, connect_timeout=connect_timeout, decode=True)
        self._reader_id: int | None = None
        self.position: str | None = None  # the last stream id read (None: not yet placed)
        self._added = 0  # the stream's entries-added count at ``position``
        self._published: StreamId | None = None  # the last id handed to the hub
        self.published_id: str | None = None
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failures = 0
        self.counters = {
            "entries_read": 0,
            "entries_published": 0,
            "entries_malformed": 0,
            "reads": 0,
            "read_errors": 0,
            "reconnects": 0,
            "gaps": 0,
            "entries_lost": 0,
            "stream_recreated": 0,
            "resume_reads": 0,
        }
        hub.backing_log = self

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "RedisEventSource":
        """Place the source at the stream's end (backfilling the hub), then follow it on a daemon
        thread. If Redis is unreachable now, the thread places it once Redis answers. Returns self."""
        if self._thread is not None:
            raise RuntimeError("RedisEventSource already started")
        try:
            self._place_at_end()
        except Exception as exc:
            log.warning("Redis stream %s unreachable at start (%s); following it once it answers", self.stream, exc)
        self._thread = threading.Thread(target=self._run, name=f"sse-redis-source-{self.stream}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (waking its blocking read) within ``timeout`` seconds; close the clients."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        while self._thread is not None and self._thread.is_alive() and time.monotonic() < deadline:
            reader_id = self._reader_id
            if reader_id is not None:
                try:
                    self._client.client_unblock(reader_id)
                except Exception:  # Redis down: the read ends at its socket timeout
                    pass
            self._thread.join(min(0.2, max(0.0, deadline - time.monotonic())))
        if self._thread is not None and self._thread.is_alive():
            log.warning("RedisEventSource thread did not stop within %.1fs", timeout)
        self._reader.close()
        self._client.close()

    def stats(self) -> dict[str, Any]:
        """Counters, the position read up to and the id published last."""
        return {**self.counters, "position": self.position, "published_id": self.published_id}

    # --- following the stream -----------------------------------------------------------------
    def _run(self) -> None:
        delay = 0.0
        while not self._stop.is_set():
            try:
                if self.position is None:
                    self._place_at_end()
                if self.poll_once() == 0 and not self._stop.is_set():
                    self._wait_for_more()
                if self._failures:
                    log.info("Redis stream %s reachable again after %d failed reads", self.stream, self._failures)
                    self.counters["reconnects"] += 1
                self._failures = 0
                delay = 0.0
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._reader_id = None
                self._failures += 1
                self.counters["read_errors"] += 1
                delay = min(max(delay * 2, 0.05), self.reconnect_max_seconds)
                level = logging.WARNING if self._failures == 1 else logging.DEBUG
                log.log(level, "reading Redis stream %s failed (%s); retrying in %.2fs", self.stream, exc, delay)
                self._stop.wait(delay)

    def _place_at_end(self) -> None:
        pipe = self._reader.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.xrevrange(self.stream, count=self.backfill_events)
        info, tail = pipe.execute(raise_on_error=False)
        if isinstance(tail, Exception):
            raise tail
        if isinstance(info, Exception):
            if "no such key" not in str(info).lower():
                raise info
            self.position, self._added = "0-0", 0  # no stream yet: read it from its first entry
            return
        self._publish(list(reversed(tail)))
        self.position, self._added = str(info["last-generated-id"]), int(info["entries-added"])

    def poll_once(self) -> int:
        """Read what is new into the hub (one MULTI: XINFO STREAM + XRANGE); return entries read."""
        position = self.position
        assert position is not None
        pipe = self._reader.pipeline(transaction=True)
        pipe.xinfo_stream(self.stream)
        pipe.xrange(self.stream, min="(" + position, max="+", count=self.read_count)
        info, entries = pipe.execute(raise_on_error=False)
        if isinstance(entries, Exception):
            raise entries
        self.counters["reads"] += 1
        if isinstance(info, Exception):
            if "no such key" not in str(info).lower():
                raise info
            if self._added:
                self._recreated("the stream is gone (deleted, or Redis restarted without persistence)")
            return 0
        added, length = int(info["entries-added"]), int(info["length"])
        first = info.get("first-entry")
        here = stream_id(position)
        if added < self._added or (stream_id(str(info["last-generated-id"])) or (0, 0)) < (here or (0, 0)):
            self._recreated("the stream was recreated (Redis restarted without persistence, or the key was deleted)")
            return 0
        if first and (stream_id(first[0]) or (0, 0)) > (here or (0, 0)):
            lost = added - self._added - length  # entries after ``position`` that are gone
            if lost < 0:
                self._recreated("the stream was recreated (its entry count went back)")
                return 0
            if lost:
                self._gap(position, lost)
        if entries:
            self._added += len(entries)
            self.position = entries[-1][0]
            self.counters["entries_read"] += len(entries)
            self._publish(entries)
        return len(entries)

    def _wait_for_more(self) -> None:
        """Block in XREAD until something follows ``position`` (or ``block_seconds`` pass)."""
        if self._reader_id is None:
            self._reader_id = int(self._reader.client_id())
        assert self.position is not None
        self._reader.xread({self.stream: self.position}, count=1, block=max(1, int(self.block_seconds * 1000)))

    def _gap(self, position: str, lost: int) -> None:
        self._added += lost
        self.counters["gaps"] += 1
        self.counters["entries_lost"] += lost
        log.warning(
            "Redis stream %s: %d entries after %s were trimmed (MAXLEN) before this source read them; "
            "telling %d clients (stream-reset)", self.stream, lost, position, self.hub.client_count,
        )
        self.hub.reset_stream(
            "retention (MAXLEN) dropped events from the stream before this server read them",
            lost=lost, after_id=position, stream=self.stream,
        )

    def _recreated(self, why: str) -> None:
        self.counters["stream_recreated"] += 1
        log.warning("Redis stream %s: %s; events written since %s may be lost (count unknown)", self.stream, why, self.position)
        self.hub.reset_stream(why, lost=None, after_id=self.position, stream=self.stream)
        self.position, self._added = "0-0", 0

    def _publish(self, entries: list[Any]) -> None:
        ids, records = _records(entries, self)
        if not records:
            return
        self.hub.publish_records(records, ids=ids)
        with self._cond:
            self._published = stream_id(ids[-1])
            self.published_id = ids[-1]
            self.counters["entries_published"] += len(records)
            self._cond.notify_all()

    # --- the hub's backing log ----------------------------------------------------------------
    def read_after(self, last_event_id: str) -> Backlog:
        """The entries after ``last_event_id`` up to what this source has published (waiting up
        to ``catch_up_seconds`` for it to reach an id another process served already)."""
        want = stream_id(last_event_id)
        if want is None:
            return Backlog(lost=f"Last-Event-ID {last_event_id[:60]!r} is not an id of stream {self.stream!r}")
        with self._cond:
            self.counters["resume_reads"] += 1  # from request threads: under the lock
            behind = self._published is None or self._published < want
        if behind:  # served elsewhere already, or never: the stream's newest entry tells which
            newest = self._client.xrevrange(self.stream, count=1)
            if not newest or (stream_id(str(newest[0][0])) or (0, 0)) < want:
                return Backlog(lost=f"{last_event_id} is newer than any entry of stream {self.stream!r}")
        deadline = time.monotonic() + self.catch_up_seconds
        with self._cond:
            while (self._published is None or self._published < want) and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            published, published_id = self._published, self.published_id
        if published is None or published_id is None or published < want:
            return Backlog(lost=f"this server has read stream {self.stream!r} only up to {published_id}, "
                                f"not {last_event_id} (behind, or the id is unknown)")
        pipe = self._client.pipeline(transaction=True)
        pipe.xrange(self.stream, min=last_event_id, max=last_event_id)
        pipe.xinfo_stream(self.stream)
        pipe.xrange(self.stream, min="(" + last_event_id, max=published_id, count=self.resume_events + 1)
        at, info, entries = pipe.execute(raise_on_error=False)
        for reply in (at, info, entries):
            if isinstance(reply, Exception):
                return Backlog(lost=f"stream {self.stream!r} cannot be read back: {reply}"[:300])
        if not at:
            first = info.get("first-entry")
            if not first or (stream_id(first[0]) or (0, 0)) > want:
                return Backlog(lost=f"retention (MAXLEN) has dropped {last_event_id} and what followed it "
                                    f"from stream {self.stream!r}")
            return Backlog(lost=f"{last_event_id} is not an entry of stream {self.stream!r}")
        if len(entries) > self.resume_events:
            return Backlog(lost=f"more than resume_events={self.resume_events} events were missed")
        ids, records = _records(entries, None)
        return Backlog(entries=list(zip(ids, records)))


def _records(entries: list[Any], counting: RedisEventSource | None) -> tuple[list[str], list[dict[str, Any]]]:
    """(stream ids, records) of well-formed entries; a malformed one is skipped (and counted)."""
    ids: list[str] = []
    records: list[dict[str, Any]] = []
    for sid, fields in entries:
        try:
            record = json.loads(fields["event"])
            if not isinstance(record, dict) or not isinstance(record.get("type"), str):
                raise ValueError("not an event record")
        except (KeyError, TypeError, ValueError) as exc:
            if counting is not None:
                counting.counters["entries_malformed"] += 1
                log.warning("Redis stream entry %s is not an event written by RedisStreamSink (%s); skipped", sid, exc)
            continue
        record["id"] = fields.get("id", record.get("id"))
        ids.append(sid)
        records.append(record)
    return ids, records
