#!/usr/bin/env python3
"""The project's two commands, for a machine that has only python3.

    python3 run.py demo            run the demo in a local virtual environment (.venv)
    python3 run.py test [ARGS]     run the whole test suite (ARGS go to pytest)
    python3 run.py typecheck       mypy --strict on the package, laid out as it installs

The first call creates .venv and installs the package with its test extras into it; later
calls reuse it, and reinstall when setup.py changed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TIMELAPSER_VENV", ROOT / ".venv"))
STAMP = VENV / ".timelapser-installed"
EXTRAS = "test,postgres,examples"


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> None:
    stale = not STAMP.exists() or STAMP.stat().st_mtime < (ROOT / "setup.py").stat().st_mtime
    if not python().exists():
        print(f"run.py: creating virtual environment {VENV}", flush=True)
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except Exception as exc:  # ensurepip missing (Debian without python3-venv)
            sys.exit(f"run.py: cannot create {VENV}: {exc}\n(on Debian/Ubuntu: apt-get install python3-venv)")
        stale = True
    if stale:
        print(f"run.py: installing timelapser-workers[{EXTRAS}] into {VENV}", flush=True)
        pip = [str(python()), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        subprocess.run(pip + ["-e", f"{ROOT}[{EXTRAS}]"], check=True)
        STAMP.touch()


def typecheck(args: list[str]) -> int:
    """mypy --strict on timelapser_workers as it installs: setup.py maps the top-level sinks/
    folder to timelapser_workers/sinks, which mypy cannot follow in the source tree, so it
    reads a tree of links laid out like the installed package. Paths are printed as in the
    repository."""
    tree = Path(tempfile.mkdtemp(prefix="timelapser-typecheck-"))
    try:
        for src, dest in ((ROOT / "timelapser_workers", tree / "timelapser_workers"),
                          (ROOT / "sinks", tree / "timelapser_workers" / "sinks")):
            for path in src.rglob("*.py*"):  # .py and py.typed
                if "__pycache__" in path.parts:
                    continue
                target = dest / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
        cmd = [str(python()), "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(ROOT / ".mypy_cache"), "-p", "timelapser_workers", *args]
        proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
        out = (proc.stdout + proc.stderr).replace("timelapser_workers/sinks/", "sinks/")
        print(out, end="")
        return proc.returncode
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "typecheck"):
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    if argv[0] == "typecheck":
        return typecheck(argv[1:])
    if argv[0] == "demo":
        cmd = [str(python()), "-m", "timelapser_workers", "demo", *argv[1:]]
    else:
        cmd = [str(python()), "-m", "pytest", *argv[1:]]
    return subprocess.call(cmd, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
