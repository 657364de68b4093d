from django.urls import path

from site_events import events, views
from timelapser_workers.integrations.django import sse_view

urlpatterns = [
    path("events", sse_view(events.sse, keepalive_seconds=1)),
    path("view-events", sse_view(events.sse)),  # under ASGI: the view's refusal, tested
    path("jobs/<int:n>", views.start_jobs),
    path("stored", views.stored),
]
