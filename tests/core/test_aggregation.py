from timelapser_workers import signals
from timelapser_workers.aggregation import AggregationPolicy
from timelapser_workers.events import (
    JOB_COMPLETED,
    JOB_RETRY_SCHEDULED,
    JOB_STARTED,
    WORKER_STATISTICS,
    make_event,
)
from timelapser_workers.sinks import MemorySink


def test_three_job_started_from_signals_become_one_batch_event(make_batcher):
    # the same strings the workers emit: through the real signals, not hand-built types
    sink = MemorySink()
    batcher = make_batcher([sink], batch_timeout=30)
    batcher.connect()
    for job_id in (123, 124, 125):
        signals.job_started.send("thumbnailworker", job_id=job_id, source="thumbnails")
    assert batcher.flush(timeout=5).pending == 0
    [batch] = sink.events
    assert batch.type == "JOBS_BATCH_STARTED"
    assert batch.data["job_ids"] == [123, 124, 125]
    assert batch.data["batch_count"] == 3
    assert batch.worker == "thumbnailworker" and batch.source == "thumbnails"
    stats = batcher.stats()
    assert (stats["events_batched"], stats["events_saved"], stats["batches_created"]) == (3, 2, 1)


def test_nothing_is_lost_from_items():
    members = [
        make_event(JOB_COMPLETED, {"job_id": i, "processing_time_ms": 10 * i, "frame": f"f{i}.jpg"}, worker="w")
        for i in range(4)
    ]
    out = AggregationPolicy().aggregate(members)
    [batch] = out.events
    assert batch.type == "JOBS_BATCH_COMPLETED"
    assert batch.data["items"] == [{"id": m.id, "created_at": m.created_at, "data": m.data} for m in members]
    assert batch.members == tuple(members)
    assert batch.created_at == members[0].created_at


def test_group_of_one_passes_through_unchanged():
    event = make_event(JOB_STARTED, {"job_id": 1}, worker="w")
    assert AggregationPolicy().aggregate([event]).events == [event]


def test_other_types_get_a_batch_suffix_and_never_merge_types_stay_single():
    a = [make_event("FRAME_CAPTURED", {"n": i}, worker="cam") for i in range(2)]
    s = [make_event(WORKER_STATISTICS, {"done": i}, worker="cam") for i in range(2)]
    out = AggregationPolicy().aggregate(a + s).events
    assert [e.type for e in out] == ["FRAME_CAPTURED_BATCH", WORKER_STATISTICS, WORKER_STATISTICS]
    custom = AggregationPolicy(never_merge={"FRAME_CAPTURED"}, batch_types={WORKER_STATISTICS: "STATS"})
    assert [e.type for e in custom.aggregate(a + s).events] == ["FRAME_CAPTURED", "FRAME_CAPTURED", "STATS"]


def test_groups_split_by_worker_and_source():
    events = [
        make_event(JOB_STARTED, {"job_id": 1}, worker="a", source="x"),
        make_event(JOB_STARTED, {"job_id": 2}, worker="b", source="x"),
        make_event(JOB_STARTED, {"job_id": 3}, worker="a", source="y"),
    ]
    assert AggregationPolicy().aggregate(events).events == events


def test_a_job_never_completes_before_it_starts():
    # C0 belongs to a job started in an earlier flush; joining C1 to C0's group would put
    # C1 before S1. The policy opens a new group instead.
    c0 = make_event(JOB_COMPLETED, {"job_id": 0}, worker="w")
    s1 = make_event(JOB_STARTED, {"job_id": 1}, worker="w")
    c1 = make_event(JOB_COMPLETED, {"job_id": 1}, worker="w")
    out = AggregationPolicy().aggregate([c0, s1, c1]).events
    assert out == [c0, s1, c1]


def test_sequential_jobs_still_aggregate_in_job_order():
    events = []
    for j in range(3):
        events += [make_event(JOB_STARTED, {"job_id": j}, worker="w"),
                   make_event(JOB_COMPLETED, {"job_id": j}, worker="w")]
    out = AggregationPolicy().aggregate(events).events
    assert [(e.type, e.data["job_ids"]) for e in out] == [
        ("JOBS_BATCH_STARTED", [0, 1, 2]),
        ("JOBS_BATCH_COMPLETED", [0, 1, 2]),
    ]


def test_retried_job_keeps_its_lifecycle_order():
    s1a = make_event(JOB_STARTED, {"job_id": 1}, worker="w")
    s2 = make_event(JOB_STARTED, {"job_id": 2}, worker="w")
    r1 = make_event(JOB_RETRY_SCHEDULED, {"job_id": 1}, worker="w")
    s1b = make_event(JOB_STARTED, {"job_id": 1}, worker="w")
    out = AggregationPolicy().aggregate([s1a, s2, r1, s1b]).events
    order = [m.id for e in out for m in (e.members or (e,))]
    assert order.index(s1a.id) < order.index(r1.id) < order.index(s1b.id)
