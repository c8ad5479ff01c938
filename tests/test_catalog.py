"""The catalog on its own: a commit applies whole or not at all, conflicts are refused, and what
is read back is typed."""
from __future__ import annotations

import pytest

from ingest.record import Kind
from lake.catalog import (Catalog, CatalogConflict, Commit, FailedRow, NewFile, Order, ResolvedRow, StatKey,
                          TombstoneRow, Version, VersionRow)


def new_file(n: int) -> NewFile:
    return NewFile("trips", "acme", "2025-01-20", f"lake/trips/team=acme/date=2025-01-20/part-{n}.parquet", 1, 100)


def state(cat: Catalog) -> tuple:
    con = cat.con
    return (con.execute("SELECT count(*) FROM snapshots").fetchone(), cat.positions(),
            sorted(cat.all_paths()), con.execute("SELECT * FROM versions ORDER BY key").fetchall(),
            con.execute("SELECT team, itin_id FROM tombstones").fetchall(), cat.failed_items())


@pytest.fixture
def cat(tmp_path):
    c = Catalog(tmp_path)
    yield c
    c.close()


def test_a_commit_is_read_back_typed(cat):
    c = Commit("append", positions={"p0": 3}, add_files=[new_file(1)])
    c.versions.append(VersionRow(Kind.TRIP, "acme", "a", 10, "p0", 0, "h1", "2025-01-20"))
    c.tombstones.append(TombstoneRow("acme", "b", "p0", 2, 30))
    cat.commit(c)
    assert cat.positions() == {"p0": 3}
    v = cat.versions_of(Kind.TRIP, "acme", ["a", "zz"])
    assert v == {"a": Version(Order(10, "p0", 0), "h1", "2025-01-20")} and v["a"].order.part == "p0"
    assert cat.deleted_among("acme", ["a", "b"]) == {"b": Order(30, "p0", 2)}


def test_a_commit_that_conflicts_changes_nothing(cat):
    first = Commit("append", positions={"p0": 1}, add_files=[new_file(1)])
    cat.commit(first)
    fid = cat.live_files()[0].id
    cat.commit(Commit("merge", remove_files={fid}, add_files=[new_file(2)]))
    before = state(cat)
    late = Commit("append", positions={"p0": 9}, remove_files={fid}, add_files=[new_file(3)])
    late.versions.append(VersionRow(Kind.TRIP, "acme", "x", 1, "p0", 5, "h", "2025-01-20"))
    late.tombstones.append(TombstoneRow("acme", "y", "p0", 6, 2))
    late.failed.append(FailedRow(Kind.TRIP, "acme", "z", "p0", 7, 3, "why"))
    with pytest.raises(CatalogConflict):
        cat.commit(late)  # the file it rewrote was merged meanwhile
    assert state(cat) == before


def test_the_first_tombstone_of_a_trip_stays(cat):
    for order in (Order(50, "p1", 9), Order(20, "p0", 4), Order(60, "p0", 8)):
        c = Commit("append")
        c.tombstones.append(TombstoneRow("acme", "a", order.part, order.offset, order.received_us))
        cat.commit(c)
    assert cat.deleted_among("acme", ["a"]) == {"a": Order(50, "p1", 9)}  # inserted once, never moved


def test_a_good_push_resolves_older_failed_items_of_its_key_only(cat):
    c = Commit("append")
    c.failed += [FailedRow(Kind.TRIP, "acme", "a", "p0", 1, 10, "bad"), FailedRow(Kind.TRIP, "acme", "a", "p0", 3, 30, "bad")]
    cat.commit(c)
    good = Commit("append")
    good.resolved.append(ResolvedRow(Kind.TRIP, "acme", "a", 20))
    cat.commit(good)
    statuses = {f.offset: f.status for f in cat.failed_items(None)}
    assert statuses == {1: "RESOLVED", 3: "FAILED"}


def test_push_counts_add_up_across_commits(cat):
    for _ in range(2):
        c = Commit("append")
        c.stats[StatKey("2025-01-20", "acme", Kind.TRIP)] = [2, 1, 1, 0, 0]
        cat.commit(c)
    (row,) = cat.report(Kind.TRIP, "2025-01-01", "2025-01-31")
    assert (row["received"], row["stored"], row["duplicates"], row["failed"]) == (4, 2, 2, 0)


def test_kinds_are_stored_as_plain_integers(cat):
    """``Kind`` is an int subclass: sqlite3 binds it as an INTEGER, so catalogs written before it
    existed and after it compare and index the same."""
    c = Commit("append")
    c.versions.append(VersionRow(Kind.CRASH, "acme", "c", 10, "p0", 0, "h", "2025-01-20"))
    c.failed.append(FailedRow(Kind.TRIP, "acme", "z", "p0", 7, 3, "why"))
    c.stats[StatKey("2025-01-20", "acme", Kind.DIAGNOSIS)] = [1, 1, 0, 0, 0]
    cat.commit(c)
    con = cat.con
    assert con.execute("SELECT kind, typeof(kind) FROM versions").fetchall() == [(3, "integer")]
    assert con.execute("SELECT kind, typeof(kind) FROM failed").fetchall() == [(1, "integer")]
    assert con.execute("SELECT kind, typeof(kind) FROM push_stats").fetchall() == [(4, "integer")]
    assert con.execute("SELECT count(*) FROM versions WHERE kind = 3").fetchone() == (1,)
    (f,) = cat.failed_items()
    assert (f.kind, f.key, f.part, f.offset, f.reason, f.status) == (Kind.TRIP, "z", "p0", 7, "why", "FAILED")
