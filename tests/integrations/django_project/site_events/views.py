from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse

from site_events import events


def start_jobs(request, n):
    """A request that starts jobs: each emits JOB_STARTED (no I/O on this thread)."""
    for job_id in range(n):
        events.batcher.emit("JOB_STARTED", {"job_id": job_id}, worker="camera-1")
    return JsonResponse({"emitted": n})


def stored(request):
    """What the sink stored, read through Django's own connection: the same database."""
    try:
        with connection.cursor() as cur:
            cur.execute(f"SELECT COALESCE(SUM(batch_count), 0) FROM {settings.EVENTS_TABLE}")
            count = int(cur.fetchone()[0])
    except DatabaseError:  # the sink makes the table with its first batch
        count = 0
    return JsonResponse({"stored": count, "vendor": connection.vendor})
