"""SSE fan-out to many clients: ours (ASGI under uvicorn, WSGI under gunicorn gthread) beside
sse-starlette's per-event write loop, in one run, on 127.0.0.1.

    .venv/bin/python bench/sse_fanout.py [--clients 1000] [--rate 100] [--seconds 10]

Each server runs as a subprocess (bench/_sse_server.py); events are emitted in it at ``--rate``
per second through an EventBatcher with default settings (batch_size 10, batch_timeout 0.5 s),
so the latency is emit -> client, the batch timeout included. The clients are one
single-threaded process (non-blocking sockets, a selector), so their parsing costs little and
does not share the server's interpreter lock. "in order" counts clients that got every event,
once, in order. CPU is the server's (all its processes) over the run, in % of one core.
Target (issue 12): 1,000 clients at 100 events/s, p99 <= 1 s, every event in order.
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import platform
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

ROWS = {
    # label: (BENCH_APP, server command)
    "ours, ASGI (uvicorn)": ("ours_asgi", ["-m", "uvicorn", "bench._sse_server:app", "--port", "0",
                                           "--backlog", "2048", "--no-access-log"]),
    "ours, WSGI (gunicorn gthread)": ("ours_wsgi", ["-m", "gunicorn", "--no-control-socket", "-k", "gthread",
                                                    "-w", "1", "-b", "127.0.0.1:0", "--backlog", "2048",
                                                    "bench._sse_server:app"]),
    "sse-starlette, per-event writes (uvicorn)": ("starlette_asgi", ["-m", "uvicorn", "bench._sse_server:app",
                                                                     "--port", "0", "--backlog", "2048",
                                                                     "--no-access-log"]),
}
PORT_LINE = re.compile(r"(?:running on|Listening at:) http://127\.0\.0\.1:(\d+)")


# the event's data is {"seq": N, "t": EMITTED}: parsed with one regex pass per read (cheap, in C)
_SEQ = re.compile(rb'"seq": ?(\d+)')
_T = re.compile(rb'"t": ?([0-9.e+-]+)')


def client_main(port: int, clients: int, expected: int, deadline_s: float) -> None:
    """Child: ``clients`` streams on one selector; print one JSON line of what arrived."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    states = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
        sock.setblocking(False)
        state = {"sock": sock, "buf": b"", "head": False, "next": 0, "ok": True, "n": 0}
        states.append(state)
        sel.register(sock, selectors.EVENT_READ, state)
    latencies = array.array("d")
    print("ready", flush=True)
    cpu0 = time.process_time()
    deadline = time.monotonic() + deadline_s
    open_ = clients
    while open_ and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            state = key.data
            try:
                data = state["sock"].recv(262144)
            except BlockingIOError:
                continue
            now = time.time()
            if not data:
                sel.unregister(state["sock"])
                open_ -= 1
                continue
            buf = state["buf"] + data
            if not state["head"]:
                split = buf.find(b"\r\n\r\n")
                if split < 0:
                    state["buf"] = buf
                    continue
                buf, state["head"] = buf[split + 4:], True
            buf = buf.replace(b"\r\n", b"\n")  # sse-starlette ends lines with CR LF
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                state["buf"] = buf
                continue
            complete, state["buf"] = buf[:cut], buf[cut + 2:]
            seqs = [int(x) for x in _SEQ.findall(complete)]
            if seqs:
                first = state["next"]
                if seqs != list(range(first, first + len(seqs))):
                    state["ok"] = False
                state["next"] = seqs[-1] + 1
                state["n"] += len(seqs)
                latencies.extend([now - float(t) for t in _T.findall(complete)])
            if state["n"] >= expected:
                sel.unregister(state["sock"])
                state["sock"].close()
                open_ -= 1
    cpu = time.process_time() - cpu0
    lat = sorted(latencies)
    pick = (lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]) if lat else (lambda q: float("nan"))
    print(json.dumps({
        "in_order": sum(1 for s in states if s["ok"] and s["n"] == expected),
        "delivered": len(lat), "p50": pick(0.5), "p99": pick(0.99), "max": lat[-1] if lat else None,
        "client_cpu": cpu,
    }), flush=True)


def _cpu(pid: int) -> float:
    import psutil

    total = 0.0
    try:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            t = p.cpu_times()
            total += t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return total


def run(label: str, clients: int, rate: float, seconds: float) -> dict[str, Any]:
    app, args = ROWS[label]
    expected = int(rate * seconds)
    if app == "ours_wsgi":
        args = args + ["--threads", str(clients + 20), "--worker-connections", str(clients + 100)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_APP": app, "BENCH_CLIENTS": str(clients),
           "BENCH_RATE": str(rate), "BENCH_EVENTS": str(expected)}
    server = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    port = None
    for line in server.stdout:
        found = PORT_LINE.search(line)
        if found:
            port = int(found.group(1))
            break
    assert port, f"{label}: the server did not start"
    threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()  # drain
    child = subprocess.Popen([sys.executable, __file__, "--child", str(port), str(clients), str(expected),
                              str(seconds + 60)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        cpu0, t0 = _cpu(server.pid), time.monotonic()
        result = json.loads(child.stdout.readline())
        cpu1, t1 = _cpu(server.pid), time.monotonic()
        child.wait(30)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        if child.poll() is None:
            child.kill()
    result.update(label=label, clients=clients, rate=rate, expected=expected,
                  server_cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0), elapsed=t1 - t0,
                  client_cpu_pct=100 * result["client_cpu"] / (t1 - t0))
    return result


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        client_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=100.0, help="events emitted per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long events are emitted")
    parser.add_argument("--only", choices=sorted(ROWS), action="append", help="run only these rows")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"{datetime.date.today()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()} {platform.machine()}; load average {load:.2f} at start")
    print(f"{args.clients} clients, {args.rate:g} events/s for {args.seconds:g} s "
          f"({int(args.rate * args.seconds)} events each); EventBatcher defaults (batch_size 10, batch_timeout 0.5 s)\n")
    print("| server | in order | p50 ms | p99 ms | max ms | server CPU | client CPU | p99 <= 1 s, all in order |")
    print("|---|---|---|---|---|---|---|---|")
    for label in args.only or list(ROWS):
        r = run(label, args.clients, args.rate, args.seconds)
        ok = r["in_order"] == r["clients"] and r["p99"] <= 1.0
        print(f"| {label} | {r['in_order']}/{r['clients']} | {r['p50'] * 1000:,.0f} | {r['p99'] * 1000:,.0f} | "
              f"{(r['max'] or float('nan')) * 1000:,.0f} | {r['server_cpu_pct']:.0f}% | {r['client_cpu_pct']:.0f}% | "
              f"{'PASS' if ok else 'FAIL'} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
