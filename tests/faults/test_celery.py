"""A real Celery prefork worker on the Redis broker: tasks emit events in the pool's child
processes, which leave through ``os._exit``; with the README's recipe (``flush_all`` on
``worker_process_shutdown``) every event is stored when the worker is stopped (SIGTERM, a warm
shutdown). Redis at 127.0.0.1:6379: under CI a missing server fails, elsewhere it skips."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import ci
from tests.faults.programs import dead_letters, sqlite_rows

REDIS_URL = os.environ.get("TIMELAPSER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

_TASKS = """
    import os
    from celery import Celery
    from celery.signals import worker_process_shutdown
    from timelapser_workers import EventBatcher, flush_all
    from timelapser_workers.sinks.database import DatabaseSink

    app = Celery("tasks", broker=os.environ["BROKER"], backend=os.environ["BROKER"])
    app.conf.task_default_queue = os.environ["QUEUE"]
    # a batch timeout longer than billiard's one-second pause before a child's os._exit
    batcher = EventBatcher([DatabaseSink("sqlite:///" + os.environ["DB"])], batch_timeout=5,
                           dead_letter=os.environ["DB"] + ".dead")

    if os.environ.get("RECIPE") == "1":
        @worker_process_shutdown.connect          # the README's recipe
        def deliver_events(**_):
            flush_all(timeout=10)

    @app.task(name="tasks.capture")
    def capture(camera, frames):
        for n in range(frames):
            batcher.emit("JOB_STARTED", {"job_id": n, "camera": camera}, worker=f"camera-{camera}")
        return frames
"""


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        if ci():
            pytest.fail(f"Redis needed under CI: {REDIS_URL}: {exc}", pytrace=False)
        pytest.skip(f"Redis unreachable at {REDIS_URL}: {exc}")


@pytest.mark.parametrize("recipe", [True, False], ids=["with-recipe", "without"])
def test_celery_prefork_worker_stores_every_event_with_the_recipe(tmp_path: Path, recipe: bool) -> None:
    pytest.importorskip("celery")
    _redis_or_skip()
    from celery import Celery

    (tmp_path / "tasks.py").write_text(textwrap.dedent(_TASKS))
    queue = f"tl-test-{uuid.uuid4().hex[:10]}"
    db = tmp_path / "events.db"
    env = {**os.environ, "BROKER": REDIS_URL, "QUEUE": queue, "DB": str(db), "RECIPE": "1" if recipe else "0",
           "PYTHONPATH": str(tmp_path)}
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tasks", "worker", "--pool=prefork", "--concurrency=2",
         "-Q", queue, "--without-heartbeat", "--without-gossip", "--without-mingle", "--loglevel=INFO",
         "-n", f"{queue}@%h"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    client = Celery("client", broker=REDIS_URL, backend=REDIS_URL)
    try:
        deadline = time.monotonic() + 60
        while b"ready." not in (tmp_path / "worker.log").read_bytes():
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the Celery worker did not get ready"
            time.sleep(0.1)
        results = [client.send_task("tasks.capture", args=(camera, 25), queue=queue) for camera in range(20)]
        assert [r.get(timeout=60) for r in results] == [25] * 20
        # every task is done; the events wait in the children's batchers (batch_timeout 0.5 s)
        worker.send_signal(signal.SIGTERM)  # what `docker stop` or systemd send: warm shutdown
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        log.close()
        for r in results if "results" in locals() else ():
            r.forget()
    stored = sqlite_rows(db)
    if recipe:
        assert stored == 20 * 25, (tmp_path / "worker.log").read_text()[-3000:]
        assert dead_letters(tmp_path / "events.db.dead") == []
    else:
        # without it, each child leaves through os._exit with what it held: the recipe is needed
        assert stored < 20 * 25
