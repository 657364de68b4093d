"""The project's one batcher: events into Django's own database, and to browsers."""

from django.conf import settings

from timelapser_workers import EventBatcher
from timelapser_workers.integrations.django import database_url
from timelapser_workers.sinks import DatabaseSink
from timelapser_workers.sinks.sse import SSESink

sse = SSESink()
batcher = EventBatcher([DatabaseSink(database_url("default"), table=settings.EVENTS_TABLE), sse],
                       batch_timeout=0.1)
