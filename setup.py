"""Packaging for timelapser-workers. Built-in sinks register through the same entry points as
third-party ones, so `timelapser-workers sinks` lists both the same way."""

from setuptools import find_packages, setup

setup(
    name="timelapser-workers",
    version="0.1.0",
    description="Event batching for thread-based workers: blinker signals in, batched sinks out.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # The repository's top-level sinks/ folder installs as timelapser_workers.sinks: a user's
    # own `sinks` module can never shadow the library's, and no `sinks` package is installed.
    packages=find_packages(include=["timelapser_workers", "timelapser_workers.*"])
    + ["timelapser_workers.sinks." + p for p in find_packages("sinks")]
    + ["timelapser_workers.sinks"],
    package_dir={"timelapser_workers.sinks": "sinks"},
    package_data={"timelapser_workers": ["py.typed"]},
    install_requires=[
        "SQLAlchemy>=2.0,<3",
        "blinker>=1.6",
        "tenacity>=8.2",
    ],
    extras_require={
        "postgres": ["psycopg2-binary>=2.9"],
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            # `run.py typecheck` (in .ci/run): mypy --strict on the package
            "mypy>=1.10",
            "types-psycopg2>=2.9",
            "psycopg2-binary>=2.9",
            # wheel: the plugin test builds a small distribution and installs it
            "wheel>=0.40",
            # SSE tests only: a real ASGI server, and a websocket client to drive headless Chromium.
            "uvicorn>=0.23",
            "websocket-client>=1.6",
            # README's mounting examples, tested: Flask (WSGI) and Starlette (what FastAPI mounts with).
            "flask>=2.2",
            "starlette>=0.27",
            # README's FastAPI block runs as written; servers stopping with streams open (issue 12)
            "fastapi>=0.100",
            "gunicorn>=21.2",
        ],
        "examples": ["Pillow>=10"],
        # benchmark peers and profilers; bench/ only, never imported by the library or tests
        "bench": [
            "opentelemetry-sdk>=1.26",
            "psycopg2-binary>=2.9",
            "psutil>=5.9",
            "pyinstrument>=4.6",
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
        ],
    },
)
