"""An OpenTelemetry metrics bridge for EventBatcher.stats() (the ``otel`` extra:
opentelemetry-sdk, or any OpenTelemetry API implementation).

::

    from opentelemetry.sdk.metrics import MeterProvider
    from timelapser_workers.integrations.otel import TimelapserMetrics

    provider = MeterProvider(metric_readers=[your_reader])
    TimelapserMetrics(batcher, meter_provider=provider)   # keep it; .add(another_batcher)

Every counter and gauge of :mod:`.metrics` becomes an asynchronous instrument named
``timelapser.<name>`` (``timelapser.events.received``, ``timelapser.sink.events.sent``, ...)
with its unit (``{event}``, ``{batch}``, ``s``) and the attributes ``batcher``, ``sink``,
``reason``: counters as ObservableCounter (cumulative), levels as ObservableGauge, and
``timelapser.sink.delivery_latency`` as a gauge with a ``quantile`` attribute (see
:mod:`.metrics` for why not a histogram). A collection reads ``stats()`` once per batcher:
the instruments' callbacks share one snapshot for ``max_age`` seconds.
"""

from __future__ import annotations

import threading
import time
from functools import partial
from typing import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from timelapser_workers._version import __version__
from timelapser_workers.integrations.metrics import SPECS, BatcherSet, MetricPoint, MetricSpec, StatsSource

__all__ = ["TimelapserMetrics"]


class TimelapserMetrics:
    """Observable instruments over one or more batchers (held weakly)."""

    def __init__(self, *batchers: StatsSource, meter_provider: MeterProvider | None = None,
                 max_age: float = 1.0) -> None:
        if max_age < 0:
            raise ValueError(f"max_age must be >= 0 seconds, got {max_age!r}")
        self._meter = metrics.get_meter("timelapser_workers", __version__, meter_provider=meter_provider)
        self._batchers = BatcherSet(batchers)
        self._max_age = max_age
        self._lock = threading.Lock()
        self._taken_at = -float("inf")
        self._points: dict[MetricSpec, list[MetricPoint]] = {}
        self._instruments: dict[MetricSpec, object] = {}
        self._create(SPECS)
        self._create_found()

    def add(self, batcher: StatsSource) -> "TimelapserMetrics":
        """Export ``batcher`` too; returns self."""
        self._batchers.add(batcher)
        self._create_found()
        return self

    def _create_found(self) -> None:
        """Instruments for stats keys not declared in :mod:`.metrics` (a newer core's)."""
        self._create(point.spec for point in self._batchers.read())

    def _create(self, specs: Iterable[MetricSpec]) -> None:
        for spec in specs:
            if spec in self._instruments:
                continue
            create = (self._meter.create_observable_counter if spec.kind == "counter"
                      else self._meter.create_observable_gauge)
            self._instruments[spec] = create(spec.otel_name, callbacks=[partial(self._observe, spec)],
                                             unit=spec.unit, description=spec.description)

    def _observe(self, spec: MetricSpec, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.value, dict(p.labels)) for p in self._snapshot().get(spec, ())]

    def _snapshot(self) -> dict[MetricSpec, list[MetricPoint]]:
        with self._lock:
            now = time.monotonic()
            if now - self._taken_at >= self._max_age:
                grouped: dict[MetricSpec, list[MetricPoint]] = {}
                for point in self._batchers.read():
                    grouped.setdefault(point.spec, []).append(point)
                self._points, self._taken_at = grouped, now
            return self._points
