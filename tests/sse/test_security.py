"""The SSE holes of issue 12, closed: CORS with credentials, spoofed header names, what a
stream-reset reveals, and clients that hold the built-in server's threads without a request."""

from __future__ import annotations

import http.client
import socket
import time

import pytest

from timelapser_workers.sinks.sse import SSEEndpoint, SSEHub, SSERefused, SSESink
from timelapser_workers.sinks.sse.wsgi import ServerThread, SSEWsgiApp, make_server
from tests.sse.conftest import events, wait_until


def test_cors_star_with_credentials_is_refused_when_the_app_is_built():
    sink = SSESink()
    for build in (lambda **o: SSEEndpoint(sink.hub, **o), sink.wsgi_app, sink.asgi_app):
        with pytest.raises(ValueError, match=r"list the origins that may"):
            build(cors_origins="*", cors_allow_credentials=True)
    with pytest.raises(ValueError, match=r"'https://a.example/' is not an origin"):
        SSEEndpoint(sink.hub, cors_origins=["https://a.example/"])
    with pytest.raises(ValueError, match=r"not inside a list"):
        SSEEndpoint(sink.hub, cors_origins=["*"], cors_allow_credentials=True)


def _preflight(port: int, origin: str) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("OPTIONS", "/events", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}


def test_cors_options_star_list_and_credentials(serve):
    star = serve(cors_origins="*")
    client = star.connect(headers={"Origin": "http://any.test"})
    assert client.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in client.headers
    listed = serve(cors_origins=["http://app.test"], cors_allow_credentials=True)
    good = listed.connect(headers={"Origin": "http://app.test"})
    assert good.headers["access-control-allow-origin"] == "http://app.test"
    assert good.headers["access-control-allow-credentials"] == "true" and good.headers["vary"] == "Origin"
    evil = listed.connect(headers={"Origin": "http://evil.test"})
    assert not {h for h in evil.headers if h.startswith("access-control-")}
    status, headers = _preflight(listed.port, "http://app.test")
    assert status == 204 and headers["access-control-allow-origin"] == "http://app.test"
    assert headers["access-control-allow-methods"] == "GET, OPTIONS"
    status, headers = _preflight(listed.port, "http://evil.test")
    assert status == 204 and not {h for h in headers if h.startswith("access-control-")}
    none = serve()
    assert "access-control-allow-origin" not in none.connect(headers={"Origin": "http://app.test"}).headers


def test_cors_on_a_refusal_names_only_listed_origins(serve):
    def authorize(request):
        raise SSERefused("log in first", status=401)

    served = serve(authorize=authorize, cors_origins=["http://app.test"], cors_allow_credentials=True)
    evil = served.connect(headers={"Origin": "http://evil.test"})
    assert evil.status == 401 and not {h for h in evil.headers if h.startswith("access-control-")}


def test_underscore_header_names_never_reach_authorize(serve):
    seen = []

    def authorize(request):
        seen.append(dict(request.headers))
        if request.header("x-remote-user") != "admin":
            raise SSERefused("who are you?", status=401)
        return None

    served = serve(authorize=authorize)
    spoofed = served.connect(headers={"X_Remote_User": "admin"})
    assert spoofed.status == 401
    assert "x-remote-user" not in seen[-1] and "x_remote_user" not in seen[-1]
    assert served.connect(headers={"X-Remote-User": "admin"}).status == 200


def test_stream_reset_reveals_only_what_the_client_may_see(serve):
    served = serve(hub=SSEHub(replay_events=10), authorize=lambda request: ["worker:mine"])
    secret = events(3, worker="other")
    mine = events(3, worker="mine")
    served.hub.publish(secret + mine)
    client = served.connect(headers={"Last-Event-ID": "long-gone"})
    got = client.wait_for(3)
    reset = client.messages[0]
    assert reset["event"] == "stream-reset"
    assert reset["json"]["oldest_available_id"] == mine[0].id  # not secret[0].id
    assert set(reset["json"]) == {"reason", "last_event_id", "oldest_available_id"}
    assert [m["id"] for m in got] == [e.id for e in mine]
    assert not any(e.id in str(m) for e in secret for m in client.messages)


def test_a_client_trickling_its_request_is_cut_off_and_connections_are_bounded():
    hub = SSEHub()
    server = ServerThread(make_server(SSEWsgiApp(hub), request_timeout_seconds=0.5, max_connections=4)).start()
    port = server.server.server_address[1]
    try:
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        started = time.monotonic()
        closed_after = None
        for byte in b"GET /events HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.1 s: never done in 0.5 s
            try:
                slow.sendall(bytes([byte]))
                time.sleep(0.1)
                slow.setblocking(False)
                if slow.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed_after = time.monotonic() - started
                break
            finally:
                slow.setblocking(True)
        assert closed_after is not None and closed_after < 2.0, "the trickling client was never cut off"
        slow.close()
        idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(4)]
        wait_until(lambda: threading_count(server) == 4, 5, "four connections held")
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert extra.recv(1) == b""  # closed at once: max_connections=4 are held
        assert server.server.connections_refused == 1  # type: ignore[attr-defined]
        for s in idle + [extra]:
            s.close()
        wait_until(lambda: threading_count(server) == 0, 5, "the idle connections to be released")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/events?bad=1")
        assert conn.getresponse().status == 400
        conn.close()
    finally:
        server.stop()


def threading_count(server: ServerThread) -> int:
    """Connections the server holds now (slots taken)."""
    slots = server.server._slots  # type: ignore[attr-defined]
    return server.server.max_connections - slots._value  # type: ignore[attr-defined]
