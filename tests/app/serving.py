"""A dashboard served by a subprocess (`timelapser-workers demo --serve`, or
examples/dashboard/serve.py): start it, learn its URL from its first line, finish it."""

from __future__ import annotations

import re
import subprocess
import tempfile
from typing import IO, Any

import pytest

__all__ = ["start_served", "finish_served", "SERVED_DEMO_LINE"]

#: what `demo --serve` prints last when it lost nothing
SERVED_DEMO_LINE = r"served \d+ events; \d+ browser connection\(s\); lost 0"


_stderr: dict[int, IO[str]] = {}  # a process's stderr file, read back by finish_served


def start_served(command: list[str], **popen: Any) -> tuple[subprocess.Popen[str], str]:
    """Run ``command``; return the process and the dashboard URL its first line names. Its
    stderr goes to a temporary file, never a pipe nobody reads while it runs."""
    stderr = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, **popen)
    _stderr[proc.pid] = stderr
    first = proc.stdout.readline() if proc.stdout else ""
    match = re.search(r"dashboard: (http://127\.0\.0\.1:\d+)/", first)
    if match is None:
        proc.kill()
        out, err = finish_output(proc)
        pytest.fail(f"no dashboard line from {command}: {first!r}\n{out}\n{err}")
    return proc, match.group(1)


def finish_output(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """The rest of stdout and the whole stderr, once the process has ended (killed past timeout)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            out, _ = proc.communicate(timeout=10)
    stderr = _stderr.pop(proc.pid)
    stderr.seek(0)
    err = stderr.read()
    stderr.close()
    return out or "", err


def finish_served(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[str, str]:
    """Wait for the server to end by itself (its --duration); it must exit 0. (stdout, stderr)."""
    out, err = finish_output(proc, timeout)
    assert proc.returncode == 0, out + err
    return out, err
