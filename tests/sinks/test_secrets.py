"""Passwords in sink URLs never show in an error, its traceback, or a log line (issue 12)."""

from __future__ import annotations

import logging
import traceback

import pytest

from timelapser_workers.errors import SinkLoadError
from timelapser_workers.sinks.options import redact_url
from timelapser_workers.sinks.registry import load_sink

SECRET = "S3cret-pw"


@pytest.mark.parametrize(
    "spec, named",
    [
        (f"postgresql://app:{SECRET}@db.example/app?bad=1", "bad"),
        (f"postgresql://app:{SECRET}@db.example/app?connect_timeout=abc", "connect_timeout"),
        (f"postgresql://app:{SECRET}@db.example/app?table=a&table=b", "'table' is given 2 times"),
        (f"postgresql://app:{SECRET}@db.example:abc/app", "abc"),
        (f"postgresql://app:{SECRET}@db.example:99999/app", "port 99999"),  # refused now, not at every send
        ({"url": f"postgresql://app:{SECRET}@db.example/app", "bogus": 1}, "bogus"),
        (f"postgresql://app:{SECRET}@db.example/app?create_table=perhaps", "create_table"),
    ],
)
def test_load_sink_errors_hide_the_password(spec, named, caplog):
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SinkLoadError) as info:
        load_sink(spec)
    text = "".join(traceback.format_exception(info.value))
    assert named in str(info.value)
    assert "app:***@db.example" in str(info.value)  # user and host kept: the error stays useful
    assert SECRET not in text and SECRET not in caplog.text


def test_redact_url_keeps_all_but_the_password():
    assert redact_url("x postgresql+psycopg2://u:p%40ss@h:5432/d?sslmode=require y") == (
        "x postgresql+psycopg2://u:***@h:5432/d?sslmode=require y"
    )
    assert redact_url("redis://:pw@h/0 and sqlite:///a.db") == "redis://:***@h/0 and sqlite:///a.db"
    assert redact_url("postgresql://u:p@ss@h/d") == "postgresql://u:***@h/d"  # an unencoded '@' too
    assert redact_url("postgresql://u@h/d") == "postgresql://u@h/d"
