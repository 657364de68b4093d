"""fork() while the flush thread and a sink lane are busy: parent and child both keep
delivering, and neither deadlocks (every wait here has a deadline; a hang fails the test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, threading, time
    sys.path.insert(0, sys.argv[1])
    from timelapser_workers import EventBatcher

    out = sys.argv[2]

    class SlowFileSink:   # busy in send(): the lane thread holds the sink while we fork
        name = "file"
        wants_aggregated = False
        def send(self, batch):
            time.sleep(0.002)
            with open(out, "a") as f:
                for e in batch:
                    f.write(json.dumps({"pid": os.getpid(), "w": e.worker, "n": e.data["n"]}) + "\\n")

    b = EventBatcher([SlowFileSink()], batch_size=50, batch_timeout=0.005,
                     dead_letter=out + ".dead", max_queue_size=100_000, overflow="block",
                     lane_max_events=10_000_000)
    stop = threading.Event()

    def produce(t):   # keeps the ingress lock, the id lock and the flush thread busy
        n = 0
        while not stop.is_set():
            b.emit("JOB_STARTED", {"n": n}, worker=f"p{t}")
            n += 1
        produced[t] = n

    produced = [0, 0]
    threads = [threading.Thread(target=produce, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    children = []
    for k in range(8):
        time.sleep(0.02)
        pid = os.fork()
        if pid == 0:   # the child: only this thread survives the fork
            for n in range(200):
                b.emit("JOB_STARTED", {"n": n}, worker=f"child{k}")
            r = b.close(timeout=10)
            os._exit(0 if r.pending == 0 and r.delivered == 200 else 3)
        children.append(pid)
    stop.set()
    for t in threads:
        t.join(10)
    deadline = time.monotonic() + 20
    codes = []
    for pid in children:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                codes.append(os.waitstatus_to_exitcode(status))
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                codes.append("hung")
                break
            time.sleep(0.01)
    r = b.close(timeout=20)
    print(json.dumps({"codes": codes, "produced": produced, "pending": r.pending}))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_busy_parent_and_children_keep_delivering(tmp_path):
    out = tmp_path / "events.jsonl"
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, ROOT, str(out)],
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["codes"] == [0] * 8, report
    assert report["pending"] == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    parent_pid = next(r["pid"] for r in rows if r["w"].startswith("p"))
    for t in range(2):  # the parent delivered every event of each producer, once
        ns = sorted(r["n"] for r in rows if r["w"] == f"p{t}")
        assert ns == list(range(report["produced"][t]))
    for k in range(8):  # each child delivered its own 200, once, and none of the parent's
        child = [r for r in rows if r["w"] == f"child{k}"]
        assert sorted(r["n"] for r in child) == list(range(200))
        assert {r["pid"] for r in child} != {parent_pid}
    assert not (tmp_path / "events.jsonl.dead").exists()
