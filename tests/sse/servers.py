"""Run a real server as a subprocess for a test: its output drained while it runs, its port read
from what it prints, signals sent, the exit timed."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ServerProcess:
    """``cmd`` started in the repository root; ``port`` parsed from the first output line that
    matches ``port_pattern`` (one group)."""

    def __init__(self, cmd: list[str], env: dict[str, str], port_pattern: str, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,  # kill() ends the server's workers too
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._drain, daemon=True).start()
        match = self.wait_for_line(port_pattern, timeout)
        self.port = int(match.group(1))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for_line(self, pattern: str, timeout: float, start: int = 0) -> re.Match[str]:
        """The first output line from index ``start`` matching ``pattern``; fail with the output."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    found = regex.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._more():
                    raise AssertionError(f"no line matching {pattern!r} in {timeout}s; output:\n" + self.output())
                self._cond.wait(min(left, 0.2))

    def _more(self) -> bool:
        return bool(self.proc.stdout and not self.proc.stdout.closed and self.proc.returncode is None)

    def output(self) -> str:
        """The last 60 lines printed (for failure messages)."""
        with self._cond:
            return "\n".join(self.lines[-60:])

    def count(self, text: str) -> int:
        """How many printed lines contain ``text``."""
        with self._cond:
            return sum(text in line for line in self.lines)

    def signal(self, sig: int) -> float:
        """Send ``sig``; return the monotonic time it was sent."""
        self.proc.send_signal(sig)
        return time.monotonic()

    def wait_exit(self, timeout: float) -> float:
        """Wait for the process to end; return when it did (monotonic)."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s; output:\n{self.output()}") from None
        return time.monotonic()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait(10)


def python(*args: Any) -> list[str]:
    return [sys.executable, *map(str, args)]
