"""The package as a user gets it: a wheel built from the source, installed with a plain
`pip install` into a fresh virtual environment (no source tree on the path), runs its
command, the demo and the dashboard.

No network: the wheel is built without build isolation (setuptools and wheel come from the
test extra) and installed with --no-deps; the runtime dependencies are the test
environment's own, linked into a directory the fresh venv reads through a .pth file. Pillow
and prometheus_client are left out of that directory: the demo must run without them, and
they are added (on PYTHONPATH) only for the run that uses them.
"""

from __future__ import annotations

import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import venv
import zipfile
from pathlib import Path
from typing import Iterator

import pytest
from packaging.requirements import Requirement

import timelapser_workers
from tests.app.serving import SERVED_DEMO_LINE, finish_served, start_served

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ("setup.py", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "timelapser_workers", "sinks")


def _link_distribution(name: str, into: Path, seen: set[str]) -> None:
    """Link ``name`` and what it requires (no extras) from this environment into ``into``."""
    key = name.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    dist = importlib.metadata.distribution(name)
    site = Path(str(dist.locate_file("")))
    for top in {f.parts[0] for f in dist.files or () if f.parts[0] not in ("..", "__pycache__")}:
        target = into / top
        if not target.exists():
            target.symlink_to(site / top)
    for spec in dist.requires or ():
        req = Requirement(spec)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _link_distribution(req.name, into, seen)


class Installed:
    """A fresh venv with the built wheel installed in it."""

    def __init__(self, root: Path, wheel: Path) -> None:
        self.root, self.wheel = root, wheel
        self.bin = root / "venv" / "bin"
        self.extras = root / "extras"  # Pillow and prometheus_client, for the runs that want them
        self.home = root / "home"  # the cwd of every run: no source tree anywhere near
        self.home.mkdir()

    def run(self, *args: str, extras: bool = False, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*args), cwd=self.home, env=self.env(extras),
                              capture_output=True, text=True, timeout=timeout)

    def command(self, *args: str) -> list[str]:
        return [str(self.bin / args[0]), *args[1:]]

    def env(self, extras: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        if extras:
            env["PYTHONPATH"] = str(self.extras)
        return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCE:  # a copy: building writes build/ and *.egg-info beside the sources
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [wheel] = (root / "dist").glob("timelapser_workers-*.whl")
    inst = Installed(root, wheel)
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    python = inst.bin / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    deps = root / "deps"
    deps.mkdir()
    seen: set[str] = set()
    for req in importlib.metadata.requires("timelapser-workers") or ():
        r = Requirement(req)
        if r.marker is None or r.marker.evaluate({"extra": ""}):
            _link_distribution(r.name, deps, seen)
    (site / "timelapser-deps.pth").write_text(f"{deps}\n")
    inst.extras.mkdir()
    for name in ("pillow", "prometheus-client"):
        _link_distribution(name, inst.extras, seen)
    # a plain install of the wheel into the fresh venv (pip runs it from outside: the venv has no pip)
    done = subprocess.run(pip + ["--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    yield inst


def test_the_wheel_carries_version_license_and_metadata(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as whl:
        names = whl.namelist()
        meta = email.message_from_bytes(whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    assert meta["Version"] == timelapser_workers.__version__
    assert meta["Requires-Python"] == ">=3.10"
    assert "MIT" in (meta["License-Expression"] or meta["License"] or "")
    assert any(n.endswith("LICENSE") and ".dist-info/" in n for n in names), names
    assert "timelapser_workers/app/static/dashboard.html" in names
    assert "timelapser_workers/py.typed" in names
    assert any(c.startswith("Programming Language :: Python :: 3.10") for c in meta.get_all("Classifier"))
    assert {u.split(",")[0] for u in meta.get_all("Project-URL")} >= {"Source", "Changelog", "Issues"}
    assert not any(n.startswith(("examples/", "tests/", "sinks/")) for n in names), names

    version = installed.run("timelapser-workers", "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"timelapser-workers {timelapser_workers.__version__}"
    where = installed.run("python", "-c", "import timelapser_workers as t; print(t.__file__, t.__version__)")
    assert where.returncode == 0, where.stderr
    path, ver = where.stdout.split()
    assert Path(path).is_relative_to(installed.root / "venv") and ver == timelapser_workers.__version__


def test_the_demo_runs_from_the_wheel_without_pillow(installed: Installed) -> None:
    proc = installed.run("timelapser-workers", "demo", "--duration", "1.2", "--period", "0.4")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Pillow is not installed" in proc.stderr and "timelapser-workers[examples]" in proc.stderr
    lost = next(line for line in proc.stdout.splitlines() if line.startswith("lost"))
    assert lost.split()[-2:] == ["0", "0"], proc.stdout
    emitted = next(line for line in proc.stdout.splitlines() if line.startswith("events emitted"))
    assert all(int(n) > 10 for n in emitted.split()[-2:]), proc.stdout


def _serve(installed: Installed, extras: bool) -> tuple[subprocess.Popen[str], str]:
    return start_served(installed.command("timelapser-workers", "demo", "--serve", "--port", "0", "--duration", "3",
                                          "--period", "0.4"), cwd=installed.home, env=installed.env(extras))


def _finish(proc: subprocess.Popen[str]) -> str:
    out, err = finish_served(proc)
    assert re.search(SERVED_DEMO_LINE, out), out
    return err


def test_the_dashboard_runs_from_the_wheel_and_says_what_metrics_need(installed: Installed) -> None:
    proc, url = _serve(installed, extras=False)
    try:
        with urllib.request.urlopen(url + "/", timeout=10) as page:
            assert "EventSource" in page.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url + "/metrics", timeout=10)
        assert refused.value.code == 501
        assert "pip install 'timelapser-workers[prometheus]'" in refused.value.read().decode()
    finally:
        _finish(proc)


def test_the_dashboard_from_the_wheel_serves_metrics_with_the_extras(installed: Installed) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    proc, url = _serve(installed, extras=True)
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
        received = families["timelapser_events_received"]
        assert received.type == "counter"
        assert [s.labels for s in received.samples if s.name.endswith("_total")] == [{"batcher": "demo-batched"}]
    finally:
        err = _finish(proc)
    assert "JPEG through Pillow" in err
