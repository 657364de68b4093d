"""Fixtures for the Redis bus tests: the shared server at 127.0.0.1:6379 (unique stream keys,
deleted afterwards), and servers of the test's own on free ports, for tests that stop, kill or
restart Redis (the shared server is never restarted)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ci

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _unreachable(reason: str) -> None:
    if ci():
        pytest.fail(f"Redis needed under CI: {reason}", pytrace=False)
    pytest.skip(f"Redis unavailable: {reason}")


@pytest.fixture(scope="session")
def _redis_probe() -> tuple[str, str | None]:
    url = os.environ.get("TIMELAPSER_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        return url, f"the redis client is not installed ({exc})"
    try:
        client = redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)
        version = client.info("server")["redis_version"]
        client.close()
    except Exception as exc:
        return url, f"{url}: {exc}"
    if int(version.split(".")[0]) < 7:
        return url, f"{url} runs Redis {version}; the Redis bus needs 7 or newer"
    return url, None


@pytest.fixture
def redis_url(_redis_probe: tuple[str, str | None]) -> str:
    """The shared test server's URL (env TIMELAPSER_TEST_REDIS_URL); skip, or fail under CI."""
    url, problem = _redis_probe
    if problem:
        _unreachable(problem)
    return url


@pytest.fixture
def rdb(redis_url: str) -> Iterator[Any]:
    """A plain client on the shared server (text replies), for the test's own look inside."""
    import redis

    client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture
def stream(rdb: Any) -> Iterator[str]:
    """A stream key no other test uses; it and its writer markers are deleted afterwards."""
    name = f"tlw_test_{uuid.uuid4().hex[:12]}"
    yield name
    keys = [name, *rdb.scan_iter(match=f"{name}:*", count=1000)]
    rdb.delete(*keys)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a free port, with its data in ``folder``."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        """Start it and wait (at most 10 s) until it answers PING with its data loaded."""
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            _unreachable("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [str(exe), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", "--daemonize", "no", "--logfile", str(self.folder / "redis.log"), *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.ping() and client.info("persistence")["loading"] == 0:
                    break
            except redis.exceptions.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.folder / "redis.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"redis-server on port {self.port} did not start:\n{log}")
            time.sleep(0.02)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, no goodbye, nothing saved beyond what persistence already has."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def own_redis(tmp_path: Path, redis_url: str) -> Iterator[Callable[..., RedisServer]]:
    """own_redis(*redis-server args) -> a started RedisServer; killed at teardown."""
    servers: list[RedisServer] = []

    def make(*args: str) -> RedisServer:
        server = RedisServer(tmp_path / f"redis{len(servers)}", *args)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.kill()
