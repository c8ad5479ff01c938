"""The lake's storage (lake/storage.py) in a data directory and on S3 (a real moto_server): the same
relative paths, the same results, and on S3 no folder markers, server-side copies for the public
tree and a read-only filesystem for DuckDB."""
from __future__ import annotations

import datetime as dt
import os
import time
import uuid

import duckdb
import pyarrow as pa
import pytest

from lake import files as lf
from lake import hive, maintenance
from lake.catalog import Catalog, Commit
from lake.compactor import Compactor
from lake.erase import verify_erased
from lake.schema import SCHEMAS
from lake.storage import open_storage, parse_s3_url
from tests.conftest import compact
from tests.helpers import deletion, itin_id, trip

REL = "files/trips/team=acme/date=2025-01-20/part-{}.parquet"


def _in_bucket(server, data, monkeypatch):
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    bucket = server.bucket(f"lake-{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("PUSHLAKE_LAKE", f"s3://{bucket}/pre/fix")
    return data, open_storage(data)


@pytest.fixture(params=["local", "s3"])
def lake(request, data, monkeypatch):
    """(data directory, storage): the lake under the data directory, or in a fresh bucket."""
    monkeypatch.delenv("PUSHLAKE_CATALOG", raising=False)
    if request.param == "local":
        monkeypatch.delenv("PUSHLAKE_LAKE", raising=False)
        return data, open_storage(data)
    return _in_bucket(request.getfixturevalue("s3"), data, monkeypatch)


@pytest.fixture
def s3_lake(s3, data, monkeypatch):  # noqa: F811
    """The lake in a fresh bucket (``s3://<bucket>/pre/fix``), the catalog embedded in --data."""
    monkeypatch.delenv("PUSHLAKE_CATALOG", raising=False)
    return _in_bucket(s3, data, monkeypatch)


def keys(st) -> list[str]:
    """Every object of the lake's bucket, markers included (what a plain S3 listing shows)."""
    c = _client(st)
    return sorted(o["Key"] for o in c.list_objects_v2(Bucket=st.bucket).get("Contents", []))


def _client(st):
    import boto3
    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def trips(*itins: str) -> pa.Table:
    rows = [dict.fromkeys(SCHEMAS["trips"].names) | {"team_id": "acme", "itin_id": i, "log_part": "p0",
                                                       "log_offset": n, "date": dt.date(2025, 1, 20)}
            for n, i in enumerate(itins)]
    return pa.Table.from_pylist(rows, schema=SCHEMAS["trips"])


def test_write_read_size_exists_list_delete(lake):
    data, st = lake
    t = pa.table({"itin_id": ["a", "b", "c"]})
    a, b = REL.format("a"), REL.format("b")
    n = st.write_table(a, t, compression="zstd")
    assert n == st.size(a) > 0
    with st.writer(b, t.schema, compression="zstd") as w:
        w.write_table(t)
    assert st.read_table(b, columns=["itin_id"]).equals(t)
    with st.parquet_file(a) as f:
        assert f.metadata.num_rows == 3
    assert st.exists(a) and not st.exists(REL.format("nope"))
    assert abs(st.mtime(a) - time.time()) < 120
    assert sorted(st.list_parquet("files")) == sorted([a, b])
    assert st.list_parquet("lake") == []
    assert st.uri(a).endswith("/" + a) and st.uri(a).startswith(st.root_uri())
    if st.local:
        assert st.uri(a) == str(data.absolute() / a) and oct(os.stat(st.uri(a)).st_mode & 0o777) == "0o600"
        assert oct(os.stat(data / "files/trips/team=acme").st_mode & 0o777) == "0o700"
    else:
        assert st.uri(a) == f"s3://{st.bucket}/pre/fix/{a}"
    st.delete([a, REL.format("missing")])   # a missing file is fine
    assert not st.exists(a) and st.list_parquet("files") == [b]
    with pytest.raises(FileNotFoundError):
        st.size(a)


def test_a_writer_that_fails_leaves_no_file(lake):
    _, st = lake
    t = pa.table({"itin_id": ["a"]})
    with pytest.raises(RuntimeError):
        with st.writer(REL.format("x"), t.schema) as w:
            w.write_table(t)
            raise RuntimeError("boom")
    assert not st.exists(REL.format("x")) and st.list_parquet("files") == []


def test_publish_unpublish_and_same_object(lake):
    _, st = lake
    t = pa.table({"itin_id": ["a"]})
    a, b = REL.format("a"), REL.format("b")
    st.write_table(a, t)
    st.write_table(b, pa.table({"itin_id": ["b", "bb"]}))
    pa_, pb = hive.public_path(a), hive.public_path(b)
    assert st.publish(a, pa_)
    assert st.same_object(a, pa_) and st.exists(pa_)
    assert st.publish_many([(b, pb)]) == 1
    assert st.same_objects([(a, pa_), (b, pb), (a, pb)]) == [True, True, False]
    assert st.read_table(pb).equals(st.read_table(b))
    assert st.unpublish(pa_)
    assert not st.exists(pa_) and st.exists(a)     # the store's file stays
    assert st.list_parquet("lake") == [pb]
    # the source vanished (vacuumed by another node meanwhile): nothing published, no error locally on S3
    st.delete([b, pb])
    if st.local:
        with pytest.raises(FileNotFoundError):
            st.publish(b, pb)
    else:
        assert st.publish(b, pb) is False
    assert st.list_parquet("lake") == []


def test_reconcile_repairs_the_public_tree_after_a_crash(lake):
    data, st = lake
    cat = Catalog(data, url="")
    try:
        files = [lf.write_file(data, "trips", "acme", "2025-01-20", trips(f"t{i}")) for i in range(3)]
        hive.commit_and_publish(data, cat, Commit("append", add_files=files))
        public = sorted(hive.public_files(data))
        assert public == sorted(hive.public_path(f.path) for f in files)
        # a crash between a commit and its links: one public copy missing, a stray one present,
        # and one that is not the live file (another file's bytes under its name)
        st.unpublish(public[0])
        stray = "lake/trips/team=acme/date=2025-01-20/part-stray.parquet"
        st.publish(files[1].path, stray)
        wrong = public[2]
        st.unpublish(wrong)
        st.write_table(wrong, trips("x", "y", "z"))
        assert not st.same_object(files[2].path, wrong)
        assert hive.reconcile(data, cat) == (2, 1)
        assert sorted(hive.public_files(data)) == public
        assert all(st.same_objects([(f.path, hive.public_path(f.path)) for f in files]))
        assert hive.reconcile(data, cat) == (0, 0)
        if not st.local:
            assert not [k for k in keys(st) if k.endswith("/")]
    finally:
        cat.close()


def test_deletes_leave_no_folder_markers(s3_lake):
    data, st = s3_lake
    rels = [REL.format(i) for i in range(3)] + ["files/crashes/team=acme/date=2025-01-20/part-c.parquet"]
    for r in rels:
        st.write_table(r, pa.table({"x": [1]}))
        st.publish(r, hive.public_path(r))
    assert len(keys(st)) == 8
    st.unpublish_many([hive.public_path(r) for r in rels])
    st.delete(rels)
    assert keys(st) == []       # no "folder" objects where the prefixes became empty
    assert st.list_files() == []


def test_bad_lake_urls_are_refused():
    for bad in ("s3://", "s3:///prefix", "gs://bucket/p", "s3://bucket/a//b", "s3://bucket/../x"):
        with pytest.raises(ValueError, match="invalid lake URL"):
            parse_s3_url(bad)
    assert parse_s3_url("s3://bucket/") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")


def test_the_duckdb_filesystem_reads_and_refuses_every_write(s3_lake):
    data, st = s3_lake
    a = REL.format("a")
    st.write_table(a, pa.table({"itin_id": ["a", "b"]}))
    before = keys(st)
    fs = st.duckdb_filesystem()
    path = st.fs_path(a)
    refused = [lambda: fs.open(st.fs_path("files/x"), "wb"), lambda: fs.open(path, "ab"),
               lambda: fs.rm(path), lambda: fs.rm_file(path), lambda: fs.pipe_file(path, b"x"),
               lambda: fs.touch(st.fs_path("files/t")), lambda: fs.cp_file(path, path + "2"),
               lambda: fs.copy(path, path + "2"), lambda: fs.mv(path, path + "2"),
               lambda: fs.put_file(__file__, path), lambda: fs.mkdir(f"{st.bucket}/d"),
               lambda: fs.makedirs(f"{st.bucket}/d"),
               lambda: fs.call_s3("delete_object", Bucket=st.bucket, Key=st.key(a)),
               lambda: fs.call_s3("put_object", Bucket=st.bucket, Key="evil", Body=b"x")]
    for op in refused:
        with pytest.raises(PermissionError, match="read-only"):
            op()
    assert fs.cat_file(path)[:4] == b"PAR1"
    con = duckdb.connect()
    con.register_filesystem(fs)
    assert con.execute(f"SELECT count(*) FROM read_parquet('{st.uri(a)}')").fetchone() == (2,)
    with pytest.raises(duckdb.Error, match="read-only"):
        con.execute(f"COPY (SELECT 1 AS x) TO '{st.uri('files/evil.parquet')}'")
    assert keys(st) == before
    assert open_storage(data).duckdb_filesystem(read_only=False) is not None


@pytest.mark.parametrize("shared", [False, True])
def test_orphans_of_other_nodes_are_kept_within_the_grace(lake, monkeypatch, shared):
    data, st = lake
    cat = Catalog(data, url="")
    try:
        committed = lf.write_file(data, "trips", "acme", "2025-01-20", trips("a"))
        cat.commit(Commit("append", add_files=[committed]))
        orphan = lf.write_file(data, "trips", "acme", "2025-01-20", trips("b"))
        if shared:  # several nodes on one catalog: the orphan may be another node's, not committed yet
            monkeypatch.setenv("PUSHLAKE_CATALOG", "postgresql://nobody@127.0.0.1:1/none")
            assert maintenance.remove_orphans(data, cat) == 0
            assert st.exists(orphan.path)
            later = time.time() + maintenance.ORPHAN_GRACE_S + 60
            assert maintenance.remove_orphans(data, cat, now=later) == 1
        else:
            assert maintenance.remove_orphans(data, cat) == 1
        assert not st.exists(orphan.path) and st.exists(committed.path)
    finally:
        cat.close()


async def _compacted_then_deleted(pusher, data, st) -> list[str]:
    """Four trips compacted into the bucket, then one deleted (copy-on-write); the store's trips
    files before the deletion."""
    for i in range(4):
        assert (await pusher.push("trip", trip(itin_id(i))))[0] == 200
    _, failed = compact(data)
    assert not failed
    store, public = st.list_parquet("files"), st.list_parquet("lake")
    assert store and sorted(hive.public_path(p) for p in store) == sorted(public)
    assert not (data / "files").exists() and not (data / "lake").exists()   # nothing under --data
    every = keys(st)
    assert all(k.startswith(("pre/fix/files/", "pre/fix/lake/", "pre/fix/iceberg/")) for k in every)
    assert not [k for k in every if k.endswith("/")]
    trips_before = [p for p in store if p.startswith("files/trips/")]
    # a deletion rewrites the trips file (copy-on-write) and removes the public copy of the old one
    assert (await pusher.push("trip/event", deletion(itin_id(2))))[0] == 200
    compact(data)
    public = st.list_parquet("lake")
    assert not {hive.public_path(p) for p in trips_before} & set(public)
    new_trips = [p for p in public if p.startswith("lake/trips/")]
    assert len(new_trips) == 1
    left = st.read_table(new_trips[0], columns=["itin_id"])["itin_id"].to_pylist()
    assert sorted(left) == [itin_id(0), itin_id(1), itin_id(3)]
    # the replaced file waits out the retention in the store
    assert set(trips_before) <= set(st.list_parquet("files"))
    # a plain reader's glob over the public tree sees the live rows only
    con = duckdb.connect()
    con.register_filesystem(st.duckdb_filesystem())
    assert con.execute(f"SELECT count(*), count(DISTINCT itin_id) FROM read_parquet("
                       f"'{st.uri('lake/trips')}/**/*.parquet', hive_partitioning = true)").fetchone() == (3, 3)
    return trips_before


async def test_the_compactor_on_s3_end_to_end(pusher, s3_lake):
    data, st = s3_lake
    trips_before = await _compacted_then_deleted(pusher, data, st)
    # erase --verify reads the objects: the replaced file still holds the erased trip
    findings, examined = verify_erased(data, itin_id(2))
    assert examined >= len(keys(st))
    on_s3 = [f for f in findings if f.startswith("s3://")]
    assert f"{st.uri(trips_before[0])}: 1 row(s) of the trip" in on_s3
    assert all(f.startswith(st.uri("files/")) for f in on_s3)   # the public tree holds none of it
    # a restart finds the tree in step with the catalog and no orphans; `check` agrees
    with Compactor(data) as c:
        assert c.relinked == (0, 0) and c.orphans_removed == 0
    from lake.check import check
    rep = check(data)
    assert rep.ok and not [w for w in rep.warnings if "hive tree" in w or "orphan" in w], rep


async def test_vacuum_on_s3_deletes_the_replaced_objects(pusher, s3_lake):
    data, st = s3_lake
    trips_before = await _compacted_then_deleted(pusher, data, st)
    with Compactor(data) as c:
        assert maintenance.vacuum(data, c.catalog, retention_s=0) >= 1
    assert not set(trips_before) & set(st.list_parquet("files"))
    findings, _ = verify_erased(data, itin_id(2))
    assert not [f for f in findings if f.startswith("s3://")]
    assert not [k for k in keys(st) if k.endswith("/")]


async def test_a_step_that_fails_before_its_commit_leaves_no_object(pusher, s3_lake, monkeypatch):
    from pushlake import failpoints
    data, st = s3_lake
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i), start=f"2025-01-0{1 + i}T08:00:00.000+0000"))
    monkeypatch.setitem(failpoints._ACTIVE, "compactor.before_commit", "eio")
    with Compactor(data) as c:
        with pytest.raises(OSError, match="injected"):
            c.step()
        assert c.catalog.live_files() == []
    assert keys(st) == []      # the files written for the step were deleted with it
    monkeypatch.delitem(failpoints._ACTIVE, "compactor.before_commit")
    stats, _ = compact(data)
    assert stats.stored == 3 and len(st.list_parquet("lake")) == len(st.list_parquet("files")) > 0


def test_check_reads_the_objects_of_an_s3_lake(s3_lake):
    from lake.check import check
    data, st = s3_lake
    cat = Catalog(data, url="")
    try:
        files = [lf.write_file(data, "trips", "acme", "2025-01-20", trips(f"t{i}")) for i in range(2)]
        hive.commit_and_publish(data, cat, Commit("append", add_files=files))
    finally:
        cat.close()
    rep = check(data)
    assert rep.ok and rep.info["live_files"] == 2 and rep.info["rows"] == {"trips": 2}
    st.delete([files[0].path])                       # an object lost from the bucket
    st.write_table("files/trips/team=acme/date=2025-01-20/part-orphan.parquet", trips("o"))
    rep = check(data)
    assert rep.errors == [f"catalog file missing in {st.url}: {files[0].path}"]
    assert any("orphan" in w and "part-orphan" in w for w in rep.warnings)


async def test_rebuild_of_an_s3_lake_only_into_an_empty_prefix(pusher, s3_lake, monkeypatch, tmp_path):
    from lake.rebuild import RebuildRefused, rebuild
    data, st = s3_lake
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    before = sorted(keys(st))
    with pytest.raises(RebuildRefused, match="not rebuilt in place"):
        rebuild(data)
    with pytest.raises(RebuildRefused, match="empty --lake prefix"):
        rebuild(data, into=tmp_path / "new")       # the same (non-empty) lake
    assert sorted(keys(st)) == before and not (tmp_path / "new" / "catalog.db").exists()
    monkeypatch.setenv("PUSHLAKE_LAKE", f"{st.url}-rebuilt")
    stats = rebuild(data, into=tmp_path / "new")
    assert stats.stored == 3
    new = open_storage(tmp_path / "new")
    assert new.url == f"{st.url}-rebuilt" and len(new.list_parquet("lake")) == len(st.list_parquet("lake"))


async def test_rebuild_with_a_shared_catalog_only_into_an_empty_database(pusher, s3_lake, postgres,  # noqa: F811
                                                                          monkeypatch, tmp_path):
    from lake.rebuild import RebuildRefused, rebuild
    data, st = s3_lake
    for i in range(2):
        await pusher.push("trip", trip(itin_id(i)))
    url = postgres.fresh_database("storage_rebuild")
    monkeypatch.setenv("PUSHLAKE_CATALOG", url)
    monkeypatch.setenv("PUSHLAKE_NODE", "")  # the log was written with no node name
    with pytest.raises(RebuildRefused, match="shared catalog"):
        rebuild(data)
    assert rebuild(data, into=tmp_path / "one").stored == 2
    assert len(st.list_parquet("lake")) > 0
    monkeypatch.setenv("PUSHLAKE_LAKE", f"{st.url}-again")
    with pytest.raises(RebuildRefused, match="catalog already holds a lake"):
        rebuild(data, into=tmp_path / "two")
    assert open_storage(tmp_path / "two").list_files() == []
