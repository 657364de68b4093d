"""Behaviour of the SSE endpoint over real sockets, the same tests for the WSGI and ASGI apps."""

from __future__ import annotations

import socket
import statistics
import threading
import time

import pytest

from timelapser_workers.sinks.sse import SSEHub, SSERefused
from tests.sse.conftest import SSETestClient, events, marker, wait_until
from timelapser_workers.events import make_event


def test_headers_retry_hint_and_ids(serve):
    served = serve(retry_milliseconds=1234)
    client = served.connect()
    assert client.status == 200
    assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    wait_until(lambda: served.hub.client_count == 1, 5, "the client to register")
    batch = events(3)
    served.hub.publish(batch)
    got = client.wait_for(3)
    assert [m["id"] for m in got] == [e.id for e in batch]
    assert [m["json"]["data"]["i"] for m in got] == [0, 1, 2]
    assert got[0]["json"]["type"] == "JOB_COMPLETED" and got[0]["json"]["batch_count"] == 1
    assert client.retry == 1234
    assert all(m["id"] is not None for m in client.messages)  # no control message so far


def test_keepalive_comment_on_idle_stream(serve):
    served = serve(keepalive_seconds=0.2)
    client = served.connect()
    wait_until(lambda: client.comments.count("keep-alive") >= 2, 5, "two keep-alive comments")
    assert client.messages == []


def test_many_clients_receive_every_event_in_order(serve):
    served = serve(hub=SSEHub(max_clients=300, client_queue_events=5000))
    n_clients, n_batches, per_batch = 200, 20, 10
    clients = [served.connect() for _ in range(n_clients)]
    assert all(c.status == 200 for c in clients)
    wait_until(lambda: served.hub.client_count == n_clients, 10, f"{n_clients} clients to register")
    published = []
    sent_at: dict[str, float] = {}
    for b in range(n_batches):
        batch = events(per_batch, batch=b)
        for e in batch:
            sent_at[e.id] = time.monotonic()
        served.hub.publish(batch)
        published += [e.id for e in batch]
        time.sleep(0.005)
    total = n_batches * per_batch
    latencies = []
    for c in clients:
        got = c.wait_for(total, timeout=30)
        assert [m["id"] for m in got] == published
        latencies += [m["t"] - sent_at[m["id"]] for m in got]
    # the hub recorded nothing dropped and nobody was cut off
    stats = served.hub.stats()
    assert stats["clients_dropped_slow"] == 0
    assert stats["events_published"] == total
    latencies.sort()
    print(
        f"\n{served.kind}: {n_clients} clients x {total} events, fan-out latency "
        f"p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )


def test_resume_with_last_event_id_header_and_query(serve):
    served = serve()
    first = events(5)
    served.hub.publish(first)
    missed = events(4)
    served.hub.publish(missed)
    # header, as a browser's EventSource sends it on reconnect
    by_header = served.connect(headers={"Last-Event-ID": first[-1].id})
    assert by_header.wait_for(4) and by_header.ids() == [e.id for e in missed]
    # query parameter, for a first connection that knows where it stopped
    by_query = served.connect(f"/events?lastEventId={first[2].id}")
    assert by_query.wait_for(6) and by_query.ids() == [e.id for e in first[3:] + missed]
    # then live events follow with no gap and no double
    live = events(3)
    served.hub.publish(live)
    assert by_header.wait_for(7) and by_header.ids() == [e.id for e in missed + live]
    assert by_query.wait_for(9) and by_query.ids() == [e.id for e in first[3:] + missed + live]
    end = marker()
    served.hub.publish([end])  # nothing more (no double) before it
    assert [m["id"] for m in by_header.until(end.id)] == [e.id for e in missed + live]
    assert [m["id"] for m in by_query.until(end.id)] == [e.id for e in first[3:] + missed + live]
    assert not [m for m in by_header.messages if m["event"] == "stream-reset"]


def test_expired_last_event_id_gets_stream_reset_first(serve):
    served = serve(hub=SSEHub(replay_events=5))
    old = events(10)
    served.hub.publish(old)
    client = served.connect(headers={"Last-Event-ID": old[1].id})
    client.wait_for(5)
    first = client.messages[0]
    assert first["event"] == "stream-reset" and first["id"] is None
    assert first["json"]["last_event_id"] == old[1].id
    assert first["json"]["oldest_available_id"] == old[5].id
    assert client.ids() == [e.id for e in old[5:]]
    assert served.hub.stats()["stream_resets"] == 1


def test_server_side_close_then_resume_loses_nothing(serve):
    served = serve()
    client = served.connect()
    wait_until(lambda: served.hub.client_count == 1, 5, "registration")
    before = events(3)
    served.hub.publish(before)
    client.wait_for(3)
    assert served.hub.disconnect_all() == 1
    assert client.ended.wait(5), "the stream did not end after a server-side close"
    during = events(4)
    served.hub.publish(during)
    again = served.connect(headers={"Last-Event-ID": client.ids()[-1]})
    assert again.wait_for(4) and again.ids() == [e.id for e in during]


def test_disconnected_client_is_noticed_and_freed(serve):
    served = serve(keepalive_seconds=0.1)
    clients = [served.connect() for _ in range(3)]
    wait_until(lambda: served.hub.client_count == 3, 5, "registration")
    for c in clients[:2]:
        c.close()
    wait_until(lambda: served.hub.client_count == 1, 5, "two vanished clients to be freed")
    served.hub.publish(events(2))
    assert clients[2].wait_for(2)


def test_slow_client_does_not_stall_others_and_is_dropped(serve):
    hub = SSEHub(client_queue_events=200, replay_events=100)
    served = serve(hub=hub)
    fast = [served.connect() for _ in range(3)]
    # a client that connects, then never reads: tiny receive buffer, so the server's writes block
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", served.port))
    slow.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    wait_until(lambda: hub.client_count == 4, 5, "four clients")
    payload = "x" * 2000
    published = []
    started = time.monotonic()
    dropped_at = None
    for b in range(60):  # at most 6000 events of ~2 kB (12 MB) before the bound must have hit
        batch = events(100, pad=payload, batch=b)
        t0 = time.monotonic()
        hub.publish(batch)
        assert time.monotonic() - t0 < 0.5, "publish waited for a client"
        published += [e.id for e in batch]
        for c in fast:  # the fast ones keep up, batch by batch
            c.wait_for(len(published), timeout=10)
        if dropped_at is None and hub.stats()["clients_dropped_slow"] == 1:
            dropped_at = time.monotonic()
            break
    assert dropped_at is not None, "the slow client was never cut off"
    assert dropped_at - started < 20
    assert hub.client_count == 3
    for c in fast:
        assert c.ids() == published
    slow.close()


def test_channel_filtering_by_worker_source_and_type(serve):
    served = serve()
    a = served.connect("/events?worker=w1")
    b = served.connect("/events?worker=w2&worker=w3")
    c = served.connect("/events?type=JOB_FAILED&source=s1")
    wait_until(lambda: served.hub.client_count == 3, 5, "registration")
    mixed = [
        make_event("JOB_COMPLETED", {"k": 0}, worker="w1", source="s1"),
        make_event("JOB_FAILED", {"k": 1}, worker="w2", source="s1"),
        make_event("JOB_FAILED", {"k": 2}, worker="w3", source="s2"),
        make_event("JOB_STARTED", {"k": 3}, worker="w1", source="s1"),
        make_event("JOB_FAILED", {"k": 4}, worker="w1", source="s1"),
    ]
    served.hub.publish(mixed)
    assert [m["json"]["data"]["k"] for m in a.wait_for(3)] == [0, 3, 4]
    assert [m["json"]["data"]["k"] for m in b.wait_for(2)] == [1, 2]
    assert [m["json"]["data"]["k"] for m in c.wait_for(2)] == [1, 4]
    ends = [marker(worker="w1"), marker(worker="w2"), marker(type="JOB_FAILED", source="s1")]
    served.hub.publish(ends)  # each matches one client's filter: nothing else came before it
    assert [m["json"]["data"]["k"] for m in a.until(ends[0].id)] == [0, 3, 4]
    assert [m["json"]["data"]["k"] for m in b.until(ends[1].id)] == [1, 2]
    assert [m["json"]["data"].get("k") for m in c.until(ends[2].id)] == [1, 4]


def test_authorization_hook_refuses_and_restricts(serve):
    def authorize(request):
        token = request.header("authorization")
        if token is None:
            raise SSERefused("no token: send Authorization: Bearer <token>", status=401)
        if token == "Bearer w1-only":
            return ["worker:w1"]
        if token == "Bearer all":
            return None
        raise SSERefused(f"token {token!r} is not valid", status=403)

    served = serve(authorize=authorize)
    anonymous = served.connect()
    assert anonymous.status == 401 and "no token" in anonymous.body
    assert anonymous.headers.get("www-authenticate") == "Bearer"
    bad = served.connect(headers={"Authorization": "Bearer nope"})
    assert bad.status == 403 and "nope" in bad.body
    asks_more = served.connect("/events?worker=w2", headers={"Authorization": "Bearer w1-only"})
    assert asks_more.status == 403 and "worker:w2" in asks_more.body
    limited = served.connect(headers={"Authorization": "Bearer w1-only"})
    full = served.connect(headers={"Authorization": "Bearer all"})
    assert limited.status == 200 and full.status == 200
    wait_until(lambda: served.hub.client_count == 2, 5, "registration")
    served.hub.publish(events(2, worker="w2") + events(1, worker="w1"))
    assert [m["json"]["worker"] for m in limited.wait_for(1)] == ["w1"]
    assert full.wait_for(3)
    end = marker(worker="w1")
    served.hub.publish([end])
    assert [m["json"]["worker"] for m in limited.until(end.id)] == ["w1"]


def test_authorization_hook_crash_is_a_500_not_a_dead_thread(serve):
    def authorize(request):
        raise KeyError("boom")

    served = serve(authorize=authorize)
    assert served.connect().status == 500
    assert served.connect().status == 500  # the server still answers


@pytest.mark.parametrize(
    "query, named",
    [
        ("?color=red", "'color'"),
        ("?worker=", "worker is empty"),
        ("?worker=" + "w" * 300, "300 characters"),
        ("?type=A%0D%0Aevent:%20forged", "control characters"),
        ("?lastEventId=%00x", "control characters"),
        ("?worker=%FF", "UTF-8"),
    ],
)
def test_bad_query_is_a_400_naming_the_value(serve, query, named):
    served = serve()
    client = served.connect("/events" + query)
    assert client.status == 400
    assert named in client.body
    assert served.connect().status == 200


def test_bad_method_and_max_clients(serve):
    served = serve(hub=SSEHub(max_clients=2))
    ok = [served.connect(), served.connect()]
    assert [c.status for c in ok] == [200, 200]
    wait_until(lambda: served.hub.client_count == 2, 5, "registration")
    full = served.connect()
    assert full.status == 503 and "maximum of 2" in full.body
    assert full.headers.get("retry-after") == "5"
    assert served.hub.stats()["clients_refused_full"] == 1
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    conn.request("POST", "/events", body=b"{}")
    resp = conn.getresponse()
    assert resp.status == 405 and "POST" in resp.read().decode()
    conn.close()


def test_cors_headers_and_preflight(serve):
    served = serve(cors_origins=["http://allowed.test"])
    good = served.connect(headers={"Origin": "http://allowed.test"})
    assert good.headers["access-control-allow-origin"] == "http://allowed.test"
    other = served.connect(headers={"Origin": "http://evil.test"})
    assert other.status == 200 and "access-control-allow-origin" not in other.headers
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    conn.request("OPTIONS", "/events", headers={"Origin": "http://allowed.test", "Access-Control-Request-Method": "GET"})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 204
    assert "Last-Event-ID" in resp.getheader("access-control-allow-headers")
    conn.close()


def test_injection_in_names_ids_and_data_forges_nothing(serve):
    served = serve(hub=SSEHub(named_events=True))
    client = served.connect()
    wait_until(lambda: served.hub.client_count == 1, 5, "registration")
    evil = "JOB\r\nevent: admin\ndata: {\"forged\":true}\n\nid: 999"
    batch = [
        make_event(evil, {"x": "line1\nline2\r\n\r\nevent: forged\ndata: {}\n\n"}, worker="w\nid: 0", source="s\r"),
        make_event("PLAIN", {"x": "\u2028\u0000"}, worker="w1"),
    ]
    served.hub.publish(batch)
    got = client.wait_for(2)
    end = marker()
    served.hub.publish([end])
    assert len(client.until(end.id)) == 2 and len(client.messages) == 3  # nothing forged between
    assert [m["id"] for m in got] == [e.id for e in batch]
    assert got[0]["event"] == evil.replace("\r", "\ufffd").replace("\n", "\ufffd")
    assert got[0]["json"]["data"]["x"] == batch[0].data["x"]  # data survives exactly, as JSON
    assert got[0]["json"]["worker"] == "w\nid: 0"
    assert got[1]["json"]["data"]["x"] == "\u2028\u0000"


def test_sse_sink_behind_the_real_batcher(serve):
    from timelapser_workers.sinks.sse import SSESink
    from timelapser_workers.batcher import EventBatcher

    sink = SSESink(replay_events=100)
    served = serve(hub=sink.hub)
    client = served.connect()
    wait_until(lambda: served.hub.client_count == 1, 5, "registration")
    with EventBatcher([sink], batch_size=5, batch_timeout=0.05) as batcher:
        for job in range(5):
            batcher.emit("JOB_STARTED", {"job_id": job}, worker="thumbnail", source="demo")
        batcher.emit("WORKER_STATISTICS", {"done": 5}, worker="thumbnail", source="demo")
        assert batcher.flush(10).complete
    got = client.wait_for(1)
    wait_until(lambda: sum(m["json"]["batch_count"] for m in client.events()) == 6, 5, "all six originals")
    types = [m["json"]["type"] for m in client.events()]
    assert "WORKER_STATISTICS" in types
    assert any(m["json"]["batch_count"] == 5 for m in client.events()), types
    assert got[0]["id"]


def test_a_stopping_server_answers_a_new_stream_with_the_retry_hint_not_a_503(serve):
    served = serve()
    served.hub.close()
    late = served.connect()
    assert late.status == 200  # EventSource gives up for good on a 503; on a 200 it retries
    assert late.ended.wait(5) and late.error is None
    assert late.comments[-1] == "server stopping: reconnect" and 100 <= late.retry <= 200


def test_a_client_cut_off_as_slow_resumes_from_replay_losing_nothing(serve):
    """README: a client that falls too far behind is cut off and resumes from the replay buffer."""
    hub = SSEHub(client_queue_events=100, replay_events=2000)
    served = serve(hub=hub)
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", served.port))
    slow.sendall(b"GET /events HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")  # 1.0: no chunking to undo
    wait_until(lambda: hub.client_count == 1, 5, "the slow client")
    published = []
    for b in range(300):  # it reads nothing meanwhile: ~2 kB events until its queue overflows
        batch = events(50, pad="x" * 2000, batch=b)
        hub.publish(batch)
        published += [e.id for e in batch]
        if hub.stats()["clients_dropped_slow"] == 1:
            break
        # the server writes until the socket's buffers are full; then its queue grows
        deadline = time.monotonic() + 0.3
        while hub.stats()["frames_pending"] and time.monotonic() < deadline:
            time.sleep(0.005)
    assert hub.stats()["clients_dropped_slow"] == 1, "the slow client was never cut off"
    after = events(5)
    hub.publish(after)
    published += [e.id for e in after]
    # what the browser got before the server let it go: whole frames, in order
    slow.settimeout(10)
    raw = b""
    while chunk := slow.recv(65536):
        raw += chunk
    slow.close()
    frames = raw.split(b"\r\n\r\n", 1)[1].split(b"\n\n")[:-1]  # the last piece is unterminated
    got = [line[4:].decode() for f in frames for line in f.split(b"\n") if line.startswith(b"id: ")]
    assert got and got == published[: len(got)] and len(got) < len(published)
    # it reconnects as EventSource does, with the last id it saw: exactly the rest, once each
    again = served.connect(headers={"Last-Event-ID": got[-1]})
    rest = again.wait_for(len(published) - len(got), timeout=20)
    assert [m["id"] for m in rest] == published[len(got):]
    assert not [m for m in again.messages if m["event"] == "stream-reset"]
