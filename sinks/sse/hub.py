"""SSEHub: fans each published batch out to every connected client, with a replay buffer.

Publishing never waits for a client: each frame is built once and appended to every matching
client's bounded queue under one short lock. A client whose queue would pass its bound is cut
off at once (counted in ``clients_dropped_slow``); its browser reconnects with
``Last-Event-ID`` and catches up from the replay buffer, so it loses nothing it could still get.

A client resuming with an id that is in the replay buffer gets exactly the events after it,
once each, in order, with no gap between the replay and the live stream (both happen under
the hub's lock). An id the buffer no longer holds (or never held) gets an in-band
``stream-reset`` event first, then everything the buffer still has.

A hub fed from a shared log (a Redis stream, see :mod:`timelapser_workers.sources.redis`) can
be given that log as its :class:`BackingLog`: a resume id the buffer does not hold is then looked
up there (outside the hub's lock), so a client that moves to another web process with its
``Last-Event-ID`` gets exactly what it missed, and ``stream-reset`` only when the log has lost it
too. :meth:`SSEHub.reset_stream` tells every client that events were lost upstream.

Cost per published batch: each event's frame is encoded once; a client that sees every event
gets the whole batch as one pre-joined chunk (one queue entry, one write), a filtered client
gets its matching frames. A writer takes all that is pending for its client at once.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from timelapser_workers import lifecycle
from timelapser_workers.sinks.sse.backing_log import Backlog, BackingLog
from timelapser_workers.sinks.sse.framing import event_frame, json_frame
from timelapser_workers.events import Event

__all__ = ["SSEHub", "SSEClient", "Subscription", "HubFullError", "STREAM_RESET", "BackingLog", "Backlog"]

log = logging.getLogger(__name__)

#: The name of the in-band control event sent when a resume id is no longer in the buffer.
STREAM_RESET = "stream-reset"


class HubFullError(Exception):
    """The hub already has ``max_clients`` clients."""


class _Backfill(NamedTuple):
    """A backing log's answer, framed outside the hub's lock: (SSE id, record, frame) each."""

    framed: list[tuple[str, Mapping[str, Any], bytes]]
    lost: str | None


@dataclasses.dataclass(frozen=True)
class Subscription:
    """Which events one client sees.

    ``workers``/``sources``/``types``: what the client asked for (None: no filter on that field;
    several fields must all match). ``allowed``: channels the authorization hook permits, as
    ``"worker:NAME"``, ``"source:NAME"``, ``"type:NAME"`` or ``"*"`` (None: everything); an event
    is visible when any one of its channels is allowed.
    """

    workers: frozenset[str] | None = None
    sources: frozenset[str] | None = None
    types: frozenset[str] | None = None
    allowed: frozenset[str] | None = None

    def everything(self) -> bool:
        """True when this client sees every event (no filter, no restriction)."""
        return (
            self.workers is None and self.sources is None and self.types is None
            and (self.allowed is None or "*" in self.allowed)
        )

    def matches(self, worker: str | None, source: str | None, type: str | None) -> bool:
        """True when an event with these fields should reach this client."""
        if self.workers is not None and worker not in self.workers:
            return False
        if self.sources is not None and source not in self.sources:
            return False
        if self.types is not None and type not in self.types:
            return False
        if self.allowed is None or "*" in self.allowed:
            return True
        return (
            f"worker:{worker}" in self.allowed
            or f"source:{source}" in self.allowed
            or f"type:{type}" in self.allowed
        )


class _Entry:
    __slots__ = ("seq", "id", "frame", "worker", "source", "type")

    def __init__(self, seq: int, id: str, frame: bytes, worker: Any, source: Any, type: Any) -> None:
        self.seq, self.id, self.frame = seq, id, frame
        self.worker, self.source, self.type = worker, source, type


class SSEClient:
    """One connected stream: a bounded queue of frames and a way to wake its writer.

    The writer (a WSGI iterator or an ASGI task) calls :meth:`take` for what is pending and
    :meth:`wait` (threads) or ``on_ready`` (event loops) to sleep until there is more.
    """

    def __init__(
        self, hub: "SSEHub", number: int, subscription: Subscription, max_queue: int
    ) -> None:
        self.hub = hub
        self.number = number
        self.subscription = subscription
        self.max_queue = max_queue
        self.closed_reason: str | None = None
        #: Called (from any thread) whenever frames arrive or the client is closed.
        self.on_ready: Callable[[], None] | None = None
        self._frames: collections.deque[bytes] = collections.deque()
        self._queued = 0  # events in _frames (a chunk holds a whole batch)
        self._ready = threading.Event()
        self.sees_everything = subscription.everything()

    @property
    def closed(self) -> bool:
        """True once the hub cut this client off (slow, server-side close, hub closed)."""
        return self.closed_reason is not None

    @property
    def reconnect(self) -> bool:
        """True when the server ended this stream on purpose (stopping, ``disconnect_all``):
        its writer sends a last ``retry`` hint. A client cut off as slow just loses the
        connection (its queue is dropped) and reconnects with its usual delay."""
        return self.closed_reason is not None and self.closed_reason != "slow"

    def take(self) -> list[bytes]:
        """Return and forget every pending frame (possibly none)."""
        with self.hub._lock:
            frames = list(self._frames)
            self._frames.clear()
            self._queued = 0
            self._ready.clear()
            self.max_queue = self.hub.client_queue_events  # a resume backlog, once taken, is gone
        return frames

    def wait(self, timeout: float) -> bool:
        """Block until frames are pending or the client closed, at most ``timeout`` seconds."""
        return self._ready.wait(timeout)

    def pending(self) -> int:
        """How many events wait to be written."""
        return self._queued

    # called with the hub's lock held
    def _push(self, frame: bytes, events: int = 1) -> bool:
        if self._queued + events > self.max_queue:
            return False
        self._frames.append(frame)
        self._queued += events
        return True

    def _signal(self) -> None:
        self._ready.set()
        callback = self.on_ready
        if callback is not None:
            try:
                callback()
            except Exception:  # an event loop that already closed: the writer is gone too
                log.debug("on_ready callback of SSE client %d failed", self.number, exc_info=True)

    def __repr__(self) -> str:
        return f"<SSEClient #{self.number} pending={self._queued} closed={self.closed_reason}>"


class SSEHub:
    """Fan-out of events to SSE clients, with a replay buffer of the last ``replay_events``.

    ``client_queue_events``: events one client may have waiting before it is cut off as slow.
    ``max_clients``: :meth:`subscribe` raises :class:`HubFullError` beyond it (HTTP 503).
    ``named_events``: send each event with ``event: <type>`` (listen with addEventListener);
    by default events arrive as plain messages (``onmessage``) carrying their type in the JSON.
    ``backing_log``: see :class:`BackingLog` (a source may attach itself later).
    """

    def __init__(
        self,
        *,
        replay_events: int = 1000,
        client_queue_events: int = 1000,
        max_clients: int = 1000,
        named_events: bool = False,
        backing_log: BackingLog | None = None,
    ) -> None:
        for name, value in (
            ("replay_events", replay_events),
            ("client_queue_events", client_queue_events),
            ("max_clients", max_clients),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SSEHub {name} must be a positive int, got {value!r}")
        self.replay_events = replay_events
        self.client_queue_events = client_queue_events
        self.max_clients = max_clients
        self.named_events = named_events
        #: Asked for resume ids the replay buffer does not hold (None: they get stream-reset).
        self.backing_log = backing_log
        self._lock = threading.Lock()
        self._writers_done = threading.Condition(self._lock)
        self._replay: collections.deque[_Entry] = collections.deque()
        self._index: dict[str, int] = {}  # event id -> seq, for what the replay buffer holds
        self._seq = itertools.count(1)
        self._numbers = itertools.count(1)
        self._clients: set[SSEClient] = set()
        self._open: set[SSEClient] = set()  # subscribed and not yet unsubscribed (writer running)
        self._closed = False
        self._stats = collections.Counter(
            {
                "events_published": 0,
                "duplicates_skipped": 0,
                "frames_queued": 0,
                "clients_total": 0,
                "clients_peak": 0,
                "clients_refused_full": 0,
                "clients_dropped_slow": 0,
                "clients_closed_by_server": 0,
                "resumes": 0,
                "stream_resets": 0,
                "resumes_from_backing_log": 0,
                "backing_log_errors": 0,
                "upstream_resets": 0,
            }
        )
        lifecycle.after_fork_in_child(self._after_fork)

    def _after_fork(self) -> None:
        """In a forked child: fresh locks; the parent's connections are not this process's."""
        self._lock = threading.Lock()
        self._writers_done = threading.Condition(self._lock)
        self._clients = set()
        self._open = set()

    # --- publishing ---------------------------------------------------------------------------
    def publish(self, events: Iterable[Event]) -> int:
        """Fan ``events`` out (in order) to every matching client; return how many were new.
        Each frame is the event's ``to_json()``: its payload as encoded where it was made."""
        named = self.named_events
        return self._publish([
            (e.id, json_frame(e.to_json(), id=e.id, event=e.type if named else None), e.worker, e.source, e.type)
            for e in events
        ])

    def publish_records(self, records: Sequence[Mapping[str, Any]], ids: Sequence[str] | None = None) -> int:
        """Like :meth:`publish` for records shaped like ``Event.to_dict()`` (e.g. table rows).

        ``ids``: the SSE ids, one per record (default: each record's ``"id"``); a source whose
        log has ids of its own (a Redis stream's entry ids) sends those, so they can come back
        as ``Last-Event-ID`` to any process reading the same log.

        An id already in the replay buffer is skipped (counted in ``duplicates_skipped``), so
        one hub can be fed by a local SSESink and a DatabaseEventSource without doubles.
        """
        if ids is not None and len(ids) != len(records):
            raise ValueError(f"publish_records got {len(ids)} ids for {len(records)} records; give one id per record")
        entries = []
        for i, record in enumerate(records):
            event_id = str(record["id"]) if ids is None else ids[i]
            frame = self._frame(event_id, record)
            entries.append((event_id, frame, record.get("worker"), record.get("source"), record["type"]))
        return self._publish(entries)

    def _publish(self, entries: Sequence[tuple[str, bytes, Any, Any, Any]]) -> int:
        """Remember and fan out framed entries: (sse id, frame, worker, source, type)."""
        slow: list[SSEClient] = []
        with self._lock:
            if self._closed:
                return 0
            fresh: list[_Entry] = []
            for event_id, frame, worker, source, etype in entries:
                if event_id in self._index:  # (_remember indexes each new one at once)
                    self._stats["duplicates_skipped"] += 1
                    continue
                entry = _Entry(next(self._seq), event_id, frame, worker, source, etype)
                self._remember(entry)
                fresh.append(entry)
            if not fresh:
                return 0
            chunk = fresh[0].frame if len(fresh) == 1 else b"".join(e.frame for e in fresh)
            targets = [c for c in self._clients if c.closed_reason is None]
            for client in targets:
                if client.sees_everything:
                    ok, queued = client._push(chunk, len(fresh)), len(fresh)
                else:
                    mine = [e.frame for e in fresh if client.subscription.matches(e.worker, e.source, e.type)]
                    if not mine:
                        continue
                    ok, queued = client._push(b"".join(mine), len(mine)), len(mine)
                if ok:
                    self._stats["frames_queued"] += queued
                else:
                    slow.append(client)
                    self._close_locked(client, "slow")
            self._stats["events_published"] += len(fresh)
        for client in slow:
            log.warning(
                "SSE client #%d cut off: more than %d events waiting (client_queue_events=%d)",
                client.number, client.max_queue, self.client_queue_events,
            )
        for client in targets:
            if client._frames or client.closed_reason is not None:
                client._signal()
        return len(fresh)

    def _frame(self, sse_id: str, record: Mapping[str, Any]) -> bytes:
        return event_frame(dict(record), id=sse_id, event=str(record["type"]) if self.named_events else None)

    def _remember(self, entry: _Entry) -> None:
        self._replay.append(entry)
        self._index[entry.id] = entry.seq
        while len(self._replay) > self.replay_events:
            old = self._replay.popleft()
            self._index.pop(old.id, None)

    # --- clients ------------------------------------------------------------------------------
    def subscribe(
        self, subscription: Subscription | None = None, last_event_id: str | None = None
    ) -> SSEClient:
        """Register a client; with ``last_event_id``, queue what it missed (or a stream-reset).

        An id the replay buffer does not hold is looked up in the backing log, if there is one
        (this may block on the log's I/O, never under the hub's lock).
        Raises :class:`HubFullError` when ``max_clients`` are connected, RuntimeError when closed.
        """
        subscription = subscription or Subscription()
        backlog: _Backfill | None = None
        if last_event_id is not None and self.backing_log is not None:
            with self._lock:
                held = last_event_id in self._index
            if not held:  # (an id evicted between this look and the lock below gets stream-reset)
                backlog = self._read_backing_log(last_event_id)
        with self._lock:
            if self._closed:
                raise RuntimeError("SSEHub is closed (the server is stopping)")
            if len(self._clients) >= self.max_clients:
                self._stats["clients_refused_full"] += 1
                raise HubFullError(f"SSE hub has its maximum of {self.max_clients} clients")
            # the backlog may be as long as the replay buffer; the bound applies to live frames
            client = SSEClient(self, next(self._numbers), subscription, self.client_queue_events)
            if last_event_id is not None:
                self._stats["resumes"] += 1
                client.max_queue = self.client_queue_events + len(self._replay) + 1
                after = self._index.get(last_event_id)
                if after is None and backlog is not None:
                    after = self._splice_backlog(client, last_event_id, backlog)
                if after is None:
                    self._stats["stream_resets"] += 1
                    client._push(self._reset_frame(last_event_id, subscription, backlog.lost if backlog else None))
                    after = 0
                for entry in self._replay:
                    if entry.seq > after and subscription.matches(entry.worker, entry.source, entry.type):
                        client._push(entry.frame)
            self._clients.add(client)
            self._open.add(client)
            self._stats["clients_total"] += 1
            self._stats["clients_peak"] = max(self._stats["clients_peak"], len(self._clients))
        if client._frames:
            client._signal()
        return client

    def _read_backing_log(self, last_event_id: str) -> "_Backfill":
        """Ask the backing log (outside the lock) and frame its entries; a failure counts as lost."""
        assert self.backing_log is not None
        try:
            backlog = self.backing_log.read_after(last_event_id)
            if backlog.lost is not None:
                return _Backfill([], backlog.lost)
            return _Backfill([(sid, rec, self._frame(sid, rec)) for sid, rec in backlog.entries], None)
        except Exception as exc:
            with self._lock:
                self._stats["backing_log_errors"] += 1
            log.warning("SSE backing log failed for Last-Event-ID %r: %s", last_event_id, exc)
            return _Backfill([], f"the backing log failed: {type(exc).__name__}: {exc}"[:300])

    def _splice_backlog(self, client: SSEClient, last_event_id: str, backfill: "_Backfill") -> int | None:
        """(Lock held.) Queue the backing log's entries; return the seq the replay buffer goes
        on after, or None when the log lost them or the buffer no longer holds their last one."""
        if backfill.lost is not None:
            return None
        through = backfill.framed[-1][0] if backfill.framed else last_event_id
        after = self._index.get(through)
        if after is None:  # the buffer moved past it meanwhile, or never had it
            return None
        client.max_queue += len(backfill.framed)
        sub = client.subscription
        for _sid, record, frame in backfill.framed:
            if sub.matches(record.get("worker"), record.get("source"), record.get("type")):
                client._push(frame)
        self._stats["resumes_from_backing_log"] += 1
        return after

    def _reset_frame(self, last_event_id: str, subscription: Subscription, lost: str | None = None) -> bytes:
        # only what this client may see: the oldest id *it* can still resume from
        oldest = next(
            (e.id for e in self._replay if subscription.matches(e.worker, e.source, e.type)), None
        )
        data = {
            "reason": lost or "last event id is not in the replay buffer (expired or unknown)",
            "last_event_id": last_event_id,
            "oldest_available_id": oldest,
        }
        return event_frame(data, event=STREAM_RESET)

    def reset_stream(self, reason: str, **details: Any) -> int:
        """Events were lost upstream: forget the replay buffer and send every client a
        ``stream-reset`` event (data: ``reason`` and ``details``), so browsers reload their state
        instead of silently missing events. Returns how many clients were told.
        """
        frame = event_frame({"reason": reason, **details}, event=STREAM_RESET)
        with self._lock:
            self._replay.clear()
            self._index.clear()
            self._stats["upstream_resets"] += 1
            clients = [c for c in self._clients if c.closed_reason is None]
            slow = [c for c in clients if not c._push(frame)]
            for client in slow:
                self._close_locked(client, "slow")
        for client in clients:
            client._signal()
        return len(clients) - len(slow)

    def unsubscribe(self, client: SSEClient) -> None:
        """Forget ``client`` and its pending frames (idempotent); its writer is done."""
        with self._lock:
            self._clients.discard(client)
            self._open.discard(client)
            client._frames.clear()
            client._queued = 0
            self._writers_done.notify_all()

    def _close_locked(self, client: SSEClient, reason: str) -> None:
        if client.closed_reason is None:
            client.closed_reason = reason
            if reason == "slow":
                client._frames.clear()  # its memory is the point; the browser resumes from replay
                client._queued = 0
            # otherwise the writer sends what is already queued, then ends the stream
            self._clients.discard(client)
            if reason == "slow":
                self._stats["clients_dropped_slow"] += 1
            else:
                self._stats["clients_closed_by_server"] += 1

    def disconnect(self, client: SSEClient, reason: str = "server") -> None:
        """End one client's stream after what is queued for it (its writer sends a ``retry``)."""
        with self._lock:
            self._close_locked(client, reason)
        client._signal()

    def disconnect_all(self, reason: str = "server") -> int:
        """End every client's stream after what is already queued for it; return how many.

        Each writer sends a last ``retry`` hint; browsers reconnect (here or to another
        server) and resume with ``Last-Event-ID``.
        """
        with self._lock:
            clients = list(self._clients)
            for client in clients:
                self._close_locked(client, reason)
        for client in clients:
            client._signal()
        return len(clients)

    def close(self, timeout: float = 0.0) -> int:
        """Refuse new clients and events, end every stream, and wait up to ``timeout`` seconds
        for their writers to send what is queued and the last ``retry`` hint. Returns how many
        writers had not finished by then (0: every browser was told to reconnect)."""
        with self._lock:
            self._closed = True
        self.disconnect_all("server stopping")
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._open:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._writers_done.wait(left)
            return len(self._open)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    # --- introspection ------------------------------------------------------------------------
    @property
    def client_count(self) -> int:
        """Clients connected now."""
        return len(self._clients)

    def replay_ids(self) -> list[str]:
        """The ids the replay buffer holds, oldest first."""
        with self._lock:
            return [e.id for e in self._replay]

    def stats(self) -> dict[str, int]:
        """Counters (published, skipped, clients, drops, resumes, resets) and current sizes."""
        with self._lock:
            out = dict(self._stats)
            out["clients"] = len(self._clients)
            out["replay_buffered"] = len(self._replay)
            out["frames_pending"] = sum(c._queued for c in self._clients)
        return out
