"""A forked worker process writes through the sink it inherited: a program that forks, run as a
subprocess, and the stream counted afterwards. The child must not share the parent's writer
marker (its batch numbers would look already written, and its events would be lost)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = textwrap.dedent("""
    import os, sys
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks import load_sink

    sink = load_sink(sys.argv[1] + "&wants_aggregated=false")
    batcher = EventBatcher([sink], batch_size=5, batch_timeout=0.01, dead_letter=sys.argv[2])
    for k in range(10):                      # the parent's first batches: numbers 1, 2, ...
        batcher.emit("X", {"who": "parent", "k": k})
    assert batcher.flush(10).complete
    pid = os.fork()
    who = "child" if pid == 0 else "parent"
    for k in range(10, 30):
        batcher.emit("X", {"who": who, "k": k})
    assert batcher.flush(10).complete
    if pid == 0:
        os._exit(0 if batcher.close(10).complete else 1)
    _, status = os.waitpid(pid, 0)
    assert status == 0, status
    print(sink.writer_id)
""")


def test_a_forked_child_writes_under_its_own_marker(redis_url: str, stream: str, rdb: Any, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", PROGRAM, f"{redis_url}?stream={stream}", str(tmp_path / "dead.jsonl")],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    import json

    got = [json.loads(fields["event"])["data"] for _, fields in rdb.xrange(stream)]
    assert sorted((d["who"], d["k"]) for d in got) == sorted(
        [("parent", k) for k in range(30)] + [("child", k) for k in range(10, 30)])
    markers = list(rdb.scan_iter(match=f"{stream}:writer:*"))
    assert len(markers) == 2 and f"{stream}:writer:{out.stdout.strip()}" in markers
