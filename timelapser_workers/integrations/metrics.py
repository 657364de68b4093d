"""What ``EventBatcher.stats()`` means as metrics: one declaration per counter and gauge (name,
kind, unit, help), and :func:`read_points`, which turns one stats snapshot into labelled points.

The Prometheus collector (:mod:`.prometheus`) and the OpenTelemetry bridge (:mod:`.otel`) both
read these points, so the two exports name, label and scale everything the same way:

- every point has the label ``batcher`` (the batcher's ``name``); per-sink points add ``sink``;
  the ``{reason: n}`` dicts (rejected, dropped) add ``reason``;
- counters only go up (per process: a forked child starts from zero); gauges are levels
  (queue depth, pending events, dead letters waiting);
- a sink's ``state`` (healthy, failing, hung) is the gauge ``sink.state``: one point per
  state with a ``state`` label, 1 for the current one and 0 for the others (alert on
  ``timelapser_sink_state{state="hung"} == 1``);
- latency: ``stats()`` keeps the last 8192 delivery times per sink and reports their p50 and
  p99, so they are exported as a gauge ``sink.delivery_latency`` in seconds with a
  ``quantile`` label ("0.5", "0.99"), not as a histogram: a histogram must count every
  observation into buckets as it happens, and the lane keeps a rolling window instead;
- a numeric key this module does not know yet (a newer core may add some) is exported as a
  gauge named after its path, a ``{name: n}`` dict of them with a ``key`` label; text values
  (``last_error``) and empty values (a percentile with no samples yet) are not exported.

Nothing here imports prometheus_client or OpenTelemetry: this module is plain data.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, Mapping, Protocol

from timelapser_workers.lane import FAILING, HEALTHY, HUNG

__all__ = ["MetricSpec", "MetricPoint", "StatsSource", "SPECS", "read_points", "BatcherSet"]

Kind = Literal["counter", "gauge"]


class StatsSource(Protocol):
    """What the exporters read: an EventBatcher, or anything with a name and the same stats()."""

    name: str

    def stats(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric. ``name`` is dotted (``sink.events.sent``): OpenTelemetry uses
    ``timelapser.`` + name, Prometheus ``timelapser_`` + name with dots as underscores (plus
    ``_total`` on counters, the unit's suffix on seconds)."""

    name: str
    kind: Kind
    unit: str  # UCUM as OpenTelemetry wants it: "{event}", "{batch}", "s"
    description: str
    label: str | None = None  # for a {key: n} dict: the label its keys become
    scale: float = 1.0  # stats value x scale = exported value (ms -> s)

    @property
    def prometheus_name(self) -> str:
        return "timelapser_" + self.name.replace(".", "_")

    @property
    def prometheus_unit(self) -> str:
        """The unit Prometheus names carry: base units only (counts carry none)."""
        return "seconds" if self.unit == "s" else ""

    @property
    def otel_name(self) -> str:
        return "timelapser." + self.name


@dataclass(frozen=True)
class MetricPoint:
    """One value of one metric, with its labels (``batcher`` always among them)."""

    spec: MetricSpec
    labels: tuple[tuple[str, str], ...]
    value: float


def _c(name: str, unit: str, description: str, label: str | None = None) -> MetricSpec:
    return MetricSpec(name, "counter", unit, description, label)


def _g(name: str, unit: str, description: str, scale: float = 1.0) -> MetricSpec:
    return MetricSpec(name, "gauge", unit, description, scale=scale)


_EV, _BA = "{event}", "{batch}"

# stats() key -> spec: the batcher's own counters and gauges
BATCHER_SPECS: dict[str, MetricSpec] = {
    "events_received": _c("events.received", _EV, "Events taken in by the batcher."),
    "events_rejected": _c("events.rejected", _EV, "Events refused at the door (invalid, closed, ...), by reason.", "reason"),
    "events_dropped": _c("events.dropped", _EV, "Events dropped, by reason (queue full, ...).", "reason"),
    "events_batched": _c("events.batched", _EV, "Events that went into an aggregated batch event."),
    "events_saved": _c("events.saved", _EV, "Deliveries saved by aggregation (batched events minus batch events)."),
    "batches_created": _c("batches.created", _BA, "Aggregated batch events made."),
    "flushes": _c("flushes", "{flush}", "Flushes of a worker's pending events to the sinks."),
    "queue_depth": _g("queue.depth", _EV, "Events in the ingress queue now."),
    "queue_high_water": _g("queue.high_water", _EV, "Most events the ingress queue has held."),
    "queue_capacity": _g("queue.capacity", _EV, "Events the ingress queue can hold (max_queue_size)."),
}
DEAD_LETTER_SPECS: dict[str, MetricSpec] = {
    "written": _c("dead_letter.written", _EV, "Events written to the dead letter."),
    "errors": _c("dead_letter.errors", _EV, "Events whose dead-letter write failed (counted, not written)."),
    "dropped": _c("dead_letter.dropped", _EV, "Events the dead-letter writer could not take in time (counted, not written)."),
    "waiting": _g("dead_letter.waiting", _EV, "Events queued for the disk writer now (dead letters and spool appends)."),
    "spooled": _c("dead_letter.spooled", _EV, "Events the disk writer appended to the sinks' spools."),
}
SINK_SPECS: dict[str, MetricSpec] = {
    "batches_sent": _c("sink.batches.sent", _BA, "Batches a sink took (one send() each)."),
    "events_sent": _c("sink.events.sent", _EV, "Events a sink took (batch events count their members)."),
    "retries": _c("sink.retries", "{retry}", "Retries of a failed send()."),
    "failures": _c("sink.failures", "{failure}", "Failed send() attempts (retried or not)."),
    "dead_lettered": _c("sink.events.dead_lettered", _EV, "Events a sink did not take, sent to the dead letter."),
    "dropped": _c("sink.events.dropped", _EV, "Events of a sink dead-lettered without a send (lane full, shutdown), by reason.", "reason"),
    "pending": _g("sink.events.pending", _EV, "Events waiting in a sink's lane or in flight now."),
    "spooled": _c("sink.events.spooled", _EV, "Events a failing, hung or closing sink's lane sent to its spool."),
    "redelivered": _c("sink.events.redelivered", _EV, "Events delivered from a sink's spool."),
    "spool_full": _c("sink.events.spool_full", _EV, "Events dead-lettered because the sink's spool was full."),
    "spool_errors": _c("sink.events.spool_errors", _EV, "Events dead-lettered because the disk refused the spool append."),
    "spool_events": _g("sink.spool.events", _EV, "Events in a sink's spool now (on disk or on the way)."),
    "spool_bytes": _g("sink.spool.bytes", "By", "Bytes in a sink's spool now."),
    "spool_adopted": _c("sink.spool.adopted", _EV, "Events found in the spool, left by an earlier process."),
    "spool_corrupt": _c("sink.spool.corrupt", "{line}", "Torn or damaged spool lines skipped."),
}
LATENCY = MetricSpec(
    "sink.delivery_latency", "gauge", "s",
    "Time from an event's creation to its sink returning, over the last 8192 events "
    "(quantile 0.5 and 0.99).", label=None, scale=0.001,
)
_LATENCY_KEYS = {"latency_p50_ms": "0.5", "latency_p99_ms": "0.99"}
STATE = MetricSpec("sink.state", "gauge", "1",
                   "1 for the sink lane's current state (healthy, failing, hung), 0 for the others.")
_STATES = (HEALTHY, FAILING, HUNG)

#: Every declared metric (unknown keys of a newer stats() come on top, as gauges).
SPECS: tuple[MetricSpec, ...] = (
    *BATCHER_SPECS.values(), *DEAD_LETTER_SPECS.values(), *SINK_SPECS.values(), LATENCY, STATE,
)

_UNSAFE = re.compile(r"[^a-zA-Z0-9_]+")
_generic_cache: dict[tuple[str, bool], MetricSpec] = {}


def _generic(path: str, keyed: bool) -> MetricSpec:
    """A gauge for a stats key this module does not declare (same spec for the same path)."""
    spec = _generic_cache.get((path, keyed))
    if spec is None:
        name = _UNSAFE.sub("_", path).strip("_").lower() or "value"
        spec = MetricSpec(name, "gauge", "1", f"stats() key {path!r} (not yet described).",
                          label="key" if keyed else None)
        _generic_cache[(path, keyed)] = spec
    return spec


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _points(spec: MetricSpec, value: Any, labels: tuple[tuple[str, str], ...]) -> Iterator[MetricPoint]:
    """Points of one known key: a number, or a {key: number} dict under ``spec.label``."""
    if isinstance(value, Mapping):
        for key, sub in value.items():
            number = _number(sub)
            if number is not None:
                yield MetricPoint(spec, labels + ((spec.label or "key", str(key)),), number * spec.scale)
        return
    number = _number(value)
    if number is not None:
        yield MetricPoint(spec, labels, number * spec.scale)


def _unknown(path: str, value: Any, labels: tuple[tuple[str, str], ...]) -> Iterator[MetricPoint]:
    """Points of a key not declared here: numbers and {key: number} dicts as gauges, deeper
    dicts by their path; text and None are skipped."""
    if isinstance(value, Mapping):
        if value and all(_number(v) is not None for v in value.values()):
            yield from _points(_generic(path, keyed=True), value, labels)
        else:
            for key, sub in value.items():
                yield from _unknown(f"{path}.{key}", sub, labels)
        return
    yield from _points(_generic(path, keyed=False), value, labels)


def read_points(stats: Mapping[str, Any], batcher: str) -> list[MetricPoint]:
    """Every counter and gauge in one ``stats()`` snapshot of the batcher named ``batcher``."""
    base = (("batcher", batcher),)
    points: list[MetricPoint] = []
    for key, value in stats.items():
        if key == "sinks" and isinstance(value, Mapping):
            for sink, sink_stats in value.items():
                points += _sink_points(sink_stats, base + (("sink", str(sink)),))
        elif key == "dead_letter" and isinstance(value, Mapping):
            for sub, sub_value in value.items():
                spec = DEAD_LETTER_SPECS.get(sub)
                points += (_points(spec, sub_value, base) if spec
                           else _unknown(f"dead_letter.{sub}", sub_value, base))
        elif key in BATCHER_SPECS:
            points += _points(BATCHER_SPECS[key], value, base)
        else:
            points += _unknown(key, value, base)
    return points


def _sink_points(stats: Any, labels: tuple[tuple[str, str], ...]) -> Iterator[MetricPoint]:
    if not isinstance(stats, Mapping):
        return
    for key, value in stats.items():
        if key == "state" and isinstance(value, str):
            states = _STATES if value in _STATES else (*_STATES, value)
            for state in states:
                yield MetricPoint(STATE, labels + (("state", state),), float(state == value))
        elif key in _LATENCY_KEYS:
            yield from _points(LATENCY, value, labels + (("quantile", _LATENCY_KEYS[key]),))
        elif key in SINK_SPECS:
            yield from _points(SINK_SPECS[key], value, labels)
        else:
            yield from _unknown(f"sink.{key}", value, labels)


class BatcherSet:
    """The batchers an exporter reads, held weakly: a batcher nobody else keeps is forgotten,
    not kept alive by its metrics."""

    def __init__(self, batchers: Iterable[StatsSource] = ()) -> None:
        self._refs: list[weakref.ReferenceType[StatsSource]] = []
        self._lock = threading.Lock()
        for batcher in batchers:
            self.add(batcher)

    def add(self, batcher: StatsSource) -> None:
        """Export ``batcher`` too (its ``name`` becomes the ``batcher`` label)."""
        if not callable(getattr(batcher, "stats", None)) or not isinstance(getattr(batcher, "name", None), str):
            raise TypeError(f"metrics need an EventBatcher (an object with a str .name and .stats()), "
                            f"got {batcher!r}")
        with self._lock:
            self._refs.append(weakref.ref(batcher))

    def read(self) -> list[MetricPoint]:
        """One stats() snapshot of each live batcher, as points."""
        with self._lock:
            self._refs = [ref for ref in self._refs if ref() is not None]
            refs = list(self._refs)
        points: list[MetricPoint] = []
        for ref in refs:
            batcher = ref()
            if batcher is not None:
                points += read_points(batcher.stats(), batcher.name)
        return points
