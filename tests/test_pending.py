"""pending.db (SQLite lakes): receivers acknowledge deletions without the catalog's write lock,
every reader sees them from the 200, and a commit that covers them prunes them."""
from __future__ import annotations

import asyncio
import sqlite3
import time

import queries
from ingest.record import Kind
from lake.catalog import Catalog, Order, TripRef
from lake.pending import PendingDeletions
from tests.conftest import compact
from tests.helpers import deletion, itin_id, trip

GONE = {"trips": 0, "trip_samples": 0, "trip_events": 0}


def visible(con, itin: str) -> dict[str, int]:
    return {v: con.execute(f"SELECT count(*) FROM {v} WHERE itin_id = ?", [itin]).fetchall()[0][0] for v in GONE}


async def test_a_deletion_is_acknowledged_while_the_compactor_holds_the_catalog(pusher, data):
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    con = queries.connect(data)
    assert visible(con, itin_id(1)) == {"trips": 1, "trip_samples": 10, "trip_events": 3}
    commit = sqlite3.connect(data / "catalog.db", isolation_level=None)
    commit.execute("BEGIN IMMEDIATE")  # a compactor's commit in progress, holding the write lock
    try:
        # (before pending.db the ack waited for the lock: 503 once the publication timed out)
        status, _ = await asyncio.wait_for(pusher.push("trip/event", deletion(itin_id(1))), 10)
        assert status == 200
        assert visible(con, itin_id(1)) == GONE
        assert visible(queries.connect(data), itin_id(1)) == GONE
        with queries.connect(data, team="acme") as t:
            assert visible(t, itin_id(1)) == GONE
    finally:
        commit.execute("ROLLBACK")
        commit.close()
    pending = PendingDeletions(data)
    assert [(r.team, r.itin_id) for r in pending.rows()] == [("acme", itin_id(1))]
    compact(data)
    assert pending.rows() == []  # the step's commit holds the tombstone now: pruned
    assert visible(con, itin_id(1)) == GONE
    assert con.execute("SELECT count(*) FROM trips").fetchall() == [(2,)]
    pending.close()


async def test_readers_skip_rows_a_commit_covers_and_read_the_others(pusher, data):
    """A row whose offset the catalog's position has passed is in the catalog already (a prune
    that failed leaves such rows): it is not filtered again; an uncovered one is."""
    await pusher.push("trip", trip(itin_id(1)))
    await pusher.push("trip", trip(itin_id(2)))
    compact(data)
    cat, pending = Catalog(data), PendingDeletions(data, writer=True)
    at = cat.positions()["p0"]
    assert at == 2
    pending.add_tombstones([("acme", itin_id(1), "p0", at - 1, 5)])  # covered (and not true: readers trust the catalog)
    reader = Catalog(data, readonly=True)
    st = reader.read_state()
    assert st.tombstones == [] and st.dirty == set()
    before = reader.data_version()
    pending.add_tombstones([("acme", itin_id(2), "p0", at, 6)])
    assert reader.data_version() != before  # a reader's cache learns of it
    st = reader.read_state()
    assert st.tombstones == [TripRef("acme", itin_id(2))]
    assert st.dirty == {f.id for f in st.files if f.tbl in ("trips", "trip_samples", "trip_events")}
    assert reader.read_state(team="other").tombstones == []
    assert cat.health_counts() == (0, 1)
    assert cat.deleted_among("acme", [itin_id(1), itin_id(2), itin_id(3)]) == {
        itin_id(1): Order(5, "p0", at - 1), itin_id(2): Order(6, "p0", at)}
    assert cat.pending.prune({"p0": at + 1}) == 2
    assert reader.read_state().tombstones == [] and cat.health_counts() == (0, 0)
    for c in (reader, cat, pending):
        c.close()


def test_a_lake_without_pending_db_reads_as_none_pending(data):
    """A lake made before pending.db (or a reader opened before any deletion): nothing pending
    there, until a receiver creates the file, which the reader then reads."""
    Catalog(data).close()
    reader = Catalog(data, readonly=True)
    assert not (data / "pending.db").exists()
    assert reader.read_state().tombstones == [] and not reader.deletion_waiting()
    v = reader.data_version()
    pending = PendingDeletions(data, writer=True)
    pending.add_tombstones([("acme", "t1", "p0", 0, int(time.time() * 1e6))])
    assert reader.data_version() != v
    assert reader.read_state().tombstones == [TripRef("acme", "t1")]
    assert reader.deletion_waiting()  # the compactor's merges yield to it
    assert reader.versions_of(Kind.TRIP, "acme", ["t1"]) == {}
    pending.close()
    reader.close()


def test_the_first_deletion_of_a_trip_stays(data):
    pending = PendingDeletions(data, writer=True)
    pending.add_tombstones([("acme", "t1", "p0", 7, 70)])
    pending.add_tombstones([("acme", "t1", "p1", 3, 90), ("acme", "t2", "p1", 4, 91)])
    assert sorted((r.itin_id, r.part, r.offset) for r in pending.rows()) == [("t1", "p0", 7), ("t2", "p1", 4)]
    assert pending.prune({"p1": 5}) == 1  # per partition: p0's row is not covered by p1's position
    assert [r.itin_id for r in pending.rows()] == ["t1"]
    pending.close()
