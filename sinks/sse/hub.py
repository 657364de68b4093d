"""SSEHub: fans each published batch out to every connected client, with a replay buffer.

Publishing never waits for a client: each frame is built once and appended to every matching
client's bounded queue under one short lock. A client whose queue would pass its bound is cut
off at once (counted in ``clients_dropped_slow``); its browser reconnects with
``Last-Event-ID`` and catches up from the replay buffer, so it loses nothing it could still get.

A client resuming with an id that is in the replay buffer gets exactly the events after it,
once each, in order, with no gap between the replay and the live stream (both happen under
the hub's lock). An id the buffer no longer holds (or never held) gets an in-band
``stream-reset`` event first, then everything the buffer still has.

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
from typing import Any, Callable, Iterable, Mapping, Sequence

from timelapser_workers import lifecycle

from timelapser_workers.sinks.sse.framing import event_frame
from timelapser_workers.events import Event

__all__ = ["SSEHub", "SSEClient", "Subscription", "HubFullError", "STREAM_RESET"]

log = logging.getLogger(__name__)

#: The name of the in-band control event sent when a resume id is no longer in the buffer.
STREAM_RESET = "stream-reset"


class HubFullError(Exception):
    """The hub already has ``max_clients`` clients."""


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
    """

    def __init__(
        self,
        *,
        replay_events: int = 1000,
        client_queue_events: int = 1000,
        max_clients: int = 1000,
        named_events: bool = False,
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
        """Fan ``events`` out (in order) to every matching client; return how many were new."""
        return self.publish_records([e.to_dict() for e in events])

    def publish_records(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Like :meth:`publish` for records shaped like ``Event.to_dict()`` (e.g. table rows).

        An id already in the replay buffer is skipped (counted in ``duplicates_skipped``), so
        one hub can be fed by a local SSESink and a DatabaseEventSource without doubles.
        """
        entries = []
        for record in records:
            event_id = str(record["id"])
            frame = event_frame(
                dict(record), id=event_id, event=str(record["type"]) if self.named_events else None
            )
            entries.append((event_id, frame, record.get("worker"), record.get("source"), record["type"]))
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

        Raises :class:`HubFullError` when ``max_clients`` are connected, RuntimeError when closed.
        """
        subscription = subscription or Subscription()
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
                if after is None:
                    self._stats["stream_resets"] += 1
                    client._push(self._reset_frame(last_event_id, subscription))
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

    def _reset_frame(self, last_event_id: str, subscription: Subscription) -> bytes:
        # only what this client may see: the oldest id *it* can still resume from
        oldest = next(
            (e.id for e in self._replay if subscription.matches(e.worker, e.source, e.type)), None
        )
        data = {
            "reason": "last event id is not in the replay buffer (expired or unknown)",
            "last_event_id": last_event_id,
            "oldest_available_id": oldest,
        }
        return event_frame(data, event=STREAM_RESET)

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
