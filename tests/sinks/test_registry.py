"""Sinks by name and URL: built-ins, register_sink, and a real third-party distribution."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from timelapser_workers import __version__
from timelapser_workers.sinks.database import DatabaseSink
from timelapser_workers.sinks.log import LogSink
from timelapser_workers.sinks.memory import MemorySink
from timelapser_workers.sinks.registry import available_sinks, load_sink, register_sink, unregister_sink
from timelapser_workers.batcher import EventBatcher
from timelapser_workers.errors import SinkLoadError

PLUGIN = Path(__file__).parent / "plugin_dist"


def test_builtin_sinks_by_url(tmp_path: Path) -> None:
    sink = load_sink(f"sqlite:///{tmp_path}/e.db?table=job_events&notify_channel=x&busy_timeout=2.5")
    assert isinstance(sink, DatabaseSink) and sink.table.name == "job_events" and sink.dialect == "sqlite"
    sink.close()
    log = load_sink("log?logger=app.events&level=warning&max_ids=3")
    assert isinstance(log, LogSink) and log.logger.name == "app.events" and log.level == logging.WARNING
    assert isinstance(load_sink("memory"), MemorySink)


@pytest.mark.postgres
def test_postgresql_url_with_options_and_libpq_passthrough(postgres_url: str) -> None:
    sink = load_sink(f"{postgres_url}?table=x_events&use_copy=false&sslmode=disable")
    assert isinstance(sink, DatabaseSink) and sink.table.name == "x_events" and not sink.use_copy
    assert sink.engine.url.query == {"sslmode": "disable"}
    sink.close()


def test_sink_from_a_config_dict(tmp_path: Path) -> None:
    sink = load_sink({"url": f"sqlite:///{tmp_path}/e.db", "table": "t1", "create_table": False})
    assert isinstance(sink, DatabaseSink) and sink.table.name == "t1"
    log = load_sink({"sink": "log", "logger": "x", "level": logging.DEBUG})
    assert isinstance(log, LogSink) and log.level == logging.DEBUG


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sqlite:///e.db?tabel=x", "unknown option(s) tabel"),
        ("sqlite:///e.db?use_copy=maybe", "use_copy='maybe'"),
        ("sqlite:///e.db?busy_timeout=-1", "busy_timeout=-1.0"),
        ("sqlite:///e.db?table=a%20b", "'a b' is not a plain SQL identifier"),
        ("sqlite:///e.db?table=a&table=b", "given 2 times"),
        ("log?level=loud", "log level 'loud'"),
        ("log?colour=red", "unknown option 'colour'"),
        ("nosuch://x", "no sink named 'nosuch'; available: "),
        ({"table": "x"}, "neither 'url' nor 'sink'"),
        (42, "got 42"),
    ],
)
def test_bad_specs_name_the_bad_value(spec: object, message: str) -> None:
    with pytest.raises(SinkLoadError) as info:
        load_sink(spec)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_register_sink_at_run_time() -> None:
    register_sink("test-mem", MemorySink)
    try:
        sink = load_sink("test-mem?name=m1")
        assert isinstance(sink, MemorySink) and sink.name == "m1"
        assert any(i.name == "test-mem" and i.origin == "register_sink()" for i in available_sinks())
        with pytest.raises(ValueError, match="already provided by register_sink"):
            register_sink("test-mem", MemorySink)
        with pytest.raises(ValueError, match="timelapser-workers"):
            register_sink("sqlite", MemorySink)  # an entry point has it
        register_sink("test-mem", LogSink, replace=True)
        assert isinstance(load_sink("test-mem"), LogSink)
    finally:
        unregister_sink("test-mem")
    with pytest.raises(ValueError, match="'Bad Name'"):
        register_sink("Bad Name", MemorySink)


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Install the tiny third-party distribution (tests/sinks/plugin_dist) into a directory.
    It is built from a copy: setuptools writes build/ and *.egg-info beside the sources."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    source = shutil.copytree(PLUGIN, build / "plugin_dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--target", str(target),
         str(source)],
        capture_output=True, text=True, timeout=90, cwd=build, env={**os.environ, "TMPDIR": str(build)},
    )
    assert proc.returncode == 0, proc.stderr
    assert list(target.glob("timelapser_echo_sink-0.1.dist-info"))
    return target


def test_third_party_sink_through_its_entry_point(plugin_site: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(plugin_site))
    sink = load_sink("echo?prefix=p")
    assert type(sink).__module__ == "tl_echo_sink"
    with EventBatcher([sink], batch_size=5, batch_timeout=0.05) as batcher:
        for i in range(5):
            batcher.emit("THING", {"i": i})
        assert batcher.flush(5) == (5, 0, 0)
    assert type(sink).received[-5:] == ["p:THING"] * 5  # type: ignore[attr-defined]
    # The broken plugin fails alone, naming its entry point and distribution ...
    with pytest.raises(SinkLoadError) as info:
        load_sink("broken")
    text = str(info.value)
    assert "broken = tl_echo_sink_missing:Nope" in text and "timelapser-echo-sink 0.1" in text
    assert "ModuleNotFoundError" in text
    # ... the others still load ...
    assert isinstance(load_sink(f"sqlite:///{tmp_path}/e.db"), DatabaseSink)
    # ... and the clash over `memory` is reported, not shadowed.
    with pytest.raises(SinkLoadError) as clash:
        load_sink("memory")
    assert "timelapser-echo-sink 0.1: tl_echo_sink:EchoSink" in str(clash.value)
    assert f"timelapser-workers {__version__}: timelapser_workers.sinks.memory:MemorySink" in str(clash.value)


def test_cli_lists_sinks_and_where_they_come_from(plugin_site: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "timelapser_workers", "sinks", "--check"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the broken plugin and the clash
    row = {tuple(line.split()[:3]) for line in lines}
    assert ("echo", "tl_echo_sink:EchoSink", "timelapser-echo-sink") in row
    assert ("sqlite", "timelapser_workers.sinks.database:DatabaseSink", "timelapser-workers") in row
    assert any(line.startswith("broken") and "error: " in line and "ModuleNotFoundError" in line for line in lines)
    assert sum(line.startswith("memory") and "conflict" in line for line in lines) == 2


def test_options_of_a_plain_factory_are_typed_from_its_defaults():
    from timelapser_workers.sinks import load_sink
    from timelapser_workers.errors import SinkLoadError

    assert load_sink("memory?wants_aggregated=false").wants_aggregated is False
    assert load_sink("memory?name=audit").name == "audit"
    with pytest.raises(SinkLoadError, match="wants_aggregated='maybe'"):
        load_sink("memory?wants_aggregated=maybe")
    with pytest.raises(SinkLoadError, match="unknown option 'colour'"):
        load_sink("memory?colour=red")
