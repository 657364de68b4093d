"""Running a whole program as a subprocess, and counting what it stored, for the fault tests.

A program is Python source; it runs with the test venv's interpreter, from its own temporary
directory, and reports through stdout (a line ``ready`` when it wants the test to act)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

__all__ = ["Program", "sqlite_rows", "dead_letters", "spooled"]


class Program:
    """A program started in ``workdir``; its stdout is read line by line, its stderr goes to a
    file (never a pipe nobody reads: a full pipe would block the program)."""

    def __init__(self, source: str, workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        path = workdir / "program.py"
        path.write_text(textwrap.dedent(source))
        self.stderr_path = workdir / "stderr.txt"
        self._stderr: IO[bytes] = open(self.stderr_path, "wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen([sys.executable, str(path), *args], cwd=workdir, env=full_env,
                                     stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.lines: list[str] = []
        self.ended_at: float | None = None  # time.monotonic() when wait() saw it end

    def wait_for_line(self, text: str, timeout: float = 60.0) -> str:
        """Read stdout until a line starting with ``text``; fail if the program ends first."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"the program ended before printing {text!r}:\n{self.stderr()}")
            self.lines.append(line.rstrip("\n"))
            if line.startswith(text):
                return line.rstrip("\n")
        raise AssertionError(f"no {text!r} line within {timeout}s:\n{self.stderr()}")

    def wait(self, timeout: float) -> int:
        """The exit status (negative: killed by that signal); kill and fail past ``timeout``."""
        try:
            code = self.proc.wait(timeout)
            self.ended_at = time.monotonic()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"the program did not end within {timeout}s:\n{self.stderr()}") from None
        assert self.proc.stdout is not None
        self.lines += [line.rstrip("\n") for line in self.proc.stdout]
        self._stderr.close()
        return code

    def seconds_since(self, line: str) -> float:
        """Seconds from the monotonic clock reading a line printed (``<word> <time.monotonic()>``;
        the clock is the same in every process of this machine) to the program's end."""
        assert self.ended_at is not None, "wait() first"
        return self.ended_at - float(line.split()[-1])

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def sqlite_rows(db: Path, table: str = "sse_events", column: str = "COALESCE(SUM(batch_count), 0)") -> int:
    """Original events stored (0 if the table does not exist yet)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(f"SELECT {column} FROM {table}").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    finally:
        conn.close()


def dead_letters(path: Path) -> list[dict[str, Any]]:
    """Every dead-letter record written (none if there is no file; torn lines skipped)."""
    from timelapser_workers.deadletter import read_dead_letters

    return read_dead_letters(path)[0]


def spooled(spool_dir: Path) -> dict[str, int]:
    """Sink name -> events waiting in its spool under ``spool_dir``."""
    from timelapser_workers.spool_files import spooled_events

    return spooled_events(spool_dir)
