"""Passwords in sink URLs never show in an error, its traceback, or a log line (issue 12)."""

from __future__ import annotations

import logging
import traceback

import pytest

from timelapser_workers.errors import SinkLoadError
from timelapser_workers.sinks.options import redact_url
from timelapser_workers.sinks.redis import RedisStreamSink
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
        (f"postgresql://app:pa/{SECRET}@db.example/app?bogus=1", "bogus"),  # a raw '/' in the password
        (f"postgresql://app:{SECRET}@db.example/app?sslpassword={SECRET}&bogus=1", "sslpassword=***"),
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
    # raw '/' or a quote in the password (SQLAlchemy reads them so), a secret in the query
    assert redact_url("postgresql://u:pa/ss@h/d") == "postgresql://u:***@h/d"
    assert redact_url("'postgresql://u:it's@h:5432'") == "'postgresql://u:***@h:5432'"
    assert redact_url("postgresql://u@h/d?sslpassword=k&Token=t&table=x") == (
        "postgresql://u@h/d?sslpassword=***&Token=***&table=x"
    )


@pytest.mark.parametrize("build, query", [
    (RedisStreamSink, "maxlen=5"), (RedisStreamSink.from_url, "maxlen=abc"), (RedisStreamSink.from_url, "bogus=1"),
], ids=["constructor", "from_url-bad-value", "from_url-unknown"])
def test_redis_sinks_built_directly_hide_the_password(build, query):
    pytest.importorskip("redis")
    with pytest.raises(ValueError) as info:
        build(f"redis://app:{SECRET}@127.0.0.1:6379/0?{query}")
    assert "app:***@127.0.0.1" in str(info.value) and SECRET not in str(info.value)


def test_a_redis_source_built_directly_hides_the_password():
    pytest.importorskip("redis")
    from timelapser_workers.sinks.sse import SSEHub
    from timelapser_workers.sources.redis import RedisEventSource

    for url, kwargs in ((f"redis://app:{SECRET}@127.0.0.1:6379/0?bogus=1", {}),
                        (f"redis://app:{SECRET}@127.0.0.1:6379/0?stream=a", {"stream": "b"})):
        with pytest.raises(ValueError) as info:
            RedisEventSource(url, SSEHub(), **kwargs)
        assert "app:***@127.0.0.1" in str(info.value) and SECRET not in str(info.value)
