"""The catalog on its own: a commit applies whole or not at all, conflicts are refused, and what
is read back is typed. Every test runs on both backends: SQLite (the default) and PostgreSQL (a
real server, tests/services.py; a database of its own per test)."""
from __future__ import annotations

import threading

import pytest

from ingest.record import Kind
from lake.catalog import (Catalog, CatalogConflict, Commit, FailedRow, NewFile, Order, ResolvedRow, StatKey,
                          TombstoneRow, Version, VersionRow)
from tests.services import backend_url


def new_file(n: int) -> NewFile:
    return NewFile("trips", "acme", "2025-01-20", f"lake/trips/team=acme/date=2025-01-20/part-{n}.parquet", 1, 100)


def state(cat: Catalog) -> tuple:
    con = cat.db
    return (con.execute("SELECT count(*) FROM snapshots").fetchone(), cat.positions(),
            sorted(cat.all_paths()), con.execute("SELECT * FROM versions ORDER BY key").fetchall(),
            con.execute("SELECT team, itin_id FROM tombstones").fetchall(), cat.failed_items())


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request):
    """``None`` (the SQLite file in the data directory) or the URL of a fresh PostgreSQL database."""
    return backend_url(request, "cat_")


@pytest.fixture
def open_catalog(tmp_path, catalog_url):
    """A connection to the test's catalog (another one at each call)."""
    opened = []

    def open_(readonly: bool = False) -> Catalog:
        opened.append(Catalog(tmp_path, readonly=readonly, url=catalog_url))
        return opened[-1]
    yield open_
    for c in opened:
        c.close()


@pytest.fixture
def cat(open_catalog):
    return open_catalog()


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
    con = cat.db
    typeof = "typeof(kind)" if cat.dialect == "sqlite" else "pg_typeof(kind)::text"
    assert con.execute(f"SELECT kind, {typeof} FROM versions").fetchall() == [(3, "integer")]
    assert con.execute(f"SELECT kind, {typeof} FROM failed").fetchall() == [(1, "integer")]
    assert con.execute(f"SELECT kind, {typeof} FROM push_stats").fetchall() == [(4, "integer")]
    assert con.execute("SELECT count(*) FROM versions WHERE kind = 3").fetchone() == (1,)
    (f,) = cat.failed_items()
    assert (f.kind, f.key, f.part, f.offset, f.reason, f.status) == (Kind.TRIP, "z", "p0", 7, "why", "FAILED")


def test_a_reader_sees_another_connections_commit_in_data_version(cat, open_catalog):
    reader = open_catalog(readonly=True)
    before = reader.data_version()
    assert reader.data_version() == before  # nothing changed: the same value, statement after statement
    cat.commit(Commit("append", positions={"p0": 1}, add_files=[new_file(1)]))
    after = reader.data_version()
    assert after != before
    assert reader.data_version() == after
    cat.add_tombstones([TombstoneRow("acme", "t", "p0", 1, 5)])
    assert reader.data_version() != after
    assert [f.path for f in reader.read_state().files] == [new_file(1).path]


def test_a_commit_conflicting_with_another_connections_changes_nothing(cat, open_catalog):
    """Two compactors (two connections) rewrite the same file: the second commit is refused whole."""
    cat.commit(Commit("append", positions={"p0": 1}, add_files=[new_file(1)]))
    fid = cat.live_files()[0].id
    other = open_catalog()
    other.commit(Commit("merge", remove_files={fid}, add_files=[new_file(2)]))
    before = state(cat)
    late = Commit("rewrite", positions={"p0": 9}, remove_files={fid}, add_files=[new_file(3)])
    late.stats[StatKey("2025-01-20", "acme", Kind.TRIP)] = [1, 1, 0, 0, 0]
    with pytest.raises(CatalogConflict):
        cat.commit(late)
    assert state(cat) == before == state(other)
    assert cat.report(Kind.TRIP, "2025-01-01", "2025-01-31") == []
    # the connection is usable afterwards (no transaction left open)
    cat.commit(Commit("append", positions={"p0": 10}))
    assert other.positions() == {"p0": 10}


def test_readers_see_a_swap_of_files_whole(cat, open_catalog):
    """A reader on its own connection reads either the files before a commit or after it, never a
    mix, while another connection swaps a file for its rewrite, commit after commit."""
    cat.commit(Commit("append", add_files=[new_file(0)]))
    reader = open_catalog(readonly=True)
    stop, seen, bad = threading.Event(), [], []

    def read():
        while not stop.is_set():
            st = reader.read_state()
            seen.append(st.snapshot)
            if len(st.files) != 1 or not st.files[0].path.endswith(f"part-{st.snapshot - 1}.parquet"):
                bad.append((st.snapshot, [f.path for f in st.files]))
    t = threading.Thread(target=read)
    t.start()
    try:
        for n in range(1, 60):
            (live,) = cat.live_files()
            cat.commit(Commit("rewrite", remove_files={live.id}, add_files=[new_file(n)]))
    finally:
        stop.set()
        t.join()
    assert not bad
    assert len(set(seen)) > 1  # the reader did read during the commits


def test_concurrent_commits_lose_no_counts(tmp_path, catalog_url):
    """Commits from several connections at once, each adding to the same push counters: every
    increment is there (the counters are read and written inside the commit's transaction)."""
    threads, commits, errors = 4, 25, []

    def work():
        c = Catalog(tmp_path, url=catalog_url)
        try:
            for _ in range(commits):
                step = Commit("append")
                step.stats[StatKey("2025-01-20", "acme", Kind.TRIP)] = [1, 1, 0, 0, 0]
                step.stats[StatKey("2025-01-21", "acme", Kind.TRIP)] = [2, 0, 2, 0, 0]
                c.commit(step)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            c.close()
    Catalog(tmp_path, url=catalog_url).close()  # the schema, before the writers race
    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    cat = Catalog(tmp_path, readonly=True, url=catalog_url)
    try:
        rows = {r["date"]: (r["received"], r["stored"], r["duplicates"]) for r in
                cat.report(Kind.TRIP, "2025-01-01", "2025-01-31")}
        n = threads * commits
        assert rows == {"2025-01-20": (n, n, 0), "2025-01-21": (2 * n, 0, 2 * n)}
        snaps = cat.db.execute("SELECT count(*), count(DISTINCT id) FROM snapshots").fetchone()
        assert tuple(snaps) == (n, n)
    finally:
        cat.close()


def test_failed_items_are_reported_by_receive_day_and_replaced_when_failing_again(cat):
    c = Commit("append")
    c.failed += [FailedRow(Kind.TRIP, "acme", "a", "p0", 1, 1737331200_000000 + 5, "bad"),  # 2025-01-20
                 FailedRow(Kind.TRIP, "acme", "b", "p0", 2, 1737417599_999999, "bad")]     # 2025-01-20, last µs
    cat.commit(c)
    again = Commit("retry")
    again.failed.append(FailedRow(Kind.TRIP, "acme", "a", "p0", 1, 1737331200_000000 + 5, "worse"))
    cat.commit(again)
    items = cat.failed_items()
    assert sorted((f.offset, f.reason) for f in items) == [(1, "worse"), (2, "bad")]
    (row,) = cat.report(Kind.TRIP, "2025-01-20", "2025-01-20")
    assert (row["date"], row["failed"]) == ("2025-01-20", 2)
    assert cat.report(Kind.TRIP, "2025-01-21", "2025-01-31") == []


def test_retry_tasks_and_layout(cat):
    c = Commit("append")
    c.failed.append(FailedRow(Kind.TRIP, "acme", "a", "p0", 1, 10, "bad"))
    cat.commit(c)
    assert cat.create_task("PUSH_FAILED_TRIPS", "t1") == ("t1", 1)
    assert cat.next_task().task_id == "t1"
    (item,) = cat.task_items("t1", 10)
    assert (item.part, item.offset, item.status) == ("p0", 1, "FAILED")
    assert cat.layout() == 0
    cat.set_layout(2)
    assert cat.layout() == 2
