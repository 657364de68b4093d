"""The package's layout promises: the sinks live under the library's name (a user's own
`sinks` cannot shadow them), and imports go one way: core <- sql <- sinks and sources <-
integrations and app."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "timelapser_workers"

# layer -> the layers it may import from (besides itself)
LAYERS = {
    "core": set(),
    "sql": {"core"},
    "sinks": {"core", "sql"},
    "sources": {"core", "sql", "sinks"},
    "integrations": {"core", "sql", "sinks", "sources"},
    "app": {"core", "sql", "sinks", "sources", "integrations"},
}


def _layer_of_module(name: str) -> str:
    parts = name.split(".")
    if parts[0] != "timelapser_workers":
        raise ValueError(name)
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        found.append((".".join(rel.parts).removesuffix(".__init__"), path))
    for path in sorted((ROOT / "sinks").rglob("*.py")):  # installed as timelapser_workers.sinks
        rel = path.relative_to(ROOT).with_suffix("")
        found.append(("timelapser_workers." + ".".join(rel.parts).removesuffix(".__init__"), path))
    return found


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return [n for n in names if n.split(".")[0] == "timelapser_workers"]


def test_imports_go_one_way() -> None:
    wrong = []
    for module, path in _modules():
        if module == "timelapser_workers.__main__":
            continue  # `python -m timelapser_workers` is the command line: the app itself
        layer = _layer_of_module(module)
        for imported in _imports(path):
            target = _layer_of_module(imported)
            if target != layer and target not in LAYERS[layer]:
                wrong.append(f"{module} ({layer}) imports {imported} ({target})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_top_level_sinks_package_is_installed(tmp_path: Path) -> None:
    code = "import importlib.util as u; print(u.find_spec('sinks'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "None"


def test_a_user_project_with_its_own_sinks_package(tmp_path: Path) -> None:
    """A project with its own top-level `sinks` package uses it and the library's sinks side by
    side, and its `sinks.*` loggers are stored by the log handler like any other."""
    project = tmp_path / "project"
    (project / "sinks").mkdir(parents=True)
    (project / "sinks" / "__init__.py").write_text("USERS_OWN = True\n")
    (project / "sinks" / "webhook.py").write_text(textwrap.dedent("""
        from timelapser_workers import BaseSink

        class WebhookSink(BaseSink):
            name = "webhook"

            def __init__(self):
                self.got = []

            def send(self, batch):
                self.got.extend(batch)
    """))
    (project / "app.py").write_text(textwrap.dedent("""
        import logging, sqlite3, sys

        import sinks
        from sinks.webhook import WebhookSink
        from timelapser_workers import EventBatcher
        from timelapser_workers.integrations.log_handler import BatchingDatabaseHandler
        from timelapser_workers.sinks import MemorySink, load_sink

        assert sinks.USERS_OWN
        mine, memory = WebhookSink(), load_sink("memory")
        assert isinstance(memory, MemorySink)
        with EventBatcher([mine, memory], dead_letter="dead.jsonl") as batcher:
            batcher.emit("JOB_STARTED", {"job_id": 1}, worker="w")
            assert batcher.flush(5).complete
        assert [e.type for e in mine.got] == [e.type for e in memory.events] == ["JOB_STARTED"]

        handler = BatchingDatabaseHandler("sqlite:///logs.db", batch_timeout=0.05, dead_letter="dead.jsonl")
        log = logging.getLogger("sinks.webhook")
        log.addHandler(handler)
        log.warning("delivered to the webhook")
        handler.close(5)
        rows = sqlite3.connect("logs.db").execute("SELECT logger, message FROM logs").fetchall()
        assert rows == [("sinks.webhook", "delivered to the webhook")], rows
        print("ok")
    """))
    out = subprocess.run([sys.executable, "app.py"], cwd=project, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
