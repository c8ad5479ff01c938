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


def test_a_lake_without_pending_db_reads_as_nothing_pending(data):
    """A lake made before pending.db: nothing pending there, until a receiver creates the file,
    which a reader opened before then reads."""
    Catalog(data).close()
    for f in data.glob("pending.db*"):  # what an older release left
        f.unlink()
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


def test_a_trip_deleted_twice_counts_from_its_first_deletion(data):
    """Rows are appended (no unique key); the compactor and readers take a trip's first deletion."""
    cat, pending = Catalog(data), PendingDeletions(data, writer=True)
    pending.add_tombstones([("acme", "t1", "p0", 7, 70)])
    pending.add_tombstones([("acme", "t1", "p1", 3, 90), ("acme", "t2", "p1", 4, 91)])
    assert cat.deleted_among("acme", ["t1", "t2", "t3"]) == {"t1": Order(70, "p0", 7), "t2": Order(91, "p1", 4)}
    assert cat.read_state().tombstones == [TripRef("acme", "t1"), TripRef("acme", "t2")]
    assert pending.prune({"p1": 5}) == 2  # per partition: p0's row is not covered by p1's position
    assert [(r.itin_id, r.part) for r in pending.rows()] == [("t1", "p0")]
    pending.close()
    cat.close()


def wal_restarts(data) -> int:
    """The WAL header's checkpoint sequence number: one more at each restart of the WAL."""
    with open(data / "pending.db-wal", "rb") as f:
        return int.from_bytes(f.read(16)[12:16], "big")


def publish(store: PendingDeletions, data, wal_bytes: int) -> int:
    """Deletions, ten a commit as a receiver's batches, until ``wal_bytes`` of WAL were written."""
    written = n = 0
    while written < wal_bytes:
        before = (data / "pending.db-wal").stat().st_size if (data / "pending.db-wal").exists() else 0
        store.add_tombstones([("acme", f"t{n}.{k}", "p0", n * 10 + k, n) for k in range(10)])
        written += max((data / "pending.db-wal").stat().st_size - before, 4096)
        n += 1
    return n


def test_a_receivers_wal_stays_small(data):
    """SQLite's checkpoint after the commit that passes 4 MB: rows appended make it copy a few
    pages, and the WAL starts over instead of growing with every deletion."""
    receiver = PendingDeletions(data, writer=True)
    receiver.add_tombstones([("acme", "first", "p0", 0, 0)])
    before = wal_restarts(data)
    n = publish(receiver, data, 40 << 20)
    assert wal_restarts(data) > before
    assert (data / "pending.db-wal").stat().st_size < 8 << 20
    assert len(receiver.rows()) == n * 10 + 1
    receiver.close()


def test_odd_trip_ids_are_matched_through_json(data):
    """Readers and the compactor match pending trips in SQLite through a JSON array: ids with
    quotes, backslashes, newlines or characters beyond the BMP come back as they went in."""
    cat, pending = Catalog(data), PendingDeletions(data, writer=True)
    odd = ['a"b', "back\\slash", "new\nline", "émoji🚗", "[1]", ""]
    with cat.db.tx():
        cat.db.executemany('INSERT INTO versions(kind, team, key, received_us, part, "offset", body_sha256, date) '
                           "VALUES (?,?,?,?,?,?,?,?)",
                           [(Kind.TRIP, "acme", k, 1, "p0", n, "h", f"2025-01-{n + 1:02d}") for n, k in enumerate(odd)])
    pending.add_tombstones([("acme", k, "p0", 100 + n, 5) for n, k in enumerate(odd)])
    assert set(cat.deleted_among("acme", odd)) == set(odd)
    assert cat._trip_partitions([("acme", k) for k in odd]) == {("acme", f"2025-01-{n + 1:02d}") for n in range(len(odd))}
    assert cat.read_state(team="other").tombstones == []
    pending.close()
    cat.close()
