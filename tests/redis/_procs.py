"""Child processes for the cross-process proof; run as ``python -m tests.redis._procs ROLE ...``.

    producer URL NAME DEAD_LETTER   an EventBatcher with the Redis sink; reads commands on stdin:
                                    "emit N RATE" emits N events at about RATE/s, flushes, and
                                    prints one JSON line of counters; end of input closes it;
                                    {"failures": n} whenever a send to Redis failed
    web URL KIND REPLAY             a hub fed by RedisEventSource, served by KIND (wsgi: the
                                    package's make_server; asgi: uvicorn); prints {"port": ...};
                                    "stats" on stdin prints the source's and the hub's counters
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def producer(url: str, name: str, dead_letter: str) -> None:
    from timelapser_workers import EventBatcher
    from timelapser_workers.sinks import load_sink

    sink = load_sink(f"{url}&wants_aggregated=false&socket_timeout=2")
    batcher = EventBatcher([sink], batch_size=20, batch_timeout=0.02, max_retries=10_000,
                           retry_delay=0.02, retry_max_delay=0.1, dead_letter=dead_letter)
    emitted = 0

    def report_failures() -> None:  # a line on each new failed send: the test's sign of an outage
        seen = 0
        while True:
            failures = batcher.stats()["sinks"][sink.name]["failures"]
            if failures > seen:
                seen = failures
                print(json.dumps({"failures": failures}), flush=True)
            time.sleep(0.01)

    threading.Thread(target=report_failures, daemon=True).start()
    print(json.dumps({"ready": name}), flush=True)
    for line in sys.stdin:
        _, count, rate = line.split()
        start = time.monotonic()
        for k in range(int(count)):
            batcher.emit("FRAME_CAPTURED", {"producer": name, "k": emitted}, worker=name, source="proof")
            emitted += 1
            ahead = (k + 1) / float(rate) - (time.monotonic() - start)
            if ahead > 0.005:
                time.sleep(ahead)  # pacing the producer, so the test can act mid-stream
        result = batcher.flush(60)
        lane = batcher.stats()["sinks"][sink.name]
        print(json.dumps({"emitted": emitted, "complete": result.complete, "retries": lane["retries"],
                          "dead_lettered": lane["dead_lettered"], "sent": lane["events_sent"],
                          **getattr(sink, "stats")()}), flush=True)
    batcher.close(30)


def web(url: str, kind: str, replay: int) -> None:
    from timelapser_workers.sinks.sse import SSEHub
    from timelapser_workers.sinks.sse.wsgi import ServerThread, SSEWsgiApp, make_server
    from timelapser_workers.sources.redis import RedisEventSource

    hub = SSEHub(replay_events=replay, client_queue_events=20_000)
    source = RedisEventSource(url, hub, block_seconds=0.5, reconnect_max_seconds=0.2, catch_up_seconds=10).start()
    if kind == "wsgi":
        server = ServerThread(make_server(SSEWsgiApp(hub, keepalive_seconds=0.5), write_timeout_seconds=20)).start()
        port = server.server.server_address[1]
        stop = server.stop
    else:
        import uvicorn

        from timelapser_workers.sinks.sse.asgi import SSEAsgiApp

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        userver = uvicorn.Server(uvicorn.Config(SSEAsgiApp(hub, keepalive_seconds=0.5), log_level="warning",
                                                lifespan="off", backlog=128))
        thread = threading.Thread(target=userver.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not userver.started and time.monotonic() < deadline:
            time.sleep(0.01)

        def stop() -> None:
            userver.should_exit = True
            thread.join(5)

    print(json.dumps({"port": port}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps({"source": source.stats(), "hub": hub.stats()}), flush=True)
    hub.close()
    stop()
    source.stop()


if __name__ == "__main__":
    role, *args = sys.argv[1:]
    if role == "producer":
        producer(args[0], args[1], args[2])
    elif role == "web":
        web(args[0], args[1], int(args[2]))
    else:
        sys.exit(f"unknown role {role!r}; use producer or web")
