"""Memory stays bounded while a sink stalls: 120,000 events offered by two threads to a sink
whose send() never returns hold at most what the README's formula allows (tests/faults/
holders.py), in resident memory, and every event is delivered, dead-lettered or dropped and
counted. Both ways a stall is met: a slow healthy sink (backpressure: the ingress fills and
drops) and a hung one (isolated after send_timeout: dead-lettered). A whole program in a
subprocess, so its resident set is its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.faults.holders import Holders
from tests.faults.programs import Program

OFFERED, PRODUCERS = 120_000, 2
HOLDERS = Holders(max_queue_size=2_000, lane_max_events=2_000, batch_size=100, producers=PRODUCERS,
                  workers=PRODUCERS)

_PROGRAM = """
    import json, os, sys, threading, tracemalloc
    from timelapser_workers import EventBatcher
    from timelapser_workers.events import make_event

    send_timeout, offered, producers = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    max_queue, lane_max, batch = map(int, sys.argv[4:7])
    page = os.sysconf("SC_PAGE_SIZE")

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def payload(i):   # a 2 KB note: what one event holds must dwarf the allocator's slack
        return {"job_id": i, "camera": f"cam{i % 8}", "path": f"/frames/{i:08d}.jpg",
                "note": f"{i:08d}" * 250}

    class Stalled:                               # send() returns only when the test is over
        name = "stalled"
        wants_aggregated = True
        def __init__(self):
            self.gate, self.ids = threading.Event(), set()
        def send(self, events):
            self.gate.wait(600)
            self.ids.update(m.id for e in events for m in (e.members or (e,)))

    dead = set()
    def dead_letter(events, sink, reason, error):  # counted in memory: no disk in the way
        dead.update(m.id for e in events for m in (e.members or (e,)))

    sink = Stalled()
    batcher = EventBatcher([sink], batch_size=batch, batch_timeout=0.02, max_queue_size=max_queue,
                           lane_max_events=lane_max, send_timeout=send_timeout, overflow="drop_newest",
                           dead_letter=dead_letter, shutdown_timeout=30,
                           spool_max_bytes=0)  # the in-memory holders alone (a spool is on disk)
    batcher.emit("JOB_STARTED", payload(-1), worker="w0")   # the threads run: the baseline has them
    baseline = peak = rss()
    done = threading.Event()

    def sample():
        global peak
        while not done.is_set():
            peak = max(peak, rss())
            done.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()

    def produce(t):
        for i in range(offered // producers):
            batcher.emit("JOB_STARTED", payload(i), worker=f"w{t}")

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(producers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    sampler.join()
    peak = max(peak, rss())
    state = batcher.stats()["sinks"]["stalled"]["state"]
    sink.gate.set()
    result = batcher.close(30)
    stats = batcher.stats()
    # what one held event costs, measured last so that the baseline above is not inflated
    tracemalloc.start()
    held = [make_event("JOB_STARTED", payload(i), worker="w0") for i in range(5_000)]
    per_event = tracemalloc.get_traced_memory()[0] // len(held)
    tracemalloc.stop()
    print(json.dumps({"growth": peak - baseline, "per_event": per_event, "state": state,
                      "delivered": len(sink.ids), "dead": len(dead), "both": len(sink.ids & dead),
                      "accounted": len(sink.ids | dead), "dropped": stats["events_dropped"],
                      "pending": result.pending}), flush=True)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads the resident set from /proc")
@pytest.mark.parametrize("send_timeout, state", [(30.0, "healthy"), (0.2, "hung")])
def test_a_stalled_sink_holds_memory_within_the_bound_and_every_event_is_counted(
        tmp_path: Path, send_timeout: float, state: str) -> None:
    h = HOLDERS
    with Program(_PROGRAM, tmp_path, str(send_timeout), str(OFFERED), str(PRODUCERS),
                 str(h.max_queue_size), str(h.lane_max_events), str(h.batch_size)) as program:
        assert program.wait(timeout=120) == 0, program.stderr()
    report = json.loads(program.lines[-1])
    assert report["state"] == state, report
    # what the events held may cost: the formula's count, at what one event costs here, with
    # room for the allocator (freed memory it keeps) and the threads; held without a bound, the
    # 120,000 offered events would take several times more than this
    allowed = 2 * h.bound * report["per_event"] + 16 * 2**20
    assert report["growth"] <= allowed, (report, str(h))
    assert OFFERED * report["per_event"] > 3 * allowed  # the test can tell
    dropped = report["dropped"]
    assert set(dropped) == {"drop_newest"} and report["pending"] == 0, report
    # delivered, dead-lettered or dropped at the edge, each exactly once (a batch in flight
    # when a hung sink was isolated and that completed later is in both places, as documented)
    assert report["accounted"] + dropped["drop_newest"] == OFFERED + 1, report
    assert (report["dead"] > 0) == (state == "hung"), report
    assert report["both"] <= h.flush, report
