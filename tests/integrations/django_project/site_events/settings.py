"""A minimal Django project whose database comes from the environment: EVENTS_DB is
`sqlite:<path>` or a postgresql:// URL (taken apart into Django's DATABASES fields)."""

import os
from urllib.parse import urlsplit

SECRET_KEY = "timelapser-test-project-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "site_events.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
USE_TZ = True
LOGGING = {  # server errors to stderr, where the test reads them
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["stderr"], "level": "ERROR"}},
}
EVENTS_TABLE = os.environ["EVENTS_TABLE"]

_db = os.environ["EVENTS_DB"]
if _db.startswith("sqlite:"):
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": _db[len("sqlite:"):]}}
else:
    _u = urlsplit(_db)
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _u.path.lstrip("/"),
        "USER": _u.username or "",
        "PASSWORD": _u.password or "",
        "HOST": _u.hostname or "",
        "PORT": str(_u.port or ""),
        "OPTIONS": {"application_name": EVENTS_TABLE},
    }}
