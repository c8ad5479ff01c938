"""Deletions beyond a step's copy-on-write budget: position deletes that every view skips at once,
rewritten later by ``apply_deletes``; no rewrite (merge, replacement) may bring their rows back."""
from __future__ import annotations

import duckdb
import pytest

import queries
from queries import connection
from lake.catalog import Catalog, CatalogConflict, Commit
from lake.compactor import Compactor
from lake.maintenance import merge_small_files
from tests.conftest import compact
from tests.helpers import deletion, itin_id, trip

TRIP_VIEWS = ("trips", "trip_samples", "trip_events")


def counts(con, where: str = "true") -> dict[str, int]:
    return {v: con.execute(f"SELECT count(*) FROM {v} WHERE {where}").fetchall()[0][0] for v in TRIP_VIEWS}


def plain(data, itin: str) -> dict[str, int]:
    """What a plain Parquet reader of the public tree sees of a trip."""
    return {v: duckdb.sql(f"SELECT count(*) FROM read_parquet('{data}/lake/{v}/**/*.parquet') "
                          f"WHERE itin_id = '{itin}'").fetchall()[0][0] for v in TRIP_VIEWS}


GONE = {"trips": 0, "trip_samples": 0, "trip_events": 0}
ONE = {"trips": 1, "trip_samples": 10, "trip_events": 3}


async def lake_of(pusher, data, n: int = 6) -> None:
    for i in range(n):
        assert (await pusher.push("trip", trip(itin_id(i))))[0] == 200
    compact(data)


@pytest.fixture(params=["small files together", "each file alone"])
def big_rows(request, monkeypatch):
    """Files with position deletes are read together (joined to their bitmaps by filename) or,
    from ``BIG_ROWS`` rows, one by one: both ways, whatever the size of the test's files."""
    if request.param == "each file alone":
        monkeypatch.setattr(connection, "BIG_ROWS", 0)
    return request.param


async def test_deferred_deletions_are_skipped_by_position_until_rewritten(pusher, data, big_rows):
    await lake_of(pusher, data)
    con = queries.connect(data)
    for i in (1, 4):
        assert (await pusher.push("trip/event", deletion(itin_id(i))))[0] == 200
    compact(data, cow_rows=0, apply_deletes=False)  # projected, found, not rewritten
    cat = Catalog(data)
    assert cat.db.execute("SELECT count(*) FROM tombstones WHERE resolved_at IS NOT NULL AND applied_at IS NULL"
                          ).fetchone()[0] == 2
    # one run per trip and file: its row in trips, its 10 samples, its 3 events
    assert sorted(cat.db.execute("SELECT itin_id, sum(row_count) FROM deletes GROUP BY itin_id").fetchall()) == [
        (itin_id(1), 14), (itin_id(4), 14)]
    # every view skips them: an old connection, a new one, a team's
    for c in (con, queries.connect(data), queries.connect(data, team="acme")):
        assert counts(c) == {"trips": 4, "trip_samples": 40, "trip_events": 12}
        assert counts(c, f"itin_id IN ('{itin_id(1)}', '{itin_id(4)}')") == GONE
        assert counts(c, f"itin_id = '{itin_id(0)}'") == ONE
    # plain readers still see them until the rewrite (docs/reading.md says so)
    assert plain(data, itin_id(1)) == ONE
    # a deletion the compactor has not seen yet: filtered by key in the same files
    assert (await pusher.push("trip/event", deletion(itin_id(2))))[0] == 200
    assert counts(con) == {"trips": 3, "trip_samples": 30, "trip_events": 9}
    with Compactor(data, cow_rows=0) as c:
        c.step()
    assert counts(con) == {"trips": 3, "trip_samples": 30, "trip_events": 9}
    # the rewrite: rows gone from the files, tombstones applied, views unchanged
    with Compactor(data) as c:
        assert c.apply_deletes() == 3
        assert c.apply_deletes() == 0
    assert cat.db.execute("SELECT count(*) FROM deletes").fetchone()[0] == 0
    assert cat.db.execute("SELECT count(*) FROM tombstones WHERE applied_at IS NULL").fetchone()[0] == 0
    for i in (1, 2, 4):
        assert plain(data, itin_id(i)) == GONE
    assert plain(data, itin_id(0)) == ONE
    assert counts(con) == {"trips": 3, "trip_samples": 30, "trip_events": 9}


async def test_a_step_rewrites_within_its_budget_and_defers_the_rest(pusher, acme, globex, make_pusher, data):
    a, g = await make_pusher(acme), await make_pusher(globex)
    for i in range(4):
        await a.push("trip", trip(itin_id(i)))
        await g.push("trip", trip(itin_id(10 + i)))
    compact(data)
    await a.push("trip/event", deletion(itin_id(0)))
    await g.push("trip/event", deletion(itin_id(10)))
    # a budget of one row: the first file found is rewritten all the same, the others wait
    compact(data, cow_rows=1, apply_deletes=False)
    cat = Catalog(data)
    waiting = cat.db.execute("SELECT count(DISTINCT file_id) FROM deletes").fetchone()[0]
    assert 0 < waiting < 6
    con = queries.connect(data)
    assert counts(con) == {"trips": 6, "trip_samples": 60, "trip_events": 18}
    # the default budget rewrites every file holding a deleted trip in the step itself
    await a.push("trip/event", deletion(itin_id(1)))
    compact(data)  # drain() also applies what earlier steps deferred
    assert cat.db.execute("SELECT count(*) FROM deletes").fetchone()[0] == 0
    assert plain(data, itin_id(1)) == GONE and plain(data, itin_id(10)) == GONE
    assert counts(con) == {"trips": 5, "trip_samples": 50, "trip_events": 15}


async def test_no_rewrite_brings_deleted_rows_back(pusher, data):
    await lake_of(pusher, data)
    for i in range(6, 12):  # more files in the partition, for a merge to take
        await pusher.push("trip", trip(itin_id(i)))
        compact(data)
    await pusher.push("trip/event", deletion(itin_id(3)))
    compact(data, cow_rows=0, apply_deletes=False)
    con = queries.connect(data)
    assert counts(con) == {"trips": 11, "trip_samples": 110, "trip_events": 33}
    cat = Catalog(data)
    held = cat.files_with_deletes_ids()
    # a merge leaves the files with position deletes alone ...
    merge_small_files(data, cat, min_files=2)
    live = {f.id for f in cat.live_files()}
    assert held <= live
    assert counts(con) == {"trips": 11, "trip_samples": 110, "trip_events": 33}
    # ... and a commit that would replace one without applying them is refused
    with pytest.raises(CatalogConflict):
        cat.commit(Commit("merge", remove_files={min(held)}))
    # a trip pushed again (a replacement) rewrites its file: the deleted rows stay out
    changed = trip(itin_id(0))
    changed["itineraryStatistics"]["distance"] = 12345.0
    await pusher.push("trip", changed)
    compact(data, cow_rows=0, apply_deletes=False)
    assert counts(con) == {"trips": 11, "trip_samples": 110, "trip_events": 33}
    assert counts(con, f"itin_id = '{itin_id(3)}'") == GONE
    assert con.execute(f"SELECT distance_m FROM trips WHERE itin_id = '{itin_id(0)}'").fetchall() == [(12345.0,)]
    with Compactor(data) as c:
        c.apply_deletes()
    assert plain(data, itin_id(3)) == GONE
    assert counts(con) == {"trips": 11, "trip_samples": 110, "trip_events": 33}


async def test_a_trip_stored_after_its_deletion_was_resolved_is_refused(pusher, data):
    await lake_of(pusher, data, 2)
    await pusher.push("trip/event", deletion(itin_id(1)))
    compact(data, cow_rows=0, apply_deletes=False)
    # a commit planned elsewhere that stores the trip again: the resolved tombstone wins
    from ingest.record import Kind
    from lake.catalog import Key, VersionRow
    cat = Catalog(data)
    c = Commit("append", versions=[VersionRow(Kind.TRIP, "acme", itin_id(1), 1, "p0", 999, "x" * 64, "2025-01-20")])
    c.previous[Key(Kind.TRIP, "acme", itin_id(1))] = None
    with pytest.raises(CatalogConflict):
        cat.commit(c)


async def test_position_deletes_hold_when_a_filter_prunes_partitions(pusher, data, big_rows):
    days = ["2025-01-20", "2025-01-21", "2025-01-22"]
    for d, day in enumerate(days):
        for i in range(3):
            await pusher.push("trip", trip(itin_id(10 * d + i), start=f"{day}T08:00:00.000+0000"))
    compact(data)
    for d in range(3):
        await pusher.push("trip/event", deletion(itin_id(10 * d + 1)))
    compact(data, cow_rows=0, apply_deletes=False)
    con = queries.connect(data)
    assert Catalog(data).db.execute("SELECT count(DISTINCT file_id) FROM deletes").fetchone()[0] == 9
    # DuckDB skips the other partitions' files: what is left must still meet its own deletes
    for day in days[1:]:
        rows = con.execute("SELECT itin_id, count(*) FROM trip_samples WHERE date = ? GROUP BY 1 ORDER BY 1",
                           [day]).fetchall()
        d = days.index(day)
        assert rows == [(itin_id(10 * d), 10), (itin_id(10 * d + 2), 10)]
    assert con.execute("SELECT count(*) FROM trips WHERE date >= DATE '2025-01-21' AND team_id = 'acme'"
                       ).fetchall() == [(4,)]
    assert con.execute("SELECT count(*) FROM trip_events WHERE date <= DATE '2025-01-21'").fetchall() == [(12,)]


def four_trips_then_a_deferred_deletion(data, itin: str) -> None:
    """Four trips of acme written straight to the log and compacted, then the deletion of
    ``itin`` in a later step (in the same step as its trip, the trip is never stored), left as
    position deletes (no rewrite budget, no ``apply_deletes``)."""
    import orjson

    from ingest.log import LogWriter
    from ingest.record import Kind
    w = LogWriter(data, 0)
    t0 = 1_750_000_000_000_000
    w.append([(Kind.TRIP, t0 + i, "acme", itin_id(i), orjson.dumps(trip(itin_id(i)))) for i in range(4)])
    compact(data)
    w.append([(Kind.EVENT, t0 + 10, "acme", f"{itin}:TRIP_DELETION", orjson.dumps(deletion(itin)))])
    w.close()
    compact(data, cow_rows=0, apply_deletes=False)


def test_position_deletes_on_an_s3_lake(s3, tmp_path, monkeypatch):  # noqa: F811
    """On S3 the files are ``s3://`` URIs: the small files' bitmaps must meet them by the name
    DuckDB gives them (a big file's bitmap needs no name: it is read alone)."""
    bucket = s3.bucket("pushlake-posdel")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PUSHLAKE_LAKE", f"s3://{bucket}/lake")
    data = tmp_path / "data"
    four_trips_then_a_deferred_deletion(data, itin_id(2))
    assert not list(data.rglob("*.parquet"))
    assert Catalog(data).db.execute("SELECT count(*) FROM deletes").fetchone()[0] == 3
    for con in (queries.connect(data), queries.connect(data, team="acme")):
        assert counts(con) == {"trips": 3, "trip_samples": 30, "trip_events": 9}
        assert counts(con, f"itin_id = '{itin_id(2)}'") == GONE
    with Compactor(data) as c:
        assert c.apply_deletes() == 3
    assert counts(queries.connect(data)) == {"trips": 3, "trip_samples": 30, "trip_events": 9}


def test_position_deletes_with_a_postgresql_catalog(postgres, tmp_path, monkeypatch):  # noqa: F811
    """The same SQL on PostgreSQL: deletes recorded, skipped, refused to a merge, applied."""
    monkeypatch.setenv("PUSHLAKE_CATALOG", postgres.fresh_database("posdel"))
    data = tmp_path / "data"
    four_trips_then_a_deferred_deletion(data, itin_id(1))
    cat = Catalog(data)
    assert cat.db.execute("SELECT count(*) FROM deletes").fetchone()[0] == 3
    assert counts(queries.connect(data)) == {"trips": 3, "trip_samples": 30, "trip_events": 9}
    with pytest.raises(CatalogConflict):
        cat.commit(Commit("merge", remove_files={min(cat.files_with_deletes_ids())}))
    with Compactor(data) as c:
        assert c.apply_deletes() == 3
    assert cat.db.execute("SELECT count(*) FROM deletes").fetchone()[0] == 0
    assert cat.db.execute("SELECT count(*) FROM tombstones WHERE applied_at IS NULL").fetchone()[0] == 0
    assert counts(queries.connect(data)) == {"trips": 3, "trip_samples": 30, "trip_events": 9}
    assert plain(data, itin_id(1)) == GONE


async def test_merges_wait_while_a_deletion_waits_for_its_step(pusher, data):
    """The merge thread yields the cores to the step that rewrites a deletion's files."""
    import threading
    await lake_of(pusher, data, 2)
    cat = Catalog(data)
    stop = threading.Event()
    assert not cat.deletion_waiting()
    assert Compactor._yield_to_deletions(cat, stop, most=0.0) is True
    await pusher.push("trip/event", deletion(itin_id(1)))  # published by the receiver, not projected
    assert cat.deletion_waiting()
    stop.set()
    assert Compactor._yield_to_deletions(cat, stop) is False  # a stopping compactor does not wait
    compact(data, apply_deletes=False)
    assert not cat.deletion_waiting()  # resolved (and here applied) by its step
