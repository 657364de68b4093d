"""SSEHub with a backing log: a resume id the replay buffer lacks is read back from the log and
spliced into the live stream without a gap or a double; what the log lost gets stream-reset.
Also the hub's other additions for shared logs: SSE ids of the log's own (publish_records(ids=))
and reset_stream() for events lost upstream.

The log here is a list in memory (the subject is the hub's side of sinks/sse/backing_log.py);
the Redis stream behind it in production is tested in tests/redis.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable

import pytest

from timelapser_workers.sinks.sse import STREAM_RESET, SSEHub, Subscription
from timelapser_workers.sinks.sse.backing_log import Backlog


def record(n: int, worker: str = "w1") -> dict[str, Any]:
    return {"id": f"ev{n}", "type": "JOB_COMPLETED", "data": {"n": n}, "worker": worker, "source": "s"}


def sse_id(n: int) -> str:
    return f"{n}-0"


class ListLog:
    """Every record ever published, by SSE id: a log that keeps everything from ``first`` on."""

    def __init__(self, hub: SSEHub) -> None:
        self.hub = hub
        self.entries: list[tuple[str, dict[str, Any]]] = []
        self.first = 0  # entries before this index are "trimmed"
        self.calls = 0
        self.during_read: Callable[[], None] | None = None
        hub.backing_log = self

    def publish(self, *numbers: int, worker: str = "w1") -> None:
        batch = [(sse_id(n), record(n, worker)) for n in numbers]
        self.entries += batch
        self.hub.publish_records([r for _, r in batch], ids=[i for i, _ in batch])

    def read_after(self, last_event_id: str) -> Backlog:
        self.calls += 1
        if self.during_read is not None:
            self.during_read()  # the hub's lock is not held: publishing here must not deadlock
        ids = [i for i, _ in self.entries]
        if last_event_id not in ids:
            return Backlog(lost=f"{last_event_id} is unknown to the list")
        at = ids.index(last_event_id)
        if at < self.first:
            return Backlog(lost=f"retention dropped {last_event_id}")
        return Backlog(entries=self.entries[at + 1 :])


def frames(client: Any) -> list[dict[str, Any]]:
    """The client's pending frames, parsed: {'id', 'event', 'data'}."""
    out = []
    # a take may hold a whole batch in one chunk: split it at the blank lines that end frames
    for frame in (f for f in b"".join(client.take()).split(b"\n\n") if f.strip()):
        fields: dict[str, Any] = {"id": None, "event": "message"}
        for line in frame.decode().strip().split("\n"):
            name, _, value = line.partition(": ")
            fields[name] = json.loads(value) if name == "data" else value
        out.append(fields)
    return out


def test_publish_records_with_ids_of_the_log_keeps_the_record_id_in_the_data() -> None:
    hub = SSEHub()
    client = hub.subscribe()
    hub.publish_records([record(1), record(2)], ids=["1-0", "2-0"])
    got = frames(client)
    assert [f["id"] for f in got] == ["1-0", "2-0"]
    assert [f["data"]["id"] for f in got] == ["ev1", "ev2"]
    assert hub.replay_ids() == ["1-0", "2-0"]
    with pytest.raises(ValueError, match="2 ids for 1 records"):
        hub.publish_records([record(3)], ids=["3-0", "4-0"])


def test_a_miss_is_read_back_from_the_log_and_spliced_into_the_live_stream() -> None:
    hub = SSEHub(replay_events=3)
    log = ListLog(hub)
    log.publish(*range(1, 11))
    assert hub.replay_ids() == ["8-0", "9-0", "10-0"]
    resumed = hub.subscribe(Subscription(), last_event_id=sse_id(4))
    log.publish(11, 12)
    assert [f["data"]["data"]["n"] for f in frames(resumed)] == list(range(5, 13))
    assert log.calls == 1 and hub.stats()["resumes_from_backing_log"] == 1
    assert hub.stats()["stream_resets"] == 0
    # an id the buffer holds never asks the log
    hub.subscribe(last_event_id=sse_id(11))
    assert log.calls == 1


def test_the_backlog_is_filtered_by_the_subscription_like_live_events() -> None:
    hub = SSEHub(replay_events=2)
    log = ListLog(hub)
    for n in range(1, 9):
        log.publish(n, worker="w1" if n % 2 else "w2")
    client = hub.subscribe(Subscription(workers=frozenset({"w2"})), last_event_id=sse_id(1))
    assert [f["data"]["data"]["n"] for f in frames(client)] == [2, 4, 6, 8]


def test_events_published_while_the_log_is_read_arrive_once_in_order() -> None:
    hub = SSEHub(replay_events=3)
    log = ListLog(hub)
    log.publish(*range(1, 8))
    log.during_read = lambda: log.publish(8, 9)  # another thread would do this; same lock rules
    client = hub.subscribe(last_event_id=sse_id(2))
    log.during_read = None
    log.publish(10)
    assert [f["data"]["data"]["n"] for f in frames(client)] == list(range(3, 11))


def test_what_the_log_lost_gets_stream_reset_with_its_reason_then_the_buffer() -> None:
    hub = SSEHub(replay_events=2)
    log = ListLog(hub)
    log.publish(*range(1, 6))
    log.first = 2
    client = hub.subscribe(last_event_id=sse_id(1))
    got = frames(client)
    assert got[0]["event"] == STREAM_RESET and got[0]["data"]["reason"] == "retention dropped 1-0"
    assert [f["data"]["data"]["n"] for f in got[1:]] == [4, 5]
    unknown = frames(hub.subscribe(last_event_id="99-0"))
    assert unknown[0]["data"]["reason"] == "99-0 is unknown to the list"
    assert hub.stats()["stream_resets"] == 2


def test_a_failing_log_gives_stream_reset_and_is_counted() -> None:
    hub = SSEHub(replay_events=2)
    log = ListLog(hub)
    log.publish(1, 2, 3)

    def broken() -> None:
        raise ConnectionError("log unreachable")

    log.during_read = broken
    got = frames(hub.subscribe(last_event_id=sse_id(1)))
    assert got[0]["event"] == STREAM_RESET and "log unreachable" in got[0]["data"]["reason"]
    assert hub.stats()["backing_log_errors"] == 1
    assert [f["data"]["data"]["n"] for f in got[1:]] == [2, 3]


def test_a_backlog_ending_where_the_buffer_no_longer_reaches_gets_stream_reset() -> None:
    hub = SSEHub(replay_events=2)
    log = ListLog(hub)
    log.publish(1, 2, 3)
    log.during_read = lambda: log.publish(4, 5, 6)  # the buffer moves past 3, where the backlog would end
    stale = Backlog(entries=[(sse_id(2), record(2)), (sse_id(3), record(3))])
    log.read_after = lambda last_event_id: (log.during_read(), stale)[1]  # type: ignore[method-assign]
    got = frames(hub.subscribe(last_event_id=sse_id(1)))
    assert got[0]["event"] == STREAM_RESET
    assert [f["data"]["data"]["n"] for f in got[1:]] == [5, 6]


def test_reset_stream_tells_every_client_and_forgets_the_buffer() -> None:
    hub = SSEHub()
    log = ListLog(hub)
    log.publish(1, 2)
    a, b = hub.subscribe(), hub.subscribe(Subscription(workers=frozenset({"nobody"})))
    frames(a)
    assert hub.reset_stream("retention dropped events", lost=7) == 2
    for client in (a, b):
        [reset] = frames(client)
        assert reset["event"] == STREAM_RESET and reset["id"] is None
        assert reset["data"] == {"reason": "retention dropped events", "lost": 7}
    assert hub.replay_ids() == [] and hub.stats()["upstream_resets"] == 1
    # a resume from before the reset cannot be served from the buffer: the log decides
    log.first = 2
    assert frames(hub.subscribe(last_event_id=sse_id(1)))[0]["event"] == STREAM_RESET


def test_subscribe_waits_for_a_slow_log_without_holding_up_publishing() -> None:
    hub = SSEHub(replay_events=5)
    log = ListLog(hub)
    log.publish(1, 2, 3, 4, 5, 6)
    entered, release = threading.Event(), threading.Event()

    def slow() -> None:
        entered.set()
        assert release.wait(10)

    log.during_read = slow
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(hub.subscribe(last_event_id=sse_id(1))))
    t.start()
    assert entered.wait(10)
    live = hub.subscribe()
    log.during_read = None
    log.publish(7)  # published (and delivered) while the resume is still reading its log
    assert [f["data"]["data"]["n"] for f in frames(live)] == [7]
    release.set()
    t.join(10)
    assert [f["data"]["data"]["n"] for f in frames(result[0])] == [2, 3, 4, 5, 6, 7]
