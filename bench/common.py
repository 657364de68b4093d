"""What every benchmark script shares: rounds that alternate contenders, medians, a table
printer, PASS/FAIL lines, and the counting sinks/exporters the contenders deliver into.

A benchmark never asserts: it measures every contender in the same process run, alternating
them round by round (so drift in the machine hits all of them alike), and prints medians and
ratios. Nothing here is imported by the library or the tests.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

__all__ = [
    "machine",
    "alternate",
    "median",
    "print_table",
    "Verdicts",
    "CountingSink",
    "CountingExporter",
    "wait_until",
    "rss_bytes",
]


def machine() -> str:
    """One line naming the machine the numbers come from."""
    return (
        f"{os.cpu_count()} cores, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.machine()}"
    )


def alternate(
    contenders: dict[str, Callable[[], dict[str, float]]], rounds: int
) -> dict[str, list[dict[str, float]]]:
    """Run each contender once per round, in rotating order; collect what each returns."""
    names = list(contenders)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            results[name].append(contenders[name]())
    return results


def median(samples: Sequence[dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in samples)


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a Markdown table, so the README can carry it as printed."""
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


class Verdicts:
    """PASS/FAIL per target, printed as they come and summed up at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []

    def check(self, target: str, ok: bool, detail: str) -> bool:
        self.rows.append((target, ok, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {target}: {detail}", flush=True)
        return ok

    def summary(self) -> str:
        return print_table(
            "Targets", ["target", "result", "measured"],
            [(t, "PASS" if ok else "FAIL", d) for t, ok, d in self.rows],
        )


class CountingSink:
    """A sink that only counts the original events it is sent (the cost floor of a sink)."""

    name = "counting"

    def __init__(self, wants_aggregated: bool = False) -> None:
        self.wants_aggregated = wants_aggregated
        self.count = 0
        self.calls = 0

    def send(self, batch: Sequence[Any]) -> None:
        self.calls += 1
        # raw events each stand for one; an aggregated event for its members
        self.count += sum(e.batch_count for e in batch) if self.wants_aggregated else len(batch)


class CountingExporter:
    """OpenTelemetry's two-method exporter contract, counting what it is given."""

    def __init__(self) -> None:
        self.count = 0
        self.calls = 0

    def export(self, batch: Sequence[Any], *args: Any) -> Any:
        self.calls += 1
        self.count += len(batch)
        try:  # the logs exporter contract wants a LogExportResult back
            from opentelemetry.sdk._logs.export import LogExportResult

            return LogExportResult.SUCCESS
        except ImportError:  # pragma: no cover
            return None

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def wait_until(predicate: Callable[[], bool], timeout: float, poll: float = 0.001) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; True if it became true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True


def rss_bytes() -> int:
    """This process's resident set size now."""
    import psutil

    return psutil.Process().memory_info().rss


def start_threads(target: Callable[[int], None], n: int) -> list[threading.Thread]:
    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads


def fresh_events_table(engine: Any) -> str:
    """Create a new events table (the DatabaseSink schema) with a unique name; return it."""
    import uuid

    import sqlalchemy as sa

    from timelapser_workers.sql.schema import events_table

    name = f"bench_{uuid.uuid4().hex[:10]}"
    md = sa.MetaData()
    events_table(md, name)
    md.create_all(engine)
    return name


def drop_table(engine: Any, name: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
