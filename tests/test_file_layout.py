"""The lake's Parquet files: what maintenance makes of a partition's small files, how every file
is encoded (the sizes this buys, against DuckDB writing the same rows, are measured by
bench/files_bench.py), and copy-on-write holding one row group at a time."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import queries
from lake import files as lf
from lake import hive, maintenance
from lake.catalog import Catalog, Commit
from lake.compactor import Compactor
from lake.schema import FILE_SCHEMAS, SCHEMAS, TRIP_TABLES
from tests.helpers import itin_id, trip

TEAM, DATE = "acme", "2026-01-01"


def columns(meta: pq.FileMetaData) -> dict[str, pq.ColumnChunkMetaData]:
    return {meta.row_group(0).column(j).path_in_schema: meta.row_group(0).column(j) for j in range(meta.num_columns)}


async def test_a_quiet_partition_ends_as_one_file_with_dictionaries_and_full_row_groups(pusher, data):
    with Compactor(data) as c:  # merges once 8 files wait (the default)
        for i in range(3):
            assert (await pusher.push("trip", trip(itin_id(i))))[0] == 200
            c.step()
        assert {t: len(c.catalog.live_files(t)) for t in TRIP_TABLES} == {t: 3 for t in TRIP_TABLES}
        # a partition still written: three small files wait for more
        assert maintenance.merge_small_files(data, c.catalog) == 0
        # once it has been quiet for QUIET_S, they are merged whatever their number
        later = time.time() + maintenance.QUIET_S + 1
        assert maintenance.merge_small_files(data, c.catalog, now=later) == 9
        live = {t: c.catalog.live_files(t) for t in TRIP_TABLES}
    assert {t: len(v) for t, v in live.items()} == {t: 1 for t in TRIP_TABLES}
    with queries.connect(data) as con:
        assert con.execute("SELECT count(*), count(DISTINCT itin_id) FROM trips").fetchone() == (3, 3)
        assert con.execute("SELECT count(*) FROM trip_samples").fetchone() == (30,)

    for t, [f] in live.items():
        meta = pq.ParquetFile(data / f.path).metadata
        assert meta.num_row_groups == 1 and meta.num_rows == f.rows  # one full row group, not one per input
        assert b"ARROW:schema" not in (meta.metadata or {})  # 1.5-5.6 KB a file; the types read back alike:
        assert pq.read_table(data / f.path).schema.equals(FILE_SCHEMAS[t])
        assert lf.written_at(f.path) is not None and abs(lf.written_at(f.path) - time.time()) < 60
    samples = columns(pq.ParquetFile(data / live["trip_samples"][0].path).metadata)
    for name, col in samples.items():
        if name in ("ts", "seq"):
            assert not col.has_dictionary_page and "DELTA_BINARY_PACKED" in col.encodings, name
        else:  # sensor channels repeat few values: a dictionary stores them in a few bits
            assert col.has_dictionary_page and "RLE_DICTIONARY" in col.encodings, name
        assert col.statistics.has_min_max, name
    trips = columns(pq.ParquetFile(data / live["trips"][0].path).metadata)
    text = {f.name for f in FILE_SCHEMAS["trips"] if pa.types.is_string(f.type)}
    assert {n for n, col in trips.items() if col.has_dictionary_page} == text - {"itin_id"}  # date included
    assert not trips["extra"].is_stats_set or not trips["extra"].statistics.has_min_max  # no JSON copied twice
    assert trips["itin_id"].statistics.has_min_max and trips["start_date"].statistics.has_min_max


def tid(n: int) -> str:
    return f"{n:024d}"


def samples(n: int, first_trip: int = 0, per_trip: int = 100) -> pa.Table:
    """``n`` rows of trip_samples, ``per_trip`` rows per trip (ids ``tid(first_trip)`` on)."""
    s = SCHEMAS["trip_samples"]
    i = pa.array(range(n), pa.int64())
    trip_no = pc.add(pc.divide(i, per_trip), first_trip)
    cols = {f.name: pc.cast(pc.multiply(pc.cast(i, pa.float64()), 0.5), f.type) if pa.types.is_floating(f.type)
            else pc.cast(i, f.type) if pa.types.is_integer(f.type) else pa.nulls(n, f.type) for f in s}
    cols["team_id"], cols["date"] = pa.array([TEAM] * n), pa.array([20454] * n, pa.date32())
    cols["itin_id"] = pc.utf8_lpad(pc.cast(trip_no, pa.string()), 24, "0")
    return pa.table(cols, schema=s)


def add(data: Path, cat: Catalog, *tables: pa.Table) -> list[int]:
    c = Commit("test")
    c.add_files = [lf.write_file(data, "trip_samples", TEAM, DATE, t) for t in tables]
    hive.commit_and_publish(data, cat, c)
    return [f.id for f in cat.live_files("trip_samples") if f.path in {n.path for n in c.add_files}]


def test_a_big_file_is_not_rewritten_for_a_few_small_ones(data):
    """Merges take files of similar sizes (each at most GROWTH times the smaller ones together):
    8 small files are merged among themselves, beside a file far bigger than them all; the
    quiet partition then merges everything not full; a full file is never merged."""
    cat = Catalog(data)
    try:
        [big] = add(data, cat, samples(20_000))
        add(data, cat, *(samples(50, first_trip=1000 + k) for k in range(8)))
        assert maintenance.merge_small_files(data, cat) == 8
        live = {f.id: f for f in cat.live_files("trip_samples")}
        assert big in live and len(live) == 2 and sorted(f.rows for f in live.values()) == [400, 20_000]
        assert maintenance.merge_small_files(data, cat) == 0  # nothing left of similar sizes
        later = time.time() + maintenance.QUIET_S + 1
        # with a budget that makes the big file full (at least half of it), it stays as it is
        assert maintenance.merge_small_files(data, cat, budget_bytes=live[big].bytes, now=later) == 0
        assert maintenance.merge_small_files(data, cat, now=later) == 2
        [merged] = cat.live_files("trip_samples")
        assert merged.rows == 20_400 and pq.ParquetFile(data / merged.path).metadata.num_row_groups == 1
    finally:
        cat.close()


def test_copy_on_write_keeps_other_rows_and_writes_nothing_when_none_are_left(data):
    cat = Catalog(data)
    try:
        [fid] = add(data, cat, samples(300))  # trips 0, 1, 2
        [f] = cat.live_files("trip_samples")
        key = lambda n: pa.array([tid(n)], pa.string())  # noqa: E731
        assert lf.rewrite_without(data, "trip_samples", TEAM, DATE, f.path, key(7)) == (False, None)
        touched, new = lf.rewrite_without(data, "trip_samples", TEAM, DATE, f.path, key(1))
        assert touched and new.rows == 200 and new.path != f.path
        t = pq.read_table(data / new.path)
        assert pc.unique(t["itin_id"]).to_pylist() == [tid(0), tid(2)]
        assert t["seq"].to_pylist() == list(range(100)) + list(range(200, 300))  # order kept
        before = set((data / "files").rglob("*.parquet"))
        everything = pa.array([tid(n) for n in range(3)], pa.string())
        assert lf.rewrite_without(data, "trip_samples", TEAM, DATE, f.path, everything) == (True, None)
        assert set((data / "files").rglob("*.parquet")) == before  # no empty file left behind
    finally:
        cat.close()


def test_copy_on_write_memory_stays_near_one_row_group(tmp_path):
    """Merged files hold millions of rows: a copy-on-write reads them a row group at a time and
    writes full row groups.
    Reading this file whole peaks at 236 MB, then its filtered copy adds as much; streamed, the
    rewrite peaks at 173 MB (a row group read alone already peaks at 123 MB). In a child
    process, whose Arrow pool peak is the rewrite's own."""
    t = samples(1_200_000, per_trip=2000)
    path = lf.write_file(tmp_path, "trip_samples", TEAM, DATE, t).path
    rewrite = f"""
import pyarrow as pa
from lake import files as lf
touched, new = lf.rewrite_without({str(tmp_path)!r}, "trip_samples", {TEAM!r}, {DATE!r}, {path!r},
                                  pa.array([{tid(300)!r}]))
print(new.rows, pa.default_memory_pool().max_memory(), new.path)
"""
    rows, peak, new = subprocess.run([sys.executable, "-c", rewrite], capture_output=True, text=True,
                                     check=True).stdout.split()
    assert int(rows) == 1_198_000
    assert int(peak) < t.nbytes, (peak, t.nbytes)  # 202 MB in Arrow
    # the row group that lost rows is topped up from the next: full row groups, the last one short
    meta = pq.ParquetFile(tmp_path / new).metadata
    g = lf.ROW_GROUP_ROWS
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [g] * 4 + [1_198_000 - 4 * g]


def test_file_names_carry_the_time_they_were_written():
    t = 1_767_225_600.5
    name = f"files/trips/team=acme/date=2026-01-01/part-{lf._file_id(t)}.parquet"
    assert lf.written_at(name) == 1_767_225_600.5  # to the millisecond
    assert len(lf._file_id(t)) == 32 and lf._file_id(t) != lf._file_id(t)  # random beyond the time
    assert lf._file_id(t) < lf._file_id(t + 0.002) < lf._file_id(t + 3600)  # names sort by age
    # names of earlier versions (UUID4) carry no time: the merge treats them as old
    assert lf.written_at("files/trips/team=acme/date=2026-01-01/part-0c4f3b2a9d8e4f6a8b7c6d5e4f3a2b1c.parquet") is None
    assert lf.written_at("files/trips/team=acme/date=2026-01-01/part-stray.parquet") is None
