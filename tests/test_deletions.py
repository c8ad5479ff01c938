"""TRIP_DELETION: invisible from the ack in every view, winning in any order, then erased."""
from __future__ import annotations

import pytest

import queries
from lake.compactor import Compactor
from lake.erase import verify_erased
from tests.conftest import compact
from tests.helpers import deletion, itin_id, run_cli, trip

TRIP_VIEWS = ("trips", "trip_samples", "trip_events")


def visible(con, itin: str) -> dict[str, int]:
    return {v: con.execute(f"SELECT count(*) FROM {v} WHERE itin_id = ?", [itin]).fetchall()[0][0]
            for v in TRIP_VIEWS}


async def test_deletion_is_invisible_at_ack_before_any_compaction(pusher, data):
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    con = queries.connect(data)  # a connection opened before the deletion
    assert visible(con, itin_id(1)) == {"trips": 1, "trip_samples": 10, "trip_events": 3}
    status, _ = await pusher.push("trip/event", deletion(itin_id(1)))
    assert status == 200
    # no compaction has run: the tombstone alone hides the trip, in the old and in a new connection
    assert visible(con, itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}
    assert visible(queries.connect(data), itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}
    assert con.execute("SELECT count(*) FROM trips").fetchall() == [(2,)]
    assert con.execute("SELECT count(*) FROM trip_samples").fetchall() == [(20,)]
    # the other team-confined view too
    with queries.connect(data, team="acme") as t:
        assert visible(t, itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}
    # the compactor then rewrites the files without the trip
    stats, _ = compact(data)
    assert visible(con, itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}
    assert con.execute("SELECT count(*) FROM trips").fetchall() == [(2,)]
    assert con.execute("SELECT itin_id FROM trip_deletions").fetchall() == [(itin_id(1),)]


async def test_deletion_before_the_trip_wins(pusher, data):
    await pusher.push("trip/event", deletion(itin_id(5)))
    compact(data)
    await pusher.push("trip", trip(itin_id(5)))  # a late retry of the trip
    await pusher.push("trip", trip(itin_id(6)))
    stats, _ = compact(data)
    assert stats.deleted == 1
    con = queries.connect(data)
    assert visible(con, itin_id(5)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(itin_id(6),)]


async def test_deletion_and_trip_in_the_same_batch_in_either_order(pusher, data):
    await pusher.push("trip", trip(itin_id(1)))
    await pusher.push("trip/event", deletion(itin_id(1)))
    await pusher.push("trip/event", deletion(itin_id(2)))
    await pusher.push("trip", trip(itin_id(2)))
    await pusher.push("trip", trip(itin_id(3)))
    compact(data)
    con = queries.connect(data)
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(itin_id(3),)]
    assert con.execute("SELECT DISTINCT itin_id FROM trip_samples").fetchall() == [(itin_id(3),)]


async def test_repeated_deletion_is_idempotent(pusher, data):
    await pusher.push("trip", trip(itin_id(1)))
    compact(data)
    for _ in range(3):
        status, _ = await pusher.push("trip/event", deletion(itin_id(1)))
        assert status == 200
    compact(data)
    await pusher.push("trip/event", deletion(itin_id(1)))
    compact(data)
    con = queries.connect(data)
    assert con.execute("SELECT count(*) FROM trip_deletions").fetchall() == [(1,)]
    assert visible(con, itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}


async def test_deletion_is_per_team(make_pusher, acme, globex, data):
    a, g = await make_pusher(acme), await make_pusher(globex)
    await a.push("trip", trip(itin_id(1)))
    await g.push("trip", trip(itin_id(1)))
    compact(data)
    await g.push("trip/event", deletion(itin_id(1)))
    con = queries.connect(data)
    assert con.execute("SELECT team_id FROM trips").fetchall() == [("acme",)]
    compact(data)
    assert con.execute("SELECT team_id FROM trips").fetchall() == [("acme",)]


async def test_erasure_after_retention_zero_is_verified(pusher, data):
    victim, keep = itin_id(0xdead), itin_id(0xbeef)
    await pusher.push("trip", trip(victim))
    await pusher.push("trip", trip(keep))
    compact(data)
    await pusher.push("trip", trip(victim, user="re-push"))  # old file replaced: an old version lingers
    compact(data)
    await pusher.push("trip/event", deletion(victim))
    compact(data)  # default retention: rows gone from live files, old files and log still hold it
    findings, _ = verify_erased(data, victim)
    assert any("row(s) of the trip" in f for f in findings)
    assert any("trip record at offset" in f for f in findings)
    # the receiver still holds the last segment open: seal it, as a restart or age would
    await pusher.client.close()
    with Compactor(data, retention_days=0) as c:
        c.drain()
        m = c.maintain()
    assert m["vacuumed"] >= 1 and m["log_records_erased"] == 2
    findings, examined = verify_erased(data, victim)
    assert findings == [] and examined > 5
    # the CLI says so too, and the kept trip is intact
    out = run_cli("erase", "--verify", victim, data=data)
    assert "is erased" in out.stdout
    assert run_cli("erase", "--verify", keep, data=data, check=False).returncode == 1
    con = queries.connect(data)
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(keep,)]
    assert con.execute("SELECT count(*) FROM trip_samples").fetchall() == [(10,)]
    raw = b"".join(p.read_bytes() for p in data.rglob("*.log"))
    assert victim.encode() in raw  # its TRIP_DELETION record stays, as the audit trail
    assert keep.encode() in raw


async def test_erase_now_from_the_cli(pusher, data):
    victim = itin_id(77)
    await pusher.push("trip", trip(victim))
    await pusher.push("trip/event", deletion(victim))
    await pusher.client.close()
    out = run_cli("erase", victim, "--now", data=data)
    assert "is erased" in out.stdout, out.stdout


async def test_tombstones_of_the_uncompacted_tail_are_republished_on_start(pusher, data):
    """If an OS crash dropped a tombstone the receiver published (not fsynced), the restart
    publishes it again from the log before taking traffic."""
    import sqlite3

    from lake.receiver import ReceiverLake
    await pusher.push("trip", trip(itin_id(1)))
    compact(data)
    await pusher.push("trip/event", deletion(itin_id(1)))
    pending = sqlite3.connect(data / "pending.db", isolation_level=None)
    assert pending.execute("DELETE FROM deletions").rowcount == 1  # what an OS crash could leave behind
    pending.close()
    con = queries.connect(data)
    assert visible(con, itin_id(1))["trips"] == 1
    assert ReceiverLake(data).republish_tombstones("p0") == 1
    assert visible(con, itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}


def _append(data, items):
    from ingest.log import LogWriter
    w = LogWriter(data, 0)
    first = w.append(items)
    w.close()
    return first


def test_a_cleaned_log_tail_never_gives_offsets_back(data):
    """The cleaner may remove the last records of a partition; a receiver must not hand out
    their offsets again, or the compactor (already past them) would skip new pushes."""
    import orjson
    from ingest.record import Kind
    from lake.compactor import Compactor
    x, y = itin_id(1), itin_id(2)
    _append(data, [(Kind.EVENT, 1, "acme", f"{x}:TRIP_DELETION", orjson.dumps(deletion(x))),
                   (Kind.TRIP, 2, "acme", x, orjson.dumps(trip(x)))])   # a retry after the deletion: last record
    with Compactor(data, retention_days=0) as c:
        c.drain()
        assert c.maintain()["log_records_erased"] == 1
    assert _append(data, [(Kind.TRIP, 3, "acme", y, orjson.dumps(trip(y)))]) == 2  # not 1
    compact(data)
    assert queries.connect(data).execute("SELECT itin_id FROM trips").fetchall() == [(y,)]


def test_a_deleted_trip_pushed_again_after_cleaning_is_cleaned_again(data):
    import orjson
    from ingest.record import Kind
    from lake.compactor import Compactor
    x = itin_id(7)
    _append(data, [(Kind.TRIP, 1, "acme", x, orjson.dumps(trip(x))),
                   (Kind.EVENT, 2, "acme", f"{x}:TRIP_DELETION", orjson.dumps(deletion(x)))])
    with Compactor(data, retention_days=0) as c:
        c.drain()
        c.maintain()
    assert verify_erased(data, x)[0] == []
    _append(data, [(Kind.TRIP, 3, "acme", x, orjson.dumps(trip(x)))])  # DriveQuant retries for 30 days
    with Compactor(data, retention_days=0) as c:
        c.drain()
        assert any("trip record" in f for f in verify_erased(data, x)[0])
        c.maintain()
    assert verify_erased(data, x)[0] == []


@pytest.mark.parametrize("store", ["catalog", "pending.db"])
async def test_a_deletion_acked_while_a_step_moves_the_trip_still_hides_it(pusher, data, store):
    """A compaction step planned before the deletion arrived, that stores a new version of the
    trip in another partition, must not leave readers filtering the wrong files. In the catalog
    (PostgreSQL's receivers) the tombstone's partition moves with the trip; in pending.db (SQLite's)
    readers look the partition up in the snapshot they read."""
    from lake.catalog import Catalog
    from lake.pending import PendingDeletions
    await pusher.push("trip", trip(itin_id(1), start="2025-01-01T08:00:00.000+0000"))
    await pusher.push("trip", trip(itin_id(2), start="2025-01-05T08:00:00.000+0000"))
    compact(data)
    await pusher.push("trip", trip(itin_id(1), start="2025-01-05T09:00:00.000+0000"))  # moves to 01-05
    con = queries.connect(data)
    with Compactor(data) as c:
        real_commit = c.catalog.commit

        def commit_after_a_deletion_arrives(commit):
            receiver = Catalog(data) if store == "catalog" else PendingDeletions(data, writer=True)
            receiver.add_tombstones([("acme", itin_id(1), "p0", 10**6, 0)])  # what the receiver does at ack
            receiver.close()
            assert visible(con, itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}
            return real_commit(commit)
        c.catalog.commit = commit_after_a_deletion_arrives
        assert c.step().stored == 1
    # the new version landed in 2025-01-05, after the tombstone was recorded against 2025-01-01
    assert visible(con, itin_id(1)) == {"trips": 0, "trip_samples": 0, "trip_events": 0}
    assert visible(con, itin_id(2)) == {"trips": 1, "trip_samples": 10, "trip_events": 3}


def test_catalogs_made_before_tombstone_partitions_are_migrated(data):
    import sqlite3
    from lake.catalog import Catalog
    Catalog(data).close()
    db = sqlite3.connect(data / "catalog.db")
    db.executescript("""
        DROP TABLE tombstones;
        CREATE TABLE tombstones(team TEXT NOT NULL, itin_id TEXT NOT NULL, part TEXT, offset INTEGER,
          received_us INTEGER NOT NULL, applied_at REAL, log_cleaned INTEGER NOT NULL DEFAULT 0,
          PRIMARY KEY(team, itin_id)) WITHOUT ROWID;
        INSERT INTO versions VALUES (1, 'acme', 'trip-a', 0, 'p0', 0, 'h', '2025-01-03');
        INSERT INTO tombstones(team, itin_id, received_us) VALUES ('acme', 'trip-a', 0), ('acme', 'trip-b', 0);
    """)
    db.commit()
    db.close()
    with queries.connect(data) as con:  # a reader first: it migrates the catalog
        assert con.execute("SELECT count(*) FROM trips").fetchall() == [(0,)]
    db = sqlite3.connect(data / "catalog.db")
    assert db.execute("SELECT itin_id, date FROM tombstones ORDER BY 1").fetchall() == [
        ("trip-a", "2025-01-03"), ("trip-b", None)]
    assert {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'tombstones' AND type = 'index'")
            } >= {"tombstones_pending_at"}


def test_the_cleaner_reads_only_the_segments_that_hold_its_targets(data):
    """Each sealed segment gets an index of its trips (hashes, not ids); a cleaning run reads
    the indexes and scans only segments that hold a target, or whose index is missing or stale."""
    import orjson
    from ingest.log import LogWriter, list_segments
    from ingest.record import Kind
    from lake.cleaner import INDEX_SUFFIX, clean_log

    def push(w: LogWriter, kind: int, x: str) -> None:
        if kind == Kind.TRIP:
            w.append([(Kind.TRIP, 1, "acme", x, orjson.dumps(trip(x)))])
        else:
            w.append([(Kind.EVENT, 2, "acme", f"{x}:TRIP_DELETION", orjson.dumps(deletion(x)))])

    def clean() -> dict:
        stats: dict = {}
        with Compactor(data, retention_days=0) as c:
            c.drain()
            c.vacuum()
            clean_log(c.data_dir, c.catalog, float("inf"), stats)
        return stats

    w = LogWriter(data, 0, segment_bytes=1)  # one record per segment
    for i in range(6):
        push(w, Kind.TRIP, itin_id(i))
    push(w, Kind.EVENT, itin_id(1))
    w.close()
    segs = len(list_segments(data / "log" / "p0"))
    first = clean()
    # every segment indexed (one scan each), then the one holding trip 1 scanned and rewritten
    assert first == {"segments": segs, "scanned": segs + 1, "rewritten": 1}
    assert verify_erased(data, itin_id(1))[0] == []  # the indexes do not name the trip

    w = LogWriter(data, 0, segment_bytes=1)
    push(w, Kind.EVENT, itin_id(4))
    w.close()
    second = clean()
    # indexed again: the segment that was empty and now holds the deletion, and the new empty one
    # (a rewritten segment gets its new index from the rewrite); scanned for a target: trip 4's
    # segment, and no other
    assert len(list_segments(data / "log" / "p0")) == segs + 1
    assert second == {"segments": segs + 1, "scanned": 2 + 1, "rewritten": 1}
    assert verify_erased(data, itin_id(4))[0] == []

    # an index that does not belong to its segment (here: another segment's) is not trusted
    seg = {p.name: p for _, p in list_segments(data / "log" / "p0")}
    holder = next(p for p in seg.values() if itin_id(5).encode() in p.read_bytes())
    other = next(p for p in seg.values() if itin_id(2).encode() in p.read_bytes())
    (holder.parent / (holder.name + INDEX_SUFFIX)).write_bytes((other.parent / (other.name + INDEX_SUFFIX)).read_bytes())
    (seg[sorted(seg)[0]].parent / (sorted(seg)[0] + INDEX_SUFFIX)).write_bytes(b"torn")
    w = LogWriter(data, 0, segment_bytes=1)
    push(w, Kind.EVENT, itin_id(5))
    w.close()
    third = clean()
    assert third["rewritten"] == 1
    assert verify_erased(data, itin_id(5))[0] == []
