"""Metrics export: a real batcher's stats() through the Prometheus collector (scraped and
parsed with prometheus_client's own parser) and through the OpenTelemetry bridge (read by the
SDK's in-memory reader); unknown stats keys exported rather than failing."""

from __future__ import annotations

import gc
import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from timelapser_workers import PermanentSinkError, signals
from timelapser_workers.integrations.metrics import SPECS, read_points
from timelapser_workers.integrations.prometheus import TimelapserCollector, render
from timelapser_workers.sinks import MemorySink


@pytest.fixture
def busy_batcher(make_batcher, flaky_sink):
    """A batcher that delivered, dead-lettered and rejected something, then went quiet."""
    good = MemorySink("good")
    bad = flaky_sink(failures=10**9, error=lambda: PermanentSinkError("refused"))  # every event
    batcher = make_batcher([good, bad], name="jobs")
    batcher.connect()
    for job_id in range(5):
        signals.job_started.send("thumbs", job_id=job_id)
    signals.job_started.send("thumbs", job_id=object())  # not JSON: rejected, counted
    assert batcher.flush(5).pending == 0
    assert good.wait_for(1, timeout=5)
    return batcher


def _numeric_leaves(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], float]:
    if isinstance(value, dict):
        out: dict[tuple[str, ...], float] = {}
        for key, sub in value.items():
            out.update(_numeric_leaves(sub, path + (str(key),)))
        return out
    return {path: float(value)} if isinstance(value, (int, float)) else {}


def test_every_numeric_value_of_stats_is_exported_once(busy_batcher):
    stats = busy_batcher.stats()
    points = read_points(stats, "jobs")
    assert stats["events_rejected"] == {"invalid": 1} and stats["dead_letter"]["written"] >= 1
    leaves = _numeric_leaves(stats)
    states = [p for p in points if p.spec.name == "sink.state"]
    assert len(states) == 3 * len(stats["sinks"])  # healthy, failing, hung: 1 for the current
    assert len(points) - len(states) == len(leaves), (sorted(leaves), [(p.spec.name, p.labels) for p in points])
    assert sum(p.value for p in points if p.spec.name == "events.received") == stats["events_received"]
    assert all(dict(p.labels)["batcher"] == "jobs" for p in points)
    assert not [p for p in points if p.spec not in SPECS], "today's stats() keys are all declared"


def test_unknown_keys_of_a_newer_stats_are_exported_as_gauges():
    stats = {
        "events_received": 3,
        "spool_bytes": 4096,                                    # new number
        "events_deferred": {"backpressure": 2, "spool": 1},     # new {reason: n}
        "workers": {"thumbs": {"alive": True, "note": "ok"}},   # new nesting, text skipped
        "sinks": {"db": {"events_sent": 3, "in_flight_batches": 1, "last_error": "boom",
                         "latency_p50_ms": None, "state": "draining"}},
    }
    got = {(p.spec.prometheus_name, p.spec.kind, p.labels, p.value) for p in read_points(stats, "b")}
    assert got == {
        ("timelapser_events_received", "counter", (("batcher", "b"),), 3.0),
        ("timelapser_spool_bytes", "gauge", (("batcher", "b"),), 4096.0),
        ("timelapser_events_deferred", "gauge", (("batcher", "b"), ("key", "backpressure")), 2.0),
        ("timelapser_events_deferred", "gauge", (("batcher", "b"), ("key", "spool")), 1.0),
        ("timelapser_workers_thumbs_alive", "gauge", (("batcher", "b"),), 1.0),
        ("timelapser_sink_events_sent", "counter", (("batcher", "b"), ("sink", "db")), 3.0),
        ("timelapser_sink_in_flight_batches", "gauge", (("batcher", "b"), ("sink", "db")), 1.0),
        *{("timelapser_sink_state", "gauge", (("batcher", "b"), ("sink", "db"), ("state", state)),
           float(state == "draining")) for state in ("healthy", "failing", "hung", "draining")},
    }


def test_a_prometheus_scrape_parses_and_matches_stats(busy_batcher):
    registry = CollectorRegistry()
    registry.register(TimelapserCollector(busy_batcher))
    text = generate_latest(registry).decode()
    stats = busy_batcher.stats()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def sample(family: str, suffix: str = "", **labels: str) -> float:
        f = families[family]
        [value] = [s.value for s in f.samples if s.name == family + suffix and s.labels == {"batcher": "jobs", **labels}]
        return value

    assert families["timelapser_events_received"].type == "counter"
    assert sample("timelapser_events_received", "_total") == stats["events_received"]
    assert sample("timelapser_events_rejected", "_total", reason="invalid") == 1
    assert sample("timelapser_queue_capacity") == stats["queue_capacity"]
    assert families["timelapser_queue_depth"].type == "gauge"
    for sink in ("good", "flaky"):
        s = stats["sinks"][sink]
        assert sample("timelapser_sink_events_sent", "_total", sink=sink) == s["events_sent"]
        assert sample("timelapser_sink_events_dead_lettered", "_total", sink=sink) == s["dead_lettered"]
        assert sample("timelapser_sink_events_pending", sink=sink) == 0
    assert sample("timelapser_sink_events_dead_lettered", "_total", sink="flaky") > 0
    assert sample("timelapser_dead_letter_written", "_total") == stats["dead_letter"]["written"]
    latency = families["timelapser_sink_delivery_latency_seconds"]
    assert latency.type == "gauge"
    p99 = sample("timelapser_sink_delivery_latency_seconds", sink="good", quantile="0.99")
    assert math.isclose(p99, stats["sinks"]["good"]["latency_p99_ms"] / 1000.0)
    assert "last_error" not in text
    assert sample("timelapser_sink_state", sink="good", state="healthy") == 1
    assert sample("timelapser_sink_state", sink="good", state="hung") == 0


def test_openmetrics_when_the_scraper_asks_for_it_carries_units(busy_batcher):
    body, kind = render(TimelapserCollector(busy_batcher), "application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text")
    text = body.decode()
    assert "# UNIT timelapser_sink_delivery_latency_seconds seconds" in text
    assert text.rstrip().endswith("# EOF")


def test_the_collector_does_not_keep_a_batcher_alive(make_batcher):
    from timelapser_workers import EventBatcher

    batcher = EventBatcher([MemorySink()], name="short-lived", dead_letter=lambda *a: None)
    collector = TimelapserCollector(batcher)
    assert any(s.labels.get("batcher") == "short-lived" for f in collector.collect() for s in f.samples)
    batcher.close(5)
    del batcher
    gc.collect()
    assert list(collector.collect()) == []


def test_a_bad_source_is_refused_naming_what_is_needed():
    with pytest.raises(TypeError, match=r"EventBatcher \(an object with a str \.name and \.stats\(\)\)"):
        TimelapserCollector(lambda: {})  # type: ignore[arg-type]


def test_opentelemetry_reader_sees_counters_gauges_units_and_attributes(busy_batcher):
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum

    from timelapser_workers.integrations.otel import TimelapserMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge = TimelapserMetrics(busy_batcher, meter_provider=provider, max_age=0)
    try:
        data = reader.get_metrics_data()
        metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
        stats = busy_batcher.stats()

        received = metrics["timelapser.events.received"]
        assert received.unit == "{event}" and isinstance(received.data, Sum) and received.data.is_monotonic
        [point] = received.data.data_points
        assert dict(point.attributes) == {"batcher": "jobs"} and point.value == stats["events_received"]

        sent = {p.attributes["sink"]: p.value for p in metrics["timelapser.sink.events.sent"].data.data_points}
        assert sent == {name: s["events_sent"] for name, s in stats["sinks"].items()}
        rejected = metrics["timelapser.events.rejected"].data.data_points
        assert [(dict(p.attributes), p.value) for p in rejected] == [({"batcher": "jobs", "reason": "invalid"}, 1)]

        depth = metrics["timelapser.queue.depth"]
        assert isinstance(depth.data, Gauge) and depth.unit == "{event}"
        latency = metrics["timelapser.sink.delivery_latency"]
        assert latency.unit == "s" and isinstance(latency.data, Gauge)
        quantiles = {(p.attributes["sink"], p.attributes["quantile"]) for p in latency.data.data_points}
        assert ("good", "0.5") in quantiles and ("good", "0.99") in quantiles
    finally:
        provider.shutdown()
    assert bridge is not None
