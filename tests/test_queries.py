"""Reading the lake: snapshots under compaction, team confinement, rebuild equals incremental."""
from __future__ import annotations

import threading

import duckdb
import orjson
import pytest

import queries
from ingest.log import LogWriter
from ingest.record import Kind
from lake.compactor import Compactor
from lake.rebuild import RebuildRefused, rebuild
from lake.schema import SCHEMAS
from tests.helpers import deletion, fixture_bytes, itin_id, trip

T0 = 1_750_000_000_000_000


def append(data, items):
    w = LogWriter(data, 0)
    w.append(items)
    w.close()


def trip_item(n: int, team: str = "acme", ts: int = 0, **kw):
    return (Kind.TRIP, T0 + ts, team, itin_id(n), orjson.dumps(trip(itin_id(n), **kw)))


def test_reader_keeps_a_consistent_view_while_compaction_runs(data):
    append(data, [trip_item(i) for i in range(10)])
    with Compactor(data, merge_min_files=3) as c:
        c.drain()
        con = queries.connect(data)
        errors: list[str] = []
        stop = threading.Event()

        def compactor():
            round_ = 0
            while not stop.is_set() and round_ < 40:
                round_ += 1
                # new trips and re-pushes of old ones: files are rewritten and merged under the reader
                append(data, [trip_item(100 + round_, ts=round_)] +
                       [trip_item(i, ts=round_, user=f"u{round_}") for i in range(round_ % 10, 10, 3)])
                c.step()
                c.merge_small_files()
            stop.set()

        t = threading.Thread(target=compactor)
        t.start()
        last = 0
        try:
            while not stop.is_set():
                n, bad = con.execute(
                    "SELECT (SELECT count(*) FROM trips), "
                    "(SELECT count(*) FROM trips t WHERE n_samples != "
                    " (SELECT count(*) FROM trip_samples s WHERE s.itin_id = t.itin_id))").fetchall()[0]
                dup = con.execute("SELECT count(*) - count(DISTINCT itin_id) FROM trips").fetchall()[0][0]
                if bad or dup:
                    errors.append(f"inconsistent snapshot: {bad} trips without their samples, {dup} doubles")
                if n < last:
                    errors.append(f"trip count went back from {last} to {n}")
                last = n
        finally:
            stop.set()
            t.join()
        assert not errors, errors[:3]
        assert con.execute("SELECT count(*) FROM trips").fetchall()[0][0] == 50


def test_a_statement_started_before_a_commit_finishes_on_its_snapshot(data):
    append(data, [trip_item(i) for i in range(5)])
    with Compactor(data) as c:
        c.drain()
        con = queries.connect(data)
        rel = con.execute("SELECT itin_id FROM trips ORDER BY 1")  # result pending
        append(data, [trip_item(i, ts=1, user="changed") for i in range(5)])
        c.drain()  # every file of the old snapshot is replaced (and kept for the retention)
        assert len(rel.fetchall()) == 5
        assert con.execute("SELECT DISTINCT user_id FROM trips").fetchall() == [("changed",)]


def test_a_statement_whose_file_was_vacuumed_runs_again_on_the_new_snapshot(data, monkeypatch):
    """With a short retention, vacuum can delete a file between a connection's check of the catalog
    and DuckDB opening it: the statement runs again on the snapshot that replaced the file."""
    from lake.catalog import Catalog
    append(data, [trip_item(i) for i in range(3)])
    with Compactor(data, retention_days=0) as c:
        c.drain()
        con = queries.connect(data)
        assert con.execute("SELECT count(*) FROM trips").fetchone() == (3,)
        # the reader misses the next commit, as one that raced with it would
        monkeypatch.setattr(Catalog, "data_version", lambda self: 1)
        con.execute("SELECT 1")
        append(data, [trip_item(i, ts=1, user="changed") for i in range(3)])
        c.drain()
        assert c.vacuum() > 0  # the files the connection still lists are gone
        for sql in ("SELECT DISTINCT user_id FROM trips", "SELECT DISTINCT user_id FROM trip_samples s "
                    "JOIN trips t USING (itin_id)"):
            assert con.execute(sql).fetchall() == [("changed",)], sql
            assert con.sql(sql).fetchall() == [("changed",)], sql


ESCAPES = [
    "SELECT * FROM read_parquet('{lake}/trips/team=globex/*/*.parquet')",
    "SELECT * FROM read_parquet('{lake}/trips/team=acme/../team=globex/*/*.parquet')",
    "SELECT * FROM read_parquet('{lake}/*/*/*/*.parquet')",
    "SELECT * FROM read_parquet('{lake}/trips/**/*.parquet')",
    "SELECT * FROM read_parquet('{link}/*/*.parquet')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('{lake}/**')",
    "COPY (SELECT 1) TO '{lake}/trips/team=acme/x.csv'",
    "COPY trips TO '/tmp/pushlake-escape.csv'",
    "ATTACH '{data}/catalog.db' AS c",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT getenv('HOME')",
    "SET enable_external_access = true",
    "SET VARIABLE pl_trips = ['{lake}/trips/team=globex/x.parquet']",
    "SELECT 1; SELECT * FROM read_parquet('{lake}/trips/team=globex/*/*.parquet')",
    "CREATE TABLE t AS SELECT 1",
    "DELETE FROM _pushlake_deleted",
]


@pytest.mark.parametrize("tree", ["lake", "files"])  # the public tree and the store: both hold every team
@pytest.mark.parametrize("sql", ESCAPES)
def test_a_team_connection_cannot_reach_other_teams_or_the_host(data, sql, tree, tmp_path):
    append(data, [trip_item(1, team="acme"), trip_item(2, team="globex")])
    with Compactor(data) as c:
        c.drain()
    link = tmp_path / "link"
    link.symlink_to(data / tree / "trips" / "team=globex")
    con = queries.connect(data, team="acme")
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(itin_id(1),)]
    q = sql.format(lake=data / tree, data=data, link=link)
    with pytest.raises((duckdb.Error, PermissionError)):
        rows = con.execute(q).fetchall()
        raise AssertionError(f"escape succeeded: {rows}")
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(itin_id(1),)]
    assert not (data / tree / "trips" / "team=acme" / "x.csv").exists()


def test_an_unrestricted_connection_sees_all_teams(data):
    append(data, [trip_item(1, team="acme"), trip_item(2, team="globex")])
    with Compactor(data) as c:
        c.drain()
    con = queries.connect(data)
    assert con.execute("SELECT team_id FROM trips ORDER BY 1").fetchall() == [("acme",), ("globex",)]


def test_empty_lake_has_every_view(data):
    con = queries.connect(data)
    for t in SCHEMAS:
        assert con.execute(f"SELECT count(*) FROM {t}").fetchall() == [(0,)]
    with pytest.raises(FileNotFoundError):
        queries.connect(data / "nope")


def _history(data):
    """A log with every situation: re-pushes, deletions in both orders, failures, other kinds."""
    items = []
    ts = 0
    for i in range(30):
        ts += 1
        items.append(trip_item(i, team="acme" if i % 2 else "globex", ts=ts, start=f"2025-01-{1 + i % 5:02d}T08:00:00.000+0000"))
    for i in range(0, 30, 4):  # re-pushes
        ts += 1
        items.append(trip_item(i, team="acme" if i % 2 else "globex", ts=ts, user="again"))
    for i in (3, 5, 99):  # deletions: after the trip, and before (99 comes later)
        ts += 1
        items.append((Kind.EVENT, T0 + ts, "acme", f"{itin_id(i)}:TRIP_DELETION", orjson.dumps(deletion(itin_id(i)))))
    ts += 1
    items.append(trip_item(99, team="acme", ts=ts))
    ts += 1
    items.append((Kind.TRIP, T0 + ts, "acme", "0c83a8ad9bb98ef71a0bd659", fixture_bytes("trip_odd_shape.json")))
    ts += 1
    items.append((Kind.CRASH, T0 + ts, "acme", "c7e7aaf7905721dc7d90b503", fixture_bytes("crash.json")))
    ts += 1
    items.append((Kind.DIAGNOSIS, T0 + ts, "globex", "driver-062814:x", fixture_bytes("diagnosis.json")))
    return items


def _dump(data):
    con = queries.connect(data)
    out = {t: sorted(map(repr, con.execute(f"SELECT * FROM {t}").fetchall())) for t in SCHEMAS}
    con.close()
    return out


def test_rebuild_equals_incremental(data, tmp_path):
    items = _history(data)
    with Compactor(data, batch_records=7, merge_min_files=3) as c:  # many small batches
        for k in range(0, len(items), 5):
            append(data, items[k:k + 5])
            c.step()
            if k % 15 == 0:
                c.merge_small_files()
        c.drain()
        failed_inc = sorted(f[1:8] for f in c.catalog.failed_items())
    incremental = _dump(data)
    assert len(incremental["trips"]) == 30 - 2  # 3 and 5 deleted, 99 deleted before it came
    assert len(failed_inc) == 1
    other = tmp_path / "rebuilt"
    rebuild(data, other)
    assert _dump(other) == incremental
    # in place, from the log alone
    rebuild(data)
    assert _dump(data) == incremental
    with Compactor(data) as c:
        assert sorted(f[1:8] for f in c.catalog.failed_items()) == failed_inc
    with pytest.raises(RebuildRefused):
        rebuild(data, other)  # not over an existing lake
