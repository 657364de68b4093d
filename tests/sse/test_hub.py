"""SSEHub on its own: replay, resets, duplicates, bounds and counters (no sockets needed)."""

from __future__ import annotations

import pytest

from timelapser_workers.sinks.sse import HubFullError, SSEHub, Subscription
from tests.sse.conftest import events


def _ids(frames: list[bytes]) -> list[str]:
    return [line[4:] for f in frames for line in f.decode().split("\n") if line.startswith("id: ")]


def test_settings_are_checked_by_name():
    with pytest.raises(ValueError, match="replay_events must be a positive int, got 0"):
        SSEHub(replay_events=0)
    with pytest.raises(ValueError, match="client_queue_events"):
        SSEHub(client_queue_events="10")  # type: ignore[arg-type]


def test_duplicate_ids_are_published_once():
    hub = SSEHub()
    client = hub.subscribe()
    batch = events(3)
    assert hub.publish(batch) == 3
    assert hub.publish(batch[1:] + events(1)) == 1  # e.g. a local SSESink and a DatabaseEventSource
    assert len(_ids(client.take())) == 4
    assert hub.stats()["duplicates_skipped"] == 2


def test_resume_is_exact_and_reset_is_counted():
    hub = SSEHub(replay_events=4)
    batch = events(6)
    hub.publish(batch)
    resumed = hub.subscribe(last_event_id=batch[3].id)
    assert _ids(resumed.take()) == [e.id for e in batch[4:]]
    reset = hub.subscribe(last_event_id="no-such-id")
    frames = reset.take()
    assert frames[0].startswith(b"event: stream-reset\n") and b"id:" not in frames[0]
    assert _ids(frames) == [e.id for e in batch[2:]]
    stats = hub.stats()
    assert stats["resumes"] == 2 and stats["stream_resets"] == 1 and stats["replay_buffered"] == 4


def test_resume_respects_the_subscription():
    hub = SSEHub()
    mixed = events(2, worker="a") + events(2, worker="b")
    hub.publish(mixed)
    client = hub.subscribe(Subscription(workers=frozenset({"b"})), last_event_id=mixed[0].id)
    assert _ids(client.take()) == [e.id for e in mixed[2:]]


def test_slow_client_is_cut_off_at_its_bound_and_others_continue():
    hub = SSEHub(client_queue_events=5)
    slow, fast = hub.subscribe(), hub.subscribe()
    for _ in range(3):
        hub.publish(events(2))
        fast.take()
    assert slow.closed and slow.closed_reason == "slow" and slow.pending() == 0
    assert not fast.closed and hub.client_count == 1
    hub.publish(events(2))
    assert len(_ids(fast.take())) == 2
    assert hub.stats()["clients_dropped_slow"] == 1


def test_max_clients_and_close():
    hub = SSEHub(max_clients=1)
    client = hub.subscribe()
    with pytest.raises(HubFullError, match="maximum of 1"):
        hub.subscribe()
    hub.unsubscribe(client)
    client = hub.subscribe()
    hub.close()
    assert client.closed and client.wait(0)
    assert hub.publish(events(1)) == 0
    with pytest.raises(RuntimeError, match="closed"):
        hub.subscribe()


def test_allowed_channels_are_any_of_worker_source_type():
    sub = Subscription(allowed=frozenset({"worker:a", "type:JOB_FAILED"}))
    assert sub.matches("a", None, "JOB_STARTED")
    assert sub.matches("b", None, "JOB_FAILED")
    assert not sub.matches("b", "s", "JOB_STARTED")
    assert Subscription(allowed=frozenset({"*"})).matches(None, None, "X")


def test_sse_sink_loads_by_name_with_typed_options():
    from timelapser_workers.sinks.registry import load_sink
    from timelapser_workers.sinks.sse import SSESink

    sink = load_sink("sse?replay_events=5&named_events=true")
    assert isinstance(sink, SSESink) and sink.hub.replay_events == 5 and sink.hub.named_events is True
    with pytest.raises(TypeError, match="replay_events"):
        SSESink(SSEHub(), replay_events=5)
