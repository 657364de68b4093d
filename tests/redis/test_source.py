"""RedisEventSource against real Redis servers: it follows the stream into a hub with stream ids
as SSE ids, reads resumes back from the stream for ids its hub never had, reports what retention
dropped before it could read it, and survives lost connections and Redis restarts."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.redis.test_sink import wait
from timelapser_workers.events import Event, make_event
from timelapser_workers.sinks import MemorySink, load_sink
from timelapser_workers.sinks.redis import RedisStreamSink
from timelapser_workers.sinks.sse import STREAM_RESET, SSEHub
from timelapser_workers.sources.redis import RedisEventSource, stream_id

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sinks"))
from tcp_proxy import TcpProxy  # noqa: E402


def batch(n: int, start: int = 0) -> list[Event]:
    return [make_event("FRAME_CAPTURED", {"k": start + k}, worker="cam", source="capture") for k in range(n)]


class Reader:
    """A hub client, as the endpoint would hold one: collects what the hub queues for it."""

    def __init__(self, hub: SSEHub, last_event_id: str | None = None) -> None:
        self.client = hub.subscribe(last_event_id=last_event_id)
        self.got: list[dict[str, Any]] = []

    def messages(self) -> list[dict[str, Any]]:
        # a take may hold a whole batch in one chunk: split it at the blank lines that end frames
        for frame in (f for f in b"".join(self.client.take()).split(b"\n\n") if f.strip()):
            fields: dict[str, Any] = {"id": None, "event": "message"}
            for line in frame.decode().strip().split("\n"):
                name, _, value = line.partition(": ")
                fields[name] = json.loads(value) if name == "data" else value
            self.got.append(fields)
        return self.got

    def ks(self) -> list[int]:
        return [m["data"]["data"]["k"] for m in self.messages() if m["event"] == "message"]

    def resets(self) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages() if m["event"] == STREAM_RESET]

    def wait_for(self, count: int) -> list[int]:
        wait(lambda: len(self.ks()) >= count, f"{count} events (have {len(self.ks())})")
        return self.ks()


@pytest.fixture
def sources() -> Iterator[Callable[..., RedisEventSource]]:
    made: list[RedisEventSource] = []

    def make(url: str, hub: SSEHub | None = None, **options: Any) -> RedisEventSource:
        options.setdefault("block_seconds", 0.5)
        options.setdefault("reconnect_max_seconds", 0.1)
        source = RedisEventSource(url, hub or SSEHub(replay_events=1000), **options)
        made.append(source)
        return source.start()

    yield make
    for source in made:
        source.stop()


@pytest.fixture
def sink(redis_url: str, stream: str) -> RedisStreamSink:
    made = load_sink(f"{redis_url}?stream={stream}")
    assert isinstance(made, RedisStreamSink)
    return made


def test_follows_the_stream_with_stream_ids_as_sse_ids_and_backfills(redis_url: str, stream: str, rdb: Any, sink: RedisStreamSink, sources) -> None:
    early = batch(5)
    sink.send(early)
    source = sources(f"{redis_url}?stream={stream}", backfill_events=3)
    hub = source.hub
    stream_ids = [sid for sid, _ in rdb.xrange(stream)]
    assert hub.replay_ids() == stream_ids[2:]  # the last three, for clients resuming at once
    reader = Reader(hub)
    later = batch(30, start=5)
    for i in range(0, 30, 7):
        sink.send(later[i : i + 7])
    assert reader.wait_for(30) == list(range(5, 35))
    stream_ids = [sid for sid, _ in rdb.xrange(stream)]
    assert [m["id"] for m in reader.messages()] == stream_ids[5:]  # SSE id = the entry's stream id
    assert [m["data"]["id"] for m in reader.messages()] == [e.id for e in later]  # data: the event's own
    assert source.stats()["position"] == stream_ids[-1] == source.published_id
    assert source.stats()["entries_lost"] == 0


def test_a_resume_on_another_process_is_read_back_from_the_stream(redis_url: str, stream: str, rdb: Any, sink: RedisStreamSink, sources) -> None:
    a = sources(f"{redis_url}?stream={stream}")
    b = sources(f"{redis_url}?stream={stream}", SSEHub(replay_events=5))
    on_a = Reader(a.hub)
    sink.send(batch(50))
    on_a.wait_for(50)
    wait(lambda: b.stats()["entries_published"] == 50, "the second source")
    last_seen = on_a.messages()[9]["id"]  # the client saw 10 on A, then moved to B
    moved = Reader(b.hub, last_event_id=last_seen)
    assert moved.ks() == list(range(10, 50))  # read back: B's buffer holds only 5
    sink.send(batch(5, start=50))
    assert moved.wait_for(45) == list(range(10, 55))  # the live stream follows, no gap, no double
    assert b.hub.stats()["resumes_from_backing_log"] == 1 and moved.resets() == []


def test_a_resume_ahead_of_this_server_waits_until_it_has_caught_up(redis_url: str, stream: str, sink: RedisStreamSink, sources) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        sink.send(batch(1))
        a = sources(f"{redis_url}?stream={stream}")
        b = sources(f"redis://127.0.0.1:{proxy.port}/0?stream={stream}", catch_up_seconds=20)
        proxy.down()  # B can no longer read the stream; A can
        sink.send(batch(20, start=1))
        wait(lambda: a.stats()["entries_published"] == 21, "A to read everything")
        last_seen = a.published_id
        assert last_seen is not None
        result: list[Reader] = []
        mover = threading.Thread(target=lambda: result.append(Reader(b.hub, last_event_id=last_seen)))
        mover.start()
        wait(lambda: b.stats()["resume_reads"] == 1, "the resume to ask B's source")
        proxy.up()
        mover.join(20)
        moved = result[0]
        assert moved.ks() == [] and moved.resets() == []  # nothing missed: it had everything up to there
        sink.send(batch(3, start=21))
        assert moved.wait_for(3) == [21, 22, 23]  # and nothing twice
        assert b.stats()["read_errors"] >= 1 and b.stats()["reconnects"] >= 1
    finally:
        proxy.close()


def test_what_retention_dropped_before_the_source_read_it_is_counted_and_reported(redis_url: str, stream: str, rdb: Any, sources) -> None:
    from urllib.parse import urlsplit

    small = load_sink(f"{redis_url}?stream={stream}&maxlen=100")
    parts = urlsplit(redis_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        small.send(batch(1))
        source = sources(f"redis://127.0.0.1:{proxy.port}/0?stream={stream}")
        live = Reader(source.hub)
        before = source.published_id
        proxy.down()
        for i in range(1, 501, 50):
            small.send(batch(50, start=i))
        retained = rdb.xlen(stream)
        assert retained < 500
        proxy.up()
        last = rdb.xrevrange(stream, count=1)[0][0]
        wait(lambda: source.published_id == last, "the source to catch up")
        lost = 500 - retained  # every retained entry is after the source's position
        assert (source.stats()["gaps"], source.stats()["entries_lost"]) == (1, lost)
        [reset] = live.resets()
        assert reset["lost"] == lost and reset["after_id"] == before and "retention" in reset["reason"]
        assert live.ks() == list(range(501 - retained, 501))  # then everything the stream kept, in order
        assert [m["event"] for m in live.messages()][0] == STREAM_RESET
    finally:
        proxy.close()


def test_resumes_the_stream_cannot_serve_get_stream_reset_naming_why(redis_url: str, stream: str, rdb: Any, sink: RedisStreamSink, sources) -> None:
    source = sources(f"{redis_url}?stream={stream}", SSEHub(replay_events=5), resume_events=20)
    sink.send(batch(25))
    first_ms = int(rdb.xrevrange(stream, count=1)[0][0].split("-")[0])
    redis_ms = lambda: (lambda t: int(t[0]) * 1000 + int(t[1]) // 1000)(rdb.time())  # noqa: E731
    wait(lambda: redis_ms() > first_ms, "Redis's clock to move on")
    sink.send(batch(25, start=25))  # in a later millisecond: ids between the two batches exist
    wait(lambda: source.stats()["entries_published"] == 50, "the source")
    ids = [sid for sid, _ in rdb.xrange(stream)]
    last_ms = ids[-1].split("-")[0]
    cases = {
        ids[40]: None,  # fine: read back
        ids[10]: "more than resume_events=20",
        "abc": "is not an id of stream",
        f"{first_ms}-999999": "is not an entry of stream",
        f"{last_ms}-999999": "is newer than any entry of stream",
    }
    for last_id, reason in cases.items():
        reader = Reader(source.hub, last_event_id=last_id)
        if reason is None:
            assert reader.ks() == list(range(41, 50)) and reader.resets() == []
        else:
            [reset] = reader.resets()
            assert reason in reset["reason"] and reader.ks() == list(range(45, 50))
    rdb.xtrim(stream, maxlen=5, approximate=False)
    [reset] = Reader(source.hub, last_event_id=ids[40]).resets()
    assert "retention (MAXLEN) has dropped" in reset["reason"]


def test_entries_not_written_by_the_sink_are_skipped_and_counted(redis_url: str, stream: str, rdb: Any, sink: RedisStreamSink, sources) -> None:
    source = sources(f"{redis_url}?stream={stream}")
    reader = Reader(source.hub)
    sink.send(batch(2))
    rdb.xadd(stream, {"foo": "bar"})
    rdb.xadd(stream, {"event": "{not json"})
    rdb.xadd(stream, {"event": json.dumps(["a list"])})
    sink.send(batch(2, start=2))
    assert reader.wait_for(4) == [0, 1, 2, 3]
    assert source.stats()["entries_malformed"] == 3 and source.stats()["entries_read"] == 7


def test_survives_a_redis_crash_and_loses_nothing_the_stream_kept(own_redis, make_batcher, sources) -> None:
    server = own_redis("--appendonly", "yes", "--appendfsync", "always")
    sink = load_sink(f"{server.url}?stream=s&wants_aggregated=false&socket_timeout=2")
    memory = MemorySink(wants_aggregated=False)
    batcher = make_batcher([sink, memory], batch_size=10, batch_timeout=0.02, max_retries=500,
                           retry_delay=0.02, retry_max_delay=0.1)
    source = sources(f"{server.url}?stream=s")
    reader = Reader(source.hub)
    for k in range(40):
        batcher.emit("FRAME_CAPTURED", {"k": k})
    assert reader.wait_for(40) == list(range(40))
    server.kill()
    for k in range(40, 80):
        batcher.emit("FRAME_CAPTURED", {"k": k})
    wait(lambda: source.stats()["read_errors"] >= 1, "the source to notice")
    server.start()  # same port, the stream reloaded from the append-only file
    assert batcher.flush(20).complete
    assert reader.wait_for(80) == list(range(80))  # each once, in order
    assert [m["data"]["id"] for m in reader.messages()] == [e.id for e in memory.events]
    stats = source.stats()
    assert stats["reconnects"] >= 1 and stats["gaps"] == 0 and stats["stream_recreated"] == 0
    assert reader.resets() == []


def test_a_stream_lost_with_a_restart_is_reported_and_followed_again(own_redis, sources) -> None:
    server = own_redis()  # no persistence: a restart empties it
    sink = load_sink(f"{server.url}?stream=s")
    source = sources(f"{server.url}?stream=s")
    reader = Reader(source.hub)
    sink.send(batch(10))
    reader.wait_for(10)
    server.kill()
    wait(lambda: source.stats()["read_errors"] >= 1, "the source to notice")
    server.start()
    sink.send(batch(5, start=10))  # the lane would retry this; here the first attempt may fail
    wait(lambda: source.stats()["entries_published"] >= 15, "the new stream")
    [reset] = reader.resets()
    assert reset["lost"] is None and "Redis restarted without persistence" in reset["reason"]
    assert reader.ks() == list(range(15)) and source.stats()["stream_recreated"] == 1


def test_start_while_redis_is_down_follows_it_once_it_answers(own_redis, sources) -> None:
    server = own_redis()
    server.kill()
    source = sources(f"{server.url}?stream=s")
    reader = Reader(source.hub)
    wait(lambda: source.stats()["read_errors"] >= 1, "a failed read")
    server.start()
    load_sink(f"{server.url}?stream=s").send(batch(3))
    assert reader.wait_for(3) == [0, 1, 2]


def test_stop_wakes_the_blocking_read(redis_url: str, stream: str) -> None:
    source = RedisEventSource(f"{redis_url}?stream={stream}", SSEHub(), block_seconds=60).start()
    wait(lambda: source._reader_id is not None, "the blocking read")
    source.stop(timeout=10)
    assert source._thread is not None and not source._thread.is_alive()


def test_options_are_checked(redis_url: str) -> None:
    hub = SSEHub()
    with pytest.raises(ValueError, match="stream given both"):
        RedisEventSource(f"{redis_url}?stream=a", hub, stream="b")
    with pytest.raises(ValueError, match="unknown option"):
        RedisEventSource(f"{redis_url}?maxlen=5", hub)
    with pytest.raises(ValueError, match="read_count=0"):
        RedisEventSource(redis_url, hub, read_count=0)
    RedisEventSource(redis_url, hub, stream="a")
    with pytest.raises(ValueError, match="already has a backing log"):
        RedisEventSource(redis_url, hub, stream="a")
    assert stream_id("17-3") == (17, 3) and stream_id("17") is None and stream_id("a-1") is None
