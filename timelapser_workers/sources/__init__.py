"""Sources: readers that feed an SSE hub from elsewhere (another process's events, through a
shared store), so a web process can serve what workers in other processes emitted."""

from typing import Any

__all__ = ["DatabaseEventSource"]


def __getattr__(name: str) -> Any:  # loaded on first use: it needs SQLAlchemy and a driver
    if name == "DatabaseEventSource":
        from timelapser_workers.sources.database import DatabaseEventSource

        return DatabaseEventSource
    raise AttributeError(f"module 'timelapser_workers.sources' has no attribute {name!r}")
