"""Sources: readers that feed an SSE hub from elsewhere (another process's events, through a
shared store: PostgreSQL, a Redis stream), so a web process can serve what workers in other
processes emitted."""

from typing import Any

__all__ = ["DatabaseEventSource", "RedisEventSource"]


def __getattr__(name: str) -> Any:  # loaded on first use: they need a driver (SQLAlchemy, redis)
    if name == "DatabaseEventSource":
        from timelapser_workers.sources.database import DatabaseEventSource

        return DatabaseEventSource
    if name == "RedisEventSource":
        from timelapser_workers.sources.redis import RedisEventSource

        return RedisEventSource
    raise AttributeError(f"module 'timelapser_workers.sources' has no attribute {name!r}")
