"""The Redis bus, proved with whole programs: 2 producer processes (EventBatcher + RedisStreamSink),
3 web processes (RedisEventSource + hub; two on the package's WSGI server, one on uvicorn) and 30
clients over HTTP, against a Redis server of the test's own (append-only file, fsync always).

1. Every client gets every event once, in stream order, while clients move mid-stream to another
   web process with their Last-Event-ID (some at once, some after missing more than the target's
   replay buffer holds, so the stream is read back), and while Redis is killed and restarted.
2. Retention: one web process is frozen (SIGSTOP) while the producers write more than MAXLEN; when
   it thaws, its clients get a stream-reset naming exactly how many events were trimmed, then
   everything the stream kept; a client that moves with a trimmed id gets stream-reset too.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.redis.test_sink import wait
from tests.sse.conftest import SSETestClient

ROOT = Path(__file__).resolve().parents[2]
MAXLEN = 1500  # more than phases 1 and 2 write (1,200), less than phase 3 (2,000)
REPLAY = 200  # each web process's replay buffer: smaller than what a long-gone client misses
CLIENTS = 30


class Child:
    """A child process of tests/redis/_procs.py that prints JSON lines and reads commands."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.log = tmp / f"{'-'.join(a for a in args[:2] if '/' not in a)}-{id(self)}.err"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.redis._procs", *args], cwd=ROOT, text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(self.log, "w"),
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def expect(self, key: str, timeout: float = 30.0) -> dict[str, Any]:
        try:
            while True:
                message = self.lines.get(timeout=timeout)
                if key in message:
                    return message
        except queue.Empty:
            raise AssertionError(f"no {key!r} from {self.proc.args[3:]} in {timeout}s; stderr:\n"
                                 f"{self.log.read_text()[-3000:]}") from None

    def stats(self) -> dict[str, Any]:
        self.send("stats")
        return self.expect("source")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Follower:
    """One browser: a stream on one web process at a time, moved with its Last-Event-ID."""

    def __init__(self, ports: list[int], web: int) -> None:
        self.ports, self.web = ports, web
        self.done: list[dict[str, Any]] = []  # messages of earlier connections
        self.conn: SSETestClient | None = self._open(None)

    def _open(self, last_id: str | None) -> SSETestClient:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        conn = SSETestClient(self.ports[self.web], headers=headers, timeout=30)
        assert conn.status == 200, conn.__dict__.get("body")
        return conn

    def messages(self) -> list[dict[str, Any]]:
        return self.done + (list(self.conn.messages) if self.conn else [])

    def events(self) -> list[dict[str, Any]]:
        return [m for m in self.messages() if m["id"] is not None]

    def resets(self) -> list[dict[str, Any]]:
        return [m["json"] for m in self.messages() if m["event"] == "stream-reset"]

    def last_id(self) -> str:
        return str(self.events()[-1]["id"])

    def leave(self) -> None:
        assert self.conn is not None
        self.conn.close()
        self.done += list(self.conn.messages)
        self.conn = None

    def come_back(self, web: int) -> None:
        self.web = web
        self.conn = self._open(self.last_id())

    def move(self, web: int) -> None:
        self.leave()
        self.come_back(web)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def check_order(events: list[dict[str, Any]], expected_ids: list[str], what: str) -> None:
    """Every expected event once, in order (by the event's own id), SSE ids increasing."""
    got = [m["json"]["id"] for m in events]
    assert len(got) == len(set(got)), f"{what}: {len(got) - len(set(got))} events twice"
    assert got == expected_ids, f"{what}: got {len(got)} events, {len(set(expected_ids) - set(got))} missing"
    stream_ids = [tuple(map(int, m["id"].split("-"))) for m in events]
    assert stream_ids == sorted(stream_ids), f"{what}: SSE ids out of stream order"


@pytest.mark.timeout(150)
def test_two_producers_three_web_processes_thirty_clients_with_moves_a_crash_and_retention(own_redis, tmp_path: Path) -> None:
    import redis

    server = own_redis("--appendonly", "yes", "--appendfsync", "always")
    look = redis.Redis(port=server.port, decode_responses=True, socket_timeout=5)
    stream_url = f"{server.url}?stream=proof"
    webs = [Child(tmp_path, "web", stream_url, kind, str(REPLAY)) for kind in ("wsgi", "wsgi", "asgi")]
    producers = [Child(tmp_path, "producer", f"{stream_url}&maxlen={MAXLEN}", f"p{i}", str(tmp_path / f"dead{i}.jsonl"))
                 for i in range(2)]
    followers: list[Follower] = []
    try:
        ports = [w.expect("port")["port"] for w in webs]
        for p in producers:
            p.expect("ready")
        followers = [Follower(ports, i % 3) for i in range(CLIENTS)]
        added = lambda: int(look.xinfo_stream("proof")["entries-added"]) if look.exists("proof") else 0  # noqa: E731

        # --- 1. moves at once, mid-stream -------------------------------------------------------
        for p in producers:
            p.send("emit 300 300")
        wait(lambda: all(len(f.events()) >= 100 for f in followers), "every client to have 100 events", 30)
        for f in followers[:3]:
            f.move((f.web + 1) % 3)
        for p in producers:
            assert p.expect("emitted")["complete"]

        # --- 2. moves after missing more than a replay buffer, and Redis killed mid-stream ----------
        away = followers[3:6]
        for f in away:
            f.leave()
        for p in producers:
            p.send("emit 300 300")
        wait(lambda: added() >= 800, "the stream to reach 800 entries", 30)
        server.kill()
        for p in producers:
            p.expect("failures")  # each producer's lane has failed a send: the crash is felt
        server.start()  # the stream comes back from the append-only file
        wait(lambda: added() >= 600 + 2 * REPLAY + 100, "the stream to move well past the absent clients", 30)
        for f in away:
            f.come_back((f.web + 1) % 3)
        results = [p.expect("emitted", 60) for p in producers]
        assert all(r["complete"] and r["dead_lettered"] == 0 for r in results), results
        assert sum(r["retries"] for r in results) >= 1  # the crash was felt by the producers
        stream = look.xrange("proof")
        order = [fields["id"] for _, fields in stream]
        assert len(order) == len(set(order)) == 1200  # in the stream once each, across the crash
        wait(lambda: all(len(f.events()) >= 1200 for f in followers), "every client to have all 1200", 30)
        for i, f in enumerate(followers):
            check_order(f.events(), order, f"client {i}")
            assert f.resets() == [], f"client {i} got {f.resets()}"
        stats = [w.stats() for w in webs]
        assert sum(s["hub"]["resumes_from_backing_log"] for s in stats) >= len(away)
        assert all(s["source"]["reconnects"] >= 1 and s["source"]["gaps"] == 0 for s in stats), stats

        # --- 3. retention: a frozen web process falls behind more than MAXLEN ---------------------
        frozen = [f for f in followers if f.web == 2]
        position = stream[-1][0]  # where the frozen process's source stands
        os.kill(webs[2].proc.pid, signal.SIGSTOP)
        for p in producers:
            p.send("emit 1000 1000")
        for p in producers:
            assert p.expect("emitted", 60)["complete"]
        info = look.xinfo_stream("proof")
        retained = int(info["length"])
        first = tuple(map(int, info["first-entry"][0].split("-")))
        assert first > tuple(map(int, position.split("-")))  # trimmed past the frozen source
        lost = 2000 - retained
        mover = frozen.pop()
        mover.leave()
        mover.come_back(0)  # its Last-Event-ID was trimmed: stream-reset, from the stream's word
        wait(lambda: mover.resets(), "the moved client's stream-reset")
        assert "retention (MAXLEN) has dropped" in mover.resets()[0]["reason"]
        os.kill(webs[2].proc.pid, signal.SIGCONT)

        tail = [fields["id"] for _, fields in look.xrange("proof")]
        everything = order + [m["json"]["id"] for m in followers[0].events()[1200:]]
        wait(lambda: all(len(f.events()) >= 3200 for f in followers if f.web != 2 and f is not mover), "3200 events", 30)
        wait(lambda: all(len(f.events()) >= 1200 + retained for f in frozen), "the thawed clients", 30)
        per_producer: dict[str, list[int]] = defaultdict(list)
        for m in followers[0].events():
            per_producer[m["json"]["data"]["producer"]].append(m["json"]["data"]["k"])
        assert per_producer == {"p0": list(range(1600)), "p1": list(range(1600))}
        assert everything[-retained:] == tail
        for i, f in enumerate(followers):
            if f is mover:
                continue
            if f.web == 2:
                [reset] = f.resets()
                assert reset["lost"] == lost and reset["after_id"] == position, reset
                check_order(f.events(), order + tail, f"thawed client {i}")
                assert len(f.events()) + reset["lost"] == 3200  # delivered + reported = written
            else:
                check_order(f.events(), everything, f"client {i}")
                assert f.resets() == []
        frozen_stats = webs[2].stats()["source"]
        assert (frozen_stats["gaps"], frozen_stats["entries_lost"]) == (1, lost)
    finally:
        for f in followers:
            f.close()
        for child in webs + producers:
            child.stop()
