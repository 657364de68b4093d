"""RedisStreamSink against real Redis servers: loading by URL, the entries it writes, retention,
and every failure kind driven through a real EventBatcher (retried, or dead-lettered at once)."""

from __future__ import annotations

import json
import select
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from timelapser_workers import EventBatcher, JsonLinesDeadLetter
from timelapser_workers.errors import SinkLoadError
from timelapser_workers.sinks import MemorySink, load_sink
from timelapser_workers.sinks.redis import RedisStreamSink

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sinks"))
from tcp_proxy import TcpProxy  # noqa: E402


def entries(rdb: Any, stream: str) -> list[tuple[str, dict[str, str]]]:
    return [(sid, fields) for sid, fields in rdb.xrange(stream)]


def test_load_sink_by_url_writes_one_entry_per_event_with_its_id(redis_url: str, stream: str, rdb: Any, make_batcher) -> None:
    sink = load_sink(f"{redis_url}?stream={stream}&maxlen=10000&wants_aggregated=false")
    assert isinstance(sink, RedisStreamSink)
    assert (sink.name, sink.stream, sink.maxlen, sink.wants_aggregated) == (f"redis:{stream}", stream, 10000, False)
    memory = MemorySink(wants_aggregated=False)
    batcher = make_batcher([sink, memory], batch_size=10)
    for k in range(25):
        batcher.emit("FRAME_CAPTURED", {"k": k, "text": "ünïcode"}, worker="cam-1", source="capture")
    assert batcher.flush(10).complete
    got = entries(rdb, stream)
    assert [f["id"] for _, f in got] == [e.id for e in memory.events]  # the event's own id, in order
    assert [json.loads(f["event"]) for _, f in got] == [e.to_dict() for e in memory.events]
    assert sink.stats()["entries_written"] == 25 and sink.stats()["batches_already_written"] == 0


def test_url_and_options_are_checked_naming_the_bad_value(redis_url: str) -> None:
    for url, named in [
        (f"{redis_url}?stream=s&maxlen=many", "maxlen='many'"),
        (f"{redis_url}?stream=s&maxlen=0", "maxlen=0"),
        (f"{redis_url}?stream=s&colour=red", "colour"),
        (f"{redis_url}?stream=a&stream=b", "stream"),
        (f"{redis_url}?stream=", "stream ''"),
        (f"{redis_url}?stream=s&approximate=maybe", "approximate='maybe'"),
    ]:
        with pytest.raises(SinkLoadError, match=named):
            load_sink(url)
    with pytest.raises(SinkLoadError, match="maxlen given both"):
        load_sink(f"{redis_url}?stream=s&maxlen=5", maxlen=6)
    with pytest.raises(ValueError, match="from_url"):
        RedisStreamSink(f"{redis_url}?stream=s")
    with pytest.raises(TypeError, match="Redis URL or a redis.Redis client"):
        RedisStreamSink(42)  # type: ignore[arg-type]
    # TLS URLs load too (nothing connects until the first batch)
    sink = load_sink("rediss://127.0.0.1:1/0?stream=s&ssl_cert_reqs=none")
    assert sink.client.connection_pool.connection_class.__name__ == "SSLConnection"


def test_maxlen_keeps_about_that_many_entries_or_exactly(redis_url: str, stream: str, rdb: Any) -> None:
    from timelapser_workers.events import make_event

    batch = [make_event("X", {"k": k}) for k in range(50)]
    approx = load_sink(f"{redis_url}?stream={stream}&maxlen=100")
    exact = load_sink(f"{redis_url}?stream={stream}:exact&maxlen=100&approximate=false")
    for _ in range(20):
        approx.send(batch)
        exact.send(batch)
    assert 100 <= rdb.xlen(stream) < 1000  # whole internal nodes are trimmed, never below maxlen
    assert rdb.xlen(f"{stream}:exact") == 100
    assert rdb.xinfo_stream(stream)["entries-added"] == 1000


def test_a_given_client_is_used_and_left_open(redis_url: str, stream: str, rdb: Any) -> None:
    import redis

    from timelapser_workers.events import make_event

    client = redis.Redis.from_url(redis_url)
    sink = RedisStreamSink(client, stream=stream)
    sink.send([make_event("X")])
    sink.close()
    assert client.ping() and rdb.xlen(stream) == 1
    client.close()


class ReplyCutter(TcpProxy):
    """A proxy that, once armed, drops the server's next reply and closes the connection: the
    command ran, the client never hears so (a reply lost on the way back)."""

    def __init__(self, host: str, port: int) -> None:
        self.armed = threading.Event()
        self.cuts = 0
        super().__init__(host, port)

    def _pump(self, a: Any, b: Any) -> None:  # a: the client, b: the server
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.2)
                for s in readable:
                    data = s.recv(65536)
                    if not data:
                        return
                    if s is b and self.armed.is_set():
                        self.armed.clear()
                        self.cuts += 1
                        return
                    (b if s is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            a.close()
            b.close()


def test_a_retry_after_a_lost_reply_writes_nothing_twice(redis_url: str, stream: str, rdb: Any, make_batcher) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    proxy = ReplyCutter(parts.hostname or "127.0.0.1", parts.port or 6379)
    try:
        sink = load_sink(f"redis://127.0.0.1:{proxy.port}/0?stream={stream}&wants_aggregated=false")
        memory = MemorySink(wants_aggregated=False)
        batcher = make_batcher([sink, memory], batch_size=20, max_retries=5)
        batcher.emit("X", {"k": -1})
        assert batcher.flush(10).complete  # connected, script loaded
        proxy.armed.set()
        for k in range(20):
            batcher.emit("X", {"k": k})
        assert batcher.flush(10).complete
        assert proxy.cuts == 1
        lane = batcher.stats()["sinks"][sink.name]
        assert lane["retries"] >= 1 and lane["dead_lettered"] == 0
        assert sink.stats()["batches_already_written"] == 1
        ids = [f["id"] for _, f in entries(rdb, stream)]
        assert ids == [e.id for e in memory.events]  # each once, in order
    finally:
        proxy.close()


def test_a_key_of_another_type_is_dead_lettered_at_once(redis_url: str, stream: str, rdb: Any, make_batcher, dead_letter: JsonLinesDeadLetter) -> None:
    rdb.set(stream, "not a stream")
    sink = load_sink(f"{redis_url}?stream={stream}&wants_aggregated=false")
    batcher = make_batcher([sink], max_retries=5)
    for k in range(3):
        batcher.emit("X", {"k": k})
    result = batcher.flush(10)
    assert (result.failed, result.pending) == (3, 0)
    lane = batcher.stats()["sinks"][sink.name]
    assert lane["retries"] == 0 and lane["dead_lettered"] == 3  # permanent: no retry
    dead = dead_letter.read()
    assert [d["event"]["data"]["k"] for d in dead] == [0, 1, 2] and "WRONGTYPE" in dead[0]["error"]


@pytest.fixture
def acl_user(rdb: Any) -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def make(rules: str) -> str:
        name = f"tlw_test_{uuid.uuid4().hex[:10]}"
        rdb.execute_command("ACL", "SETUSER", name, "on", ">pw", *rules.split())
        made.append(name)
        return name

    yield make
    for name in made:
        rdb.execute_command("ACL", "DELUSER", name)


def test_missing_permission_and_wrong_password_are_permanent(redis_url: str, stream: str, acl_user, make_batcher) -> None:
    from urllib.parse import urlsplit

    host = urlsplit(redis_url).netloc.rsplit("@", 1)[-1]
    no_xadd = acl_user("~* +@all -xadd")
    for user, password, expected in [(no_xadd, "pw", "can't run this command"), (no_xadd, "wrong", "AuthenticationError")]:
        sink = load_sink(f"redis://{user}:{password}@{host}/0?stream={stream}&wants_aggregated=false")
        batcher = make_batcher([sink], max_retries=5)
        batcher.emit("X", {})
        assert batcher.flush(10).failed == 1
        lane = batcher.stats()["sinks"][sink.name]
        assert lane["retries"] == 0 and expected in lane["last_error"]
        assert "pw" not in lane["last_error"]  # the message names the server, never the password


def test_out_of_memory_and_an_outage_are_retried_until_redis_takes_the_batch(own_redis, make_batcher, tmp_path: Path) -> None:
    import redis

    server = own_redis()
    admin = redis.Redis(port=server.port, decode_responses=True)
    sink = load_sink(f"{server.url}?stream=s&wants_aggregated=false&socket_timeout=2")
    memory = MemorySink(wants_aggregated=False)
    batcher = make_batcher([sink, memory], max_retries=200, retry_delay=0.02, retry_max_delay=0.05)

    admin.config_set("maxmemory", "1")  # every write is refused with OOM: transient
    batcher.emit("X", {"k": 0})
    lane = lambda: batcher.stats()["sinks"][sink.name]  # noqa: E731
    wait(lambda: lane()["failures"] >= 2, "OOM refusals")
    assert "OutOfMemoryError" in lane()["last_error"] and lane()["dead_lettered"] == 0
    admin.config_set("maxmemory", "0")
    assert batcher.flush(10).complete

    server.kill()  # connection refused: transient
    batcher.emit("X", {"k": 1})
    wait(lambda: "Connection" in (lane()["last_error"] or "") and lane()["failures"] >= 4, "refused connections")
    server.start()  # the same port, empty (no persistence)
    assert batcher.flush(10).complete
    admin = redis.Redis(port=server.port, decode_responses=True)
    assert [json.loads(f["event"])["data"]["k"] for _, f in admin.xrange("s")] == [1]
    assert lane()["dead_lettered"] == 0 and [e.data["k"] for e in memory.events] == [0, 1]


def wait(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
