"""Packaging for timelapser-workers. Built-in sinks register through the same entry points as
third-party ones, so `timelapser-workers sinks` lists both the same way.

The version lives in timelapser_workers/_version.py alone (read here as text: building must
not import the package, whose dependencies may not be installed yet)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"$',
                    (HERE / "timelapser_workers" / "_version.py").read_text(encoding="utf-8"), re.M)
if VERSION is None:
    raise SystemExit("setup.py: no __version__ = \"...\" line in timelapser_workers/_version.py")

# Placeholder: the project has no public repository yet; these URLs name where it would live.
REPOSITORY = "https://github.com/timelapser-workers/timelapser-workers"

setup(
    name="timelapser-workers",
    version=VERSION.group(1),
    description="Event batching for thread-based workers: blinker signals in, batched sinks out.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author="timelapser-workers contributors",
    license="MIT",
    license_files=["LICENSE"],
    url=REPOSITORY,
    project_urls={
        "Source": REPOSITORY,
        "Changelog": f"{REPOSITORY}/blob/main/CHANGELOG.md",
        "Issues": f"{REPOSITORY}/issues",
    },
    keywords=["events", "batching", "workers", "blinker", "server-sent events", "sqlalchemy"],
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Developers",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Database",
        "Topic :: Internet :: WWW/HTTP",
        "Topic :: System :: Monitoring",
        "Typing :: Typed",
    ],
    python_requires=">=3.10",
    # The repository's top-level sinks/ folder installs as timelapser_workers.sinks: a user's
    # own `sinks` module can never shadow the library's, and no `sinks` package is installed.
    packages=find_packages(include=["timelapser_workers", "timelapser_workers.*"])
    + ["timelapser_workers.sinks." + p for p in find_packages("sinks")]
    + ["timelapser_workers.sinks"],
    package_dir={"timelapser_workers.sinks": "sinks"},
    # the dashboard page ships inside the package: the demo and --serve run from a plain install
    package_data={"timelapser_workers": ["py.typed"], "timelapser_workers.app": ["static/*"]},
    install_requires=[
        "SQLAlchemy>=2.0,<3",
        "blinker>=1.6",
        "tenacity>=8.2",
        # the payload is validated and encoded once, at the edge, by orjson (bench/README.md:
        # 0.1 us against json.dumps' 1.8 us for a typical event; msgspec measured 0.13 us)
        "orjson>=3.9",
    ],
    extras_require={
        # PostgreSQL drivers: either works. psycopg2 is what a plain postgresql:// URL given to
        # a sink uses; psycopg 3 is chosen by postgresql+psycopg:// or by your own Engine.
        "postgres": ["psycopg2-binary>=2.9"],
        "psycopg": ["psycopg[binary]>=3.2"],
        # metrics export (timelapser_workers.integrations.prometheus / .otel)
        "prometheus": ["prometheus-client>=0.17"],
        "otel": ["opentelemetry-sdk>=1.20"],
        # the Redis Streams sink and source (timelapser_workers.sinks.redis, .sources.redis)
        "redis": ["redis>=5.0"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            # `run.py typecheck` (in .ci/run): mypy --strict on the package
            "mypy>=1.10",
            "types-psycopg2>=2.9",
            # tests/faults/test_celery.py: a real prefork worker on the Redis broker
            "celery>=5.3",
            "redis>=5",
            "psycopg2-binary>=2.9",
            # both PostgreSQL drivers are tested
            "psycopg[binary]>=3.2",
            # the Redis Streams sink and source, against the server at 127.0.0.1:6379
            "redis>=5.0",
            # wheel + setuptools: the plugin test and the packaging test build wheels without
            # network (no build isolation)
            "wheel>=0.40",
            "setuptools>=68",
            # SSE tests only: a real ASGI server, and a websocket client to drive headless Chromium.
            "uvicorn>=0.23",
            "websocket-client>=1.6",
            # README's mounting examples, tested: Flask (WSGI) and Starlette (what FastAPI mounts with).
            "flask>=2.2",
            "starlette>=0.27",
            # the integrations, tested against the real thing: a Django project, a Prometheus
            # scrape, an OpenTelemetry reader, structlog's bound context in the log table
            "Django>=4.2",
            "prometheus-client>=0.17",
            "opentelemetry-sdk>=1.20",
            "structlog>=23.1",
            # README's FastAPI block runs as written; servers stopping with streams open (issue 12)
            "fastapi>=0.100",
            "gunicorn>=21.2",
        ],
        # the example workers and the demo's JPEG frames; structlog for examples/structlog_logging.py
        "examples": ["Pillow>=10", "structlog>=23.1"],
        # benchmark peers and profilers; bench/ only, never imported by the library or tests
        "bench": [
            "opentelemetry-sdk>=1.26",
            "psycopg2-binary>=2.9",
            "psycopg[binary]>=3.2",
            "psutil>=5.9",
            "pyinstrument>=4.6",
            "redis>=5.0",
            # SSE fan-out: sse-starlette's per-event write loop as the peer; gunicorn and uvicorn
            "sse-starlette>=1.6",
            "uvicorn>=0.23",
            "gunicorn>=21.2",
        ],
    },
    entry_points={
        "console_scripts": ["timelapser-workers = timelapser_workers.app.cli:main"],
        "timelapser_workers.sinks": [
            "memory = timelapser_workers.sinks.memory:MemorySink",
            "sqlite = timelapser_workers.sinks.database:DatabaseSink",
            "postgresql = timelapser_workers.sinks.database:DatabaseSink",
            "log = timelapser_workers.sinks.log:LogSink",
            "sse = timelapser_workers.sinks.sse:SSESink",
            "redis = timelapser_workers.sinks.redis:RedisStreamSink",
            "rediss = timelapser_workers.sinks.redis:RedisStreamSink",
        ],
    },
)
