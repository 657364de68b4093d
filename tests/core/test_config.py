import warnings
from pathlib import Path

import pytest

from timelapser_workers import EventBatcher
from timelapser_workers.config import BatcherConfig
from timelapser_workers.events import Priority


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
        ({"batch_size": True}, "batch_size=True"),
        ({"batch_timeout": -1}, "batch_timeout=-1"),
        ({"batch_timeout": float("inf")}, "batch_timeout=inf"),
        ({"max_retries": -1}, "max_retries=-1"),
        ({"retry_delay": "soon"}, "retry_delay='soon'"),
        ({"overflow": "explode"}, "overflow='explode'"),
        ({"block_timeout": 0}, "block_timeout=0"),
        ({"max_queue_size": 0}, "max_queue_size=0"),
        ({"flush_priority": "urgent"}, "flush_priority"),
    ],
)
def test_invalid_settings_raise_at_construction_naming_the_setting(kwargs, named, tmp_path):
    with pytest.raises(ValueError) as info:
        EventBatcher(dead_letter=tmp_path / "d.jsonl", **kwargs)
    assert named in str(info.value)


def test_defaults_match_the_seed():
    cfg = BatcherConfig.resolve()
    assert (cfg.batch_size, cfg.batch_timeout, cfg.max_retries, cfg.retry_delay) == (10, 0.5, 2, 0.5)


def test_environment_overrides_default_and_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv("TIMELAPSER_BATCH_SIZE", "25")
    monkeypatch.setenv("TIMELAPSER_BATCH_TIMEOUT_SECONDS", "2")
    cfg = BatcherConfig.resolve()
    assert cfg.batch_size == 25 and cfg.batch_timeout == 2.0
    assert BatcherConfig.resolve(batch_size=3).batch_size == 3


def test_non_number_in_environment_names_the_variable(monkeypatch):
    monkeypatch.setenv("TIMELAPSER_BATCH_MAX_RETRIES", "three")
    with pytest.raises(ValueError, match="TIMELAPSER_BATCH_MAX_RETRIES='three'"):
        BatcherConfig.resolve()


def test_unknown_setting_is_refused():
    with pytest.raises(TypeError, match="batchsize"):
        BatcherConfig.resolve(batchsize=3)


def test_a_sink_without_send_is_refused(tmp_path):
    with pytest.raises(TypeError, match="no send"):
        EventBatcher([object()], dead_letter=tmp_path / "d.jsonl")


def test_a_bad_value_from_the_environment_names_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("TIMELAPSER_EVENT_QUEUE_OVERFLOW", "dropnewest")
    with pytest.raises(ValueError, match="overflow='dropnewest'.*TIMELAPSER_EVENT_QUEUE_OVERFLOW"):
        EventBatcher(dead_letter=tmp_path / "d.jsonl")


def test_one_sink_instead_of_a_list_is_explained(tmp_path):
    from timelapser_workers.sinks import MemorySink

    with pytest.raises(TypeError, match=r"list of sinks.*pass \["):
        EventBatcher(MemorySink(), dead_letter=tmp_path / "d.jsonl")


@pytest.mark.parametrize("bad", [-1, float("nan"), "soon"])
def test_flush_and_close_refuse_a_bad_timeout(bad, tmp_path):
    batcher = EventBatcher(dead_letter=tmp_path / "d.jsonl")
    with pytest.raises(ValueError, match="timeout="):
        batcher.flush(bad)
    with pytest.raises(ValueError, match="timeout="):
        batcher.close(bad)
    batcher.close()


def _sample(name, default):
    """A valid value for a setting, other than its default, as environment text and as stored."""
    samples = {"overflow": ("block", "block"), "flush_priority": ("critical", Priority.CRITICAL),
               "dead_letter_path": ("/tmp/x.jsonl", "/tmp/x.jsonl"), "spool_dir": ("/tmp/x-spool", "/tmp/x-spool")}
    if name in samples:
        return samples[name]
    if isinstance(default, bool):
        return ("false", False) if default else ("true", True)
    if isinstance(default, float):
        return str(default + 1.5), default + 1.5
    return str(default + 3), default + 3


@pytest.mark.parametrize("name,default,env", [(n, d, e) for n, d, e, _ in BatcherConfig.describe()])
def test_every_environment_variable_takes_effect(monkeypatch, name, default, env):
    text, stored = _sample(name, default)
    monkeypatch.setenv(env, text)
    assert getattr(BatcherConfig.resolve(), name) == stored
    assert getattr(BatcherConfig.resolve(**{name: default}), name) == default  # the argument wins


@pytest.mark.parametrize("old,new,name", [
    ("TIMELAPSER_SSE_BATCH_SIZE", "TIMELAPSER_BATCH_SIZE", "batch_size"),
    ("TIMELAPSER_SSE_BATCH_MAX_RETRIES", "TIMELAPSER_BATCH_MAX_RETRIES", "max_retries"),
])
def test_the_old_sse_names_still_work_with_a_deprecation_warning(monkeypatch, old, new, name):
    monkeypatch.setenv(old, "7")
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; use {new}"):
        assert getattr(BatcherConfig.resolve(), name) == 7
    monkeypatch.setenv(new, "8")  # the new name wins, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(BatcherConfig.resolve(), name) == 8


def test_the_readme_table_lists_every_setting_with_its_default_and_variable():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines()
            if line.startswith("| `") and line.count("|") >= 5}
    for name, default, env, _ in BatcherConfig.describe():
        assert name in rows, f"README's settings table has no row for {name}"
        shown = default.name if isinstance(default, Priority) else str(default)
        assert f"`{env}`" in rows[name] and shown in rows[name], rows[name]
