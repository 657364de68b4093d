"""Every way a process ends delivers what it emitted: SIGTERM (docker stop, systemd), the
exits of multiprocessing children (fork, forkserver, spawn; Process, Pool, ProcessPoolExecutor),
and sinks that misbehave at exit. Each scenario is a whole program in a subprocess; the test
counts the rows it left in a real SQLite file."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.faults.programs import Program, dead_letters, spooled, sqlite_rows

N = 1000

_SIGTERM_PROGRAM = """
    import os, signal, sys, time
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    mode = sys.argv[1]
    def app_handler(signum, frame):          # an application's own graceful exit
        open("app-handler-ran", "w").close()
        sys.exit(3)
    if mode == "app-handler-first":
        signal.signal(signal.SIGTERM, app_handler)
    # nothing flushes by itself before the signal: size and age triggers are out of reach
    batcher = EventBatcher([DatabaseSink("sqlite:///events.db")], batch_size=100_000,
                           batch_timeout=600, shutdown_timeout=5, dead_letter="dead.jsonl",
                           handle_sigterm=(mode != "off"))
    if mode == "app-handler-later":
        signal.signal(signal.SIGTERM, app_handler)
    for n in range(int(sys.argv[2])):
        batcher.emit("JOB_STARTED", {"job_id": n}, worker="camera-1")
    print("ready", flush=True)
    time.sleep(120)
"""


@pytest.mark.parametrize(
    "mode, exit_status, stored",
    [
        ("default", -signal.SIGTERM, N),     # ours: close every batcher, then end by SIGTERM
        ("off", -signal.SIGTERM, 0),         # handle_sigterm=False: the default action, nothing kept
        ("app-handler-first", 3, N),         # the application's handler is chained, not replaced
        ("app-handler-later", 3, N),         # ... or replaces ours: its sys.exit runs atexit
    ],
)
def test_sigterm_delivers_what_was_emitted(tmp_path: Path, mode: str, exit_status: int, stored: int) -> None:
    with Program(_SIGTERM_PROGRAM, tmp_path, mode, str(N)) as program:
        program.wait_for_line("ready")
        assert sqlite_rows(tmp_path / "events.db") == 0  # all of it still in memory
        start = time.monotonic()
        program.proc.send_signal(signal.SIGTERM)
        assert program.wait(timeout=30) == exit_status, program.stderr()
        assert program.ended_at is not None and program.ended_at - start < 5 + 0.5  # shutdown_timeout + 0.5 s
    assert sqlite_rows(tmp_path / "events.db") == stored
    assert (tmp_path / "app-handler-ran").exists() == mode.startswith("app-handler")
    assert dead_letters(tmp_path / "dead.jsonl") == []


_CHILDREN_PROGRAM = """
    import multiprocessing as mp, os, sys
    from concurrent.futures import ProcessPoolExecutor
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    # every process (spawn and forkserver children import this module again) has its batcher;
    # the default batch timeout (0.5 s) leaves each child's last events pending when it ends
    batcher = EventBatcher([DatabaseSink(os.path.abspath("events.db"))
                            if False else DatabaseSink("sqlite:///" + os.path.abspath("events.db"))],
                           dead_letter=os.path.abspath("dead.jsonl"))

    def emit(job):
        tag, count = job
        for n in range(count):
            batcher.emit("JOB_STARTED", {"job_id": n, "tag": tag}, worker=tag)
        return count

    if __name__ == "__main__":
        ctx = mp.get_context(sys.argv[1])
        procs = [ctx.Process(target=emit, args=((f"process{i}", 100),)) for i in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        with ctx.Pool(2) as pool:                         # __exit__ terminates: SIGTERM
            assert pool.map(emit, [(f"pool{i}", 50) for i in range(2)]) == [50, 50]
        with ProcessPoolExecutor(2, mp_context=ctx) as ex:
            assert list(ex.map(emit, [(f"executor{i}", 25) for i in range(2)])) == [25, 25]
        emit(("parent", 1))
        print("exit codes", [p.exitcode for p in procs], flush=True)
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_multiprocessing_children_deliver_what_they_emitted(tmp_path: Path, method: str) -> None:
    with Program(_CHILDREN_PROGRAM, tmp_path, method) as program:
        assert program.wait(timeout=120) == 0, program.stderr()
    assert program.lines[-1] == "exit codes [0, 0]"
    assert sqlite_rows(tmp_path / "events.db") == 2 * 100 + 2 * 50 + 2 * 25 + 1
    tags = sqlite_rows(tmp_path / "events.db", column="COUNT(DISTINCT worker)")
    assert tags == 7  # every process delivered, not only some
    assert dead_letters(tmp_path / "dead.jsonl") == []


_MISBEHAVING_SINKS_PROGRAM = """
    import sys, threading, time
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    class Exiting:                     # raises SystemExit on every try (a bug in a sink)
        name = "exiting"
        def send(self, batch):
            raise SystemExit("sink bug")

    class StuckOnClose(DatabaseSink):  # close() never returns
        def close(self, timeout=None):
            threading.Event().wait()

    batcher = EventBatcher([Exiting(), StuckOnClose("sqlite:///events.db")], shutdown_timeout=1,
                           max_retries=1, retry_delay=0.01, dead_letter="dead.jsonl", spool_dir="spool")
    for n in range(int(sys.argv[1])):
        batcher.emit("JOB_STARTED", {"job_id": n}, worker="camera-1")
    time.sleep(0.2)
    for n in range(int(sys.argv[1]), 2 * int(sys.argv[1])):   # after the first failures
        batcher.emit("JOB_STARTED", {"job_id": n}, worker="camera-1")
    print("pending at exit", batcher.stats()["sinks"]["exiting"]["pending"], flush=True)
    print("exiting", time.monotonic(), flush=True)   # the last statement: atexit from here
"""


def test_misbehaving_sinks_neither_lose_events_nor_keep_the_process_alive(tmp_path: Path) -> None:
    with Program(_MISBEHAVING_SINKS_PROGRAM, tmp_path, "100") as program:
        assert program.wait(timeout=30) == 0, program.stderr()
    # the README: ends within shutdown_timeout (1 s) + 0.5 s, a close() that blocks abandoned
    assert program.seconds_since(program.lines[-1]) < 1 + 0.5, program.lines
    assert sqlite_rows(tmp_path / "events.db") == 200
    # the failing sink's events are in its spool, for the next start: every one, the later ones too
    assert dead_letters(tmp_path / "dead.jsonl") == []
    assert spooled(tmp_path / "spool") == {"exiting": 200}


_CTRL_C_PROGRAM = """
    import sys, time
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks.database import DatabaseSink

    class Slow(DatabaseSink):            # 0.3 s a batch: ten batches take three seconds
        def send(self, batch):
            time.sleep(0.3)
            super().send(batch)

    batcher = EventBatcher([Slow("sqlite:///events.db")], use_batching=False, dead_letter="dead.jsonl")
    for n in range(10):
        batcher.emit("JOB_STARTED", {"job_id": n}, worker="camera-1")
    print("closing", flush=True)
    try:
        batcher.close(timeout=60)
        print("not interrupted", flush=True)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    start = time.monotonic()
    result = batcher.close(timeout=60)   # finishes the same close, without waiting 60 s
    print(f"second close {time.monotonic() - start:.1f} pending {result.pending}", flush=True)
"""


def test_ctrl_c_during_close_leaves_a_close_that_finishes_promptly(tmp_path: Path) -> None:
    with Program(_CTRL_C_PROGRAM, tmp_path) as program:
        program.wait_for_line("closing")
        time.sleep(0.5)  # inside close(), with most batches still to send
        program.proc.send_signal(signal.SIGINT)
        assert program.wait(timeout=30) == 0, program.stderr()
    assert program.lines[1] == "interrupted"
    seconds, pending = program.lines[2].split()[2], program.lines[2].split()[4]
    assert float(seconds) < 5.0 and pending == "0"  # the rest of the work, not the 60 s timeout
    assert sqlite_rows(tmp_path / "events.db") == 10
