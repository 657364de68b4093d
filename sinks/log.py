"""LogSink: one log line per batch (count, types, ids, sources), on its own lane thread.

::

    batcher = EventBatcher([LogSink("app.events")])          # one INFO line per batch
    load_sink("log?logger=app.events&level=info&max_ids=10")

Log records going *into* a table are the other direction: see
:mod:`timelapser_workers.integrations.log_handler`.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Sequence

from timelapser_workers.contract import BaseSink, Event
from timelapser_workers.sinks.options import parse_options

__all__ = ["LogSink", "parse_level"]


def parse_level(value: int | str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        level = logging.getLevelName(value.strip().upper())
        if isinstance(level, int):
            return level
    raise ValueError(f"log level {value!r} is not a level name (DEBUG, INFO, WARNING, ERROR) or number")


class LogSink(BaseSink):
    """Log one line per batch on ``logger``: its count, types, ids and sources.

    The line also carries the fields as ``record.timelapser_batch`` (a dict) for structured
    formatters. Runs in its own lane thread, so a slow log handler delays only this sink.
    ``max_ids``: how many ids to list before "+N more".
    """

    name = "log"

    def __init__(
        self,
        logger: str | logging.Logger = "timelapser_workers.events",
        *,
        level: int | str = logging.INFO,
        name: str = "log",
        max_ids: int = 10,
        wants_aggregated: bool = True,
    ) -> None:
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        if not isinstance(logger, logging.Logger):
            raise TypeError(f"LogSink logger must be a name or a logging.Logger, got {logger!r}")
        if max_ids < 0:
            raise ValueError(f"LogSink max_ids={max_ids!r} must be 0 or more")
        self.logger = logger
        self.level = parse_level(level)
        self.name = name
        self.max_ids = max_ids
        self.wants_aggregated = wants_aggregated

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "LogSink":
        """``log``, ``log?logger=app.events&level=warning&max_ids=5``."""
        query = url.split("?", 1)[1] if "?" in url else ""
        from urllib.parse import parse_qsl

        pairs = parse_qsl(query, keep_blank_values=True)
        given: dict[str, Any] = dict(pairs)
        if len(given) != len(pairs):
            raise ValueError(f"an option is given twice in {url!r}")
        spec = {"logger": str, "level": str, "name": str, "max_ids": int, "wants_aggregated": bool}
        if isinstance(options.get("level"), int):
            spec["level"] = int
        kwargs = parse_options(spec, {**given, **options}, where=url)
        return cls(**kwargs)

    def send(self, batch: Sequence[Event]) -> None:
        if not batch or not self.logger.isEnabledFor(self.level):
            return
        types: collections.Counter[str] = collections.Counter()
        for e in batch:
            types[e.type] += e.batch_count
        count = sum(types.values())
        ids = [e.id for e in batch]
        shown = ids[: self.max_ids]
        more = f" +{len(ids) - len(shown)} more" if len(ids) > len(shown) else ""
        sources = sorted({e.source for e in batch if e.source})
        fields = {
            "count": count,
            "types": dict(types),
            "ids": ids,
            "sources": sources,
            "workers": sorted({e.worker for e in batch if e.worker}),
        }
        self.logger.log(
            self.level,
            "%d event(s): %s; ids %s%s; source %s",
            count,
            ", ".join(f"{t} x{n}" for t, n in types.items()),
            ",".join(shown),
            more,
            ",".join(sources) or "-",
            extra={"timelapser_batch": fields},
        )
