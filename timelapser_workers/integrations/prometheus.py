"""A Prometheus collector for EventBatcher.stats() (needs ``prometheus_client``: the
``prometheus`` extra).

::

    from prometheus_client import REGISTRY, start_http_server
    from timelapser_workers.integrations.prometheus import TimelapserCollector

    REGISTRY.register(TimelapserCollector(batcher))     # or collector.add(another_batcher)
    start_http_server(9464)                              # or serve render() yourself

Each scrape reads ``stats()`` once per batcher (no background thread, nothing cached) and
exports every counter and gauge declared in :mod:`.metrics`: counters as
``timelapser_..._total``, gauges as they are, with the labels ``batcher``, ``sink``,
``reason`` (and ``quantile`` on ``timelapser_sink_delivery_latency_seconds``, a gauge: see
:mod:`.metrics` for why not a histogram). Batchers are held weakly.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from timelapser_workers.integrations.metrics import BatcherSet, MetricPoint, MetricSpec, StatsSource

__all__ = ["TimelapserCollector", "render"]


class TimelapserCollector:
    """A prometheus_client collector over one or more batchers (see the module docstring)."""

    def __init__(self, *batchers: StatsSource) -> None:
        self._batchers = BatcherSet(batchers)

    def add(self, batcher: StatsSource) -> "TimelapserCollector":
        """Export ``batcher`` too; returns the collector."""
        self._batchers.add(batcher)
        return self

    def collect(self) -> Iterator[Metric]:
        """One metric family per metric name, a sample per label set (prometheus_client API)."""
        yield from families(self._batchers.read())

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: the sinks (labels) and any new stats keys are known at scrape time."""
        return ()


def families(points: Iterable[MetricPoint]) -> Iterator[Metric]:
    """Group points into prometheus_client metric families, in the order first seen."""
    grouped: dict[MetricSpec, list[MetricPoint]] = {}
    for point in points:
        grouped.setdefault(point.spec, []).append(point)
    for spec, members in grouped.items():
        label_names = [name for name, _ in members[0].labels]
        family: CounterMetricFamily | GaugeMetricFamily
        if spec.kind == "counter":
            family = CounterMetricFamily(spec.prometheus_name, spec.description,
                                         labels=label_names, unit=spec.prometheus_unit)
        else:
            family = GaugeMetricFamily(spec.prometheus_name, spec.description,
                                       labels=label_names, unit=spec.prometheus_unit)
        for point in members:
            family.add_metric([value for _, value in point.labels], point.value)
        yield family


def render(collector: TimelapserCollector, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition of ``collector`` for a scrape: (body, Content-Type). ``accept`` is the
    request's Accept header: OpenMetrics if the scraper asks for it, else the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type
