"""pushlake.db on both databases: placeholders, write transactions that roll back whole, the
change counter, read-only connections."""
from __future__ import annotations

import re

import pytest

from pushlake.db import open_db, pg_sql, redact


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path):
    if request.param == "sqlite":
        return tmp_path / "t.db"
    server = request.getfixturevalue("postgres")
    return server.fresh_database("db_" + re.sub(r"\W", "_", request.node.name.lower())[:50])


def test_placeholders_and_no_literal_percent():
    assert pg_sql('SELECT "offset" FROM t WHERE a = ? AND b IN (?,?)') == 'SELECT "offset" FROM t WHERE a = %s AND b IN (%s,%s)'
    with pytest.raises(AssertionError):
        pg_sql("SELECT 1 WHERE x LIKE 'a%'")


def test_redact_hides_the_password():
    assert redact("postgresql://u:secret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"


def test_unknown_url_is_refused(tmp_path):
    with pytest.raises(ValueError):
        open_db("mysql://u@h/db")


def test_a_failed_transaction_leaves_nothing_and_changes_count_commits(target):
    db = open_db(target)
    other = open_db(target, readonly=True)
    try:
        db.executescript("CREATE TABLE t(k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        v0 = other.changes()
        with db.tx():
            db.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2)])
        v1 = other.changes()
        assert v1 != v0
        with pytest.raises(ZeroDivisionError):
            with db.tx():
                db.execute("UPDATE t SET n = n + ?", (10,))
                1 / 0
        assert other.execute("SELECT k, n FROM t ORDER BY k").fetchall() == [("a", 1), ("b", 2)]
        assert other.changes() == v1  # rolled back: no change
        with db.tx():  # usable after the rollback
            assert db.execute("INSERT INTO t VALUES (?, ?) RETURNING n", ("c", 3)).fetchone() == (3,)
        with other.read():
            assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 3
        with pytest.raises(Exception):
            other.execute("INSERT INTO t VALUES ('d', 4)")  # read-only connection
    finally:
        other.close()
        db.close()
