import os

from django.core.asgi import get_asgi_application

from timelapser_workers.integrations.django import route_asgi

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_events.settings")
django_app = get_asgi_application()

from site_events import events  # noqa: E402  (after Django is set up)

application = route_asgi(django_app, {"/events": events.sse.asgi_app(keepalive_seconds=1)})
