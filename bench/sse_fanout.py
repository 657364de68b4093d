"""Fan-out latency of the SSE hub to many clients, WSGI and ASGI, on 127.0.0.1.

    python bench/sse_fanout.py [--clients 200] [--batches 50] [--batch-size 10] [--rate 50]

The server (hub, app, publisher) runs in this process; the clients run as threads in a child
process, so their parsing does not share the server's interpreter lock. Latency is from
``hub.publish`` to the client having parsed the event (wall clock, same machine). Prints a table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def client_main(port: int, clients: int, expected: int, deadline_s: float) -> None:
    """Child: ``clients`` readers; print one JSON line of per-event latencies and orders."""
    results: list[tuple[bool, list[float]]] = []
    lock = threading.Lock()
    ready = threading.Barrier(clients + 1)

    def read() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=deadline_s)
        conn.request("GET", "/events")
        resp = conn.getresponse()
        ready.wait()
        ids, lat = [], []
        try:
            while len(ids) < expected:
                line = resp.readline()
                if not line:
                    break
                if line.startswith(b"data: "):
                    now = time.time()
                    event = json.loads(line[6:])
                    ids.append(event["data"]["seq"])
                    lat.append(now - event["data"]["t"])
        finally:
            conn.close()
        with lock:
            results.append((ids == list(range(expected)), lat))

    threads = [threading.Thread(target=read, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    ready.wait()
    print("ready", flush=True)
    for t in threads:
        t.join(deadline_s)
    lat = sorted(x for _, l in results for x in l)
    print(json.dumps({"in_order": sum(ok for ok, _ in results), "lat": [lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]] if lat else None}), flush=True)


def run(kind: str, clients: int, batches: int, batch_size: int, rate: float) -> dict:
    from timelapser_workers.sinks.sse import SSEHub
    from timelapser_workers.sinks.sse.asgi import SSEAsgiApp
    from timelapser_workers.sinks.sse.wsgi import ServerThread, SSEWsgiApp, make_server
    from timelapser_workers.events import make_event

    hub = SSEHub(max_clients=clients + 10, client_queue_events=batches * batch_size + 10)
    if kind == "wsgi":
        server = ServerThread(make_server(SSEWsgiApp(hub))).start()
        port = server.server.server_address[1]
    else:
        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(SSEAsgiApp(hub), log_level="warning", backlog=1024, timeout_graceful_shutdown=2))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
    expected = batches * batch_size
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", str(port), str(clients), str(expected)],
        stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout.readline().strip() == "ready"
    while hub.client_count < clients:
        time.sleep(0.01)
    started = time.monotonic()
    seq = 0
    for _ in range(batches):
        batch = []
        for _ in range(batch_size):
            batch.append(make_event("JOB_COMPLETED", {"seq": seq, "t": time.time()}, worker="bench"))
            seq += 1
        hub.publish(batch)
        time.sleep(1.0 / rate)
    result = json.loads(child.stdout.readline())
    child.wait(30)
    hub.close()
    if kind == "wsgi":
        server.stop()
    else:
        server.should_exit = True
        thread.join(10)
    return {"kind": kind, "elapsed": time.monotonic() - started, **result}


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        client_main(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), 60.0)
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--rate", type=float, default=50.0, help="batches published per second")
    args = parser.parse_args()
    print(f"{args.clients} clients, {args.batches} batches of {args.batch_size} events, {args.rate:g} batches/s\n")
    print(f"{'app':6} {'in order':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in ("wsgi", "asgi"):
        r = run(kind, args.clients, args.batches, args.batch_size, args.rate)
        p50, p99, mx = (x * 1000 for x in r["lat"])
        print(f"{kind:6} {r['in_order']:>5}/{args.clients:<3} {p50:8.1f} {p99:8.1f} {mx:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
