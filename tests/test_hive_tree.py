"""The public hive tree holds the live files only: what plain Parquet readers see is the views."""
from __future__ import annotations

import os
import shutil
import sqlite3

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import queries
from lake import hive, upgrade
from lake.compactor import Compactor
from tests.conftest import compact
from tests.helpers import deletion, itin_id, run_cli, trip


def plain(data, table: str = "trips") -> list[tuple]:
    """What stock DuckDB sees: a glob over the hive tree."""
    return duckdb.sql(f"SELECT count(*), count(DISTINCT itin_id) FROM read_parquet("
                      f"'{data}/lake/{table}/**/*.parquet', hive_partitioning = true)").fetchall()


def view(data, table: str = "trips") -> list[tuple]:
    with queries.connect(data) as con:
        return con.execute(f"SELECT count(*), count(DISTINCT itin_id) FROM {table}").fetchall()


async def test_replaced_and_deleted_files_leave_the_tree_at_their_commit(pusher, data):
    for i in range(4):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    assert plain(data) == view(data) == [(4, 4)]
    # a re-push with another body and a deletion: both copy-on-write the file
    await pusher.push("trip", trip(itin_id(1), user="driver-2"))
    await pusher.push("trip/event", deletion(itin_id(2)))
    compact(data)
    assert plain(data) == view(data) == [(3, 3)]
    assert plain(data, "trip_samples") == view(data, "trip_samples")
    # the replaced files wait out the retention in the store, outside the tree
    with queries.connect(data) as con:
        live = {p for (p,) in con.execute("SELECT unnest(getvariable('pl_trips'))").fetchall()}
    stored = {str(data / p) for p in hive.store_files(data) if p.startswith("files/trips/")}
    assert live < stored
    tree = {os.path.realpath(data / p) for p in hive.public_files(data) if p.startswith("lake/trips/")}
    assert len(tree) == len(live)
    # each link is the live file itself (one inode), not a copy
    for p in hive.public_files(data):
        s = data / ("files/" + p.split("/", 1)[1])
        assert os.path.samefile(data / p, s)
    # the file schema opens with pyarrow's hive discovery (no type clash on `date`)
    t = ds.dataset(data / "lake" / "trips", partitioning="hive").to_table()
    assert t.num_rows == 3 and t.schema.field("date").type == pa.string()


async def test_reconcile_repairs_a_tree_out_of_step(pusher, data):
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    links = [p for p in hive.public_files(data) if p.startswith("lake/trips/")]
    assert len(links) == 1
    stray = data / "lake/trips/team=acme/date=2025-01-20/part-stray.parquet"
    shutil.copy(data / links[0], stray)                           # a file that is not live
    assert plain(data) == [(6, 3)]
    (data / links[0]).unlink()                                    # a link lost (a crash before it)
    os.link(stray, data / "lake/trips/team=acme/date=2025-01-20/part-copy.parquet")
    check = run_cli("check", "--json", data=data).stdout
    assert "live file not in the hive tree" in check and "not live" in check
    with Compactor(data) as c:
        assert c.relinked == (1, 2)
    assert plain(data) == view(data) == [(3, 3)]
    assert not stray.exists()


async def test_a_lake_of_the_earlier_layout_is_upgraded_at_the_compactor_start(pusher, data):
    for i in range(5):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    await pusher.push("trip", trip(itin_id(0), user="driver-9"))   # one file replaced, kept for the retention
    compact(data)
    before = view(data)
    # rewind to layout 1: every file in lake/, `date` a DATE column, catalog paths there
    shutil.rmtree(data / "lake")
    db = sqlite3.connect(data / "catalog.db")
    for (rel,) in db.execute("SELECT path FROM files").fetchall():
        t = pq.read_table(data / rel)
        t = t.set_column(t.schema.get_field_index("date"), "date", t["date"].cast(pa.date32()))
        old = data / ("lake/" + rel.split("/", 1)[1])
        old.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, old)
        (data / rel).unlink()
        db.execute("UPDATE files SET path = ?, bytes = ? WHERE path = ?", (str(old.relative_to(data)),
                                                                          old.stat().st_size, rel))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    shutil.rmtree(data / "files")
    assert plain(data) != before  # the superseded version shows
    with Compactor(data) as c:
        assert upgrade.layout(c.catalog) == upgrade.LAYOUT
    assert view(data) == plain(data) == before
    assert not [p for p in (data / "lake").rglob("*.parquet") if p.stat().st_nlink != 2]
    assert ds.dataset(data / "lake" / "trips", partitioning="hive").count_rows() == before[0][0]
    assert '"ok": true' in run_cli("check", "--json", data=data).stdout
