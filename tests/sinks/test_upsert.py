"""bulk_upsert on SQLite and PostgreSQL: inserts new keys, updates existing ones, in one go."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from timelapser_workers.sql.engine import create_sink_engine
from timelapser_workers.sql.upsert import bulk_upsert


@pytest.fixture
def settings(db):
    engine = create_sink_engine(db.url)
    md = sa.MetaData()
    table = sa.Table(
        db.table, md,
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_by", sa.Text),
    )
    md.create_all(engine)
    yield engine, table
    engine.dispose()


def test_inserts_and_updates_in_one_call(db, settings) -> None:
    engine, table = settings
    assert bulk_upsert(engine, table, [{"key": f"k{i}", "value": "1", "updated_by": "a"} for i in range(5)], ["key"]) == 5
    n = bulk_upsert(engine, db.table, [{"key": f"k{i}", "value": "2", "updated_by": "b"} for i in range(3, 8)], ["key"])
    assert n == 5
    rows = sorted(db.query(f"SELECT key, value, updated_by FROM {db.table}"))
    assert rows == [(f"k{i}", "1", "a") for i in range(3)] + [(f"k{i}", "2", "b") for i in range(3, 8)]
    bulk_upsert(engine, table, [{"key": "k0", "value": "3", "updated_by": "c"}], ["key"], update_columns=["value"])
    assert db.query(f"SELECT value, updated_by FROM {db.table} WHERE key = %s", ("k0",)) == [("3", "a")]


def test_bad_input_is_named(db, settings) -> None:
    engine, table = settings
    assert bulk_upsert(engine, table, [], ["key"]) == 0
    with pytest.raises(ValueError, match="'colour'"):
        bulk_upsert(engine, table, [{"key": "a", "value": "1", "colour": "red"}], ["key"])
    with pytest.raises(ValueError, match="row 1 has columns"):
        bulk_upsert(engine, table, [{"key": "a", "value": "1"}, {"key": "b"}], ["key"])
    with pytest.raises(ValueError, match="not a plain SQL identifier"):
        bulk_upsert(engine, "settings; drop table x", [{"key": "a"}], ["key"])
    with pytest.raises(ValueError, match="key column"):
        bulk_upsert(engine, table, [{"value": "1"}], ["key"])


def test_an_unsupported_database_is_refused_with_its_name() -> None:
    import sqlite3

    from timelapser_workers.sql.insert import dialect_insert

    engine = sa.create_engine("mysql+mysqldb://app@127.0.0.1/app", module=sqlite3)
    table = sa.Table("settings", sa.MetaData(), sa.Column("key", sa.Text, primary_key=True), sa.Column("value", sa.Text))
    with pytest.raises(ValueError, match="bulk_upsert supports sqlite and postgresql, not 'mysql'"):
        bulk_upsert(engine, table, [{"key": "a", "value": "1"}], ["key"])
    with pytest.raises(ValueError, match="mine supports sqlite and postgresql, not 'oracle'"):
        dialect_insert(table, "oracle", writer="mine")
