"""The README's Python blocks run as written and print what the README shows.

Every ```python block runs in a subprocess, in its own temporary directory, unless its first
line is ``# a sketch: <why>`` (a fragment of a larger application, or it needs a service the
test does not start). The comment lines right under a line that prints are the block's
expected output, one per printed line; ``...`` in them stands for what varies from run to run.
A block that prints something the README does not show fails, and so does one that does not
print what the README shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
SKETCH = "# a sketch"
SKETCHES = [b for b in BLOCKS if b.startswith(SKETCH)]
RUNNABLE = [b for b in BLOCKS if not b.startswith(SKETCH)]


def expected_output(block: str) -> list[str]:
    """The comment lines right under each line that calls print(), in order."""
    lines = block.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if line.startswith("#") or "print(" not in line:
            continue
        for following in lines[i + 1:]:
            if not following.startswith("# "):
                break
            out.append(following[2:])
    return out


def matches(expected: str, actual: str) -> bool:
    """``actual`` is ``expected``, where each ``...`` stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return re.fullmatch(pattern, actual) is not None


def test_the_output_convention_is_strict() -> None:
    assert expected_output('x = 1\nprint(x)\n# 1\n# 2\ny = 2\n# not output\n') == ["1", "2"]
    assert matches("['A', ..., 'B']", "['A', 'X', 'Y', 'B']")
    assert not matches("['A', ..., 'B']", "['A', 'X', 'C']")
    assert not matches("True {'job_id': 7}", "True {'job_id': 8}")


def test_most_blocks_run_and_every_sketch_says_why() -> None:
    assert len(SKETCHES) < len(RUNNABLE), f"{len(SKETCHES)} sketches, {len(RUNNABLE)} blocks that run"
    for block in SKETCHES:
        first = block.splitlines()[0]
        assert re.fullmatch(r"# a sketch: \S.{15,}", first), f"a sketch must say why it does not run: {first!r}"
    assert sum(bool(expected_output(b)) for b in RUNNABLE) >= 3  # the blocks that show output


@pytest.mark.parametrize("block", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_block_runs_and_prints_what_the_readme_shows(block: str, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    expected, actual = expected_output(block), proc.stdout.splitlines()
    assert len(actual) == len(expected), f"README shows {expected}, the block printed {actual}"
    for want, got in zip(expected, actual):
        assert matches(want, got), f"README shows {want!r}, the block printed {got!r}"
