"""The Iceberg mirror (lake/iceberg.py): real lake, real catalog, real pyiceberg.

Each Iceberg table, read through ``load_catalog("pushlake", **props)``, must hold exactly the
rows of its view; a lake commit that replaces files must become a removal and an addition;
nothing of an erased trip may stay under ``<data>/iceberg``.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.compute as pc
from pyiceberg.catalog import load_catalog
from pyiceberg.exceptions import NoSuchTableError

import queries
from lake.catalog import Catalog
from lake.compactor import Compactor
from lake.erase import verify_erased
from lake.iceberg import MIRRORED, NAME, Mirror, _current_files, mirror_loop, properties
from lake.schema import TABLES
from tests.conftest import compact
from tests.helpers import deletion, fixture, fixture_bytes, itin_id, run_cli, trip

KEYS = {"trips": ("itin_id",), "trip_samples": ("itin_id", "seq"), "trip_events": ("itin_id", "event_type", "seq"),
        "crashes": ("crash_id",), "diagnoses": ("body_sha256",), "trip_deletions": ("itin_id",)}


def iceberg_rows(data: Path, tbl: str, snapshot_id: int | None = None) -> list[tuple]:
    """(team, date, key...) of every row of the Iceberg table, through a catalog loaded as a user would."""
    t = load_catalog(NAME, **properties(data)).load_table((NAME, tbl)).scan(snapshot_id=snapshot_id).to_arrow()
    cols = [t[c].to_pylist() for c in ("team_id", "date", *KEYS[tbl])]
    return sorted(zip(*cols))


def view_rows(data: Path, tbl: str) -> list[tuple]:
    with queries.connect(data) as con:
        rows = con.execute(f"SELECT team_id, CAST(date AS VARCHAR), {', '.join(KEYS[tbl])} FROM {tbl}").fetchall()
    return sorted(rows)


def assert_mirrors_the_views(data: Path) -> None:
    for tbl in TABLES:
        assert iceberg_rows(data, tbl) == view_rows(data, tbl), tbl
    ice = load_catalog(NAME, **properties(data)).load_table((NAME, "trips")).scan().to_arrow()
    with queries.connect(data) as con:
        assert pc.sum(ice["distance_m"]).as_py() == con.execute("SELECT sum(distance_m) FROM trips").fetchone()[0]


def sync(data: Path) -> int:
    with Mirror(data) as m:
        cat = Catalog(data, readonly=True)
        try:
            return m.sync(cat)
        finally:
            cat.close()


def iceberg_paths(data: Path, tbl: str) -> set[str]:
    tb = load_catalog(NAME, **properties(data)).load_table((NAME, tbl))
    return set(_current_files(tb))


def live_paths(data: Path, tbl: str) -> set[str]:
    cat = Catalog(data, readonly=True)
    try:
        return {f"file://{data.resolve() / f.path}" for f in cat.live_files(tbl)}
    finally:
        cat.close()


async def build_lake(make_pusher, acme, globex, data: Path) -> str:
    """Two teams, re-pushes, a crash re-pushed, diagnoses, and a deleted trip (copy-on-write
    applied). Returns the deleted trip's id."""
    a, g = await make_pusher(acme), await make_pusher(globex)
    for i in range(4):
        await a.push("trip", trip(itin_id(i), user="first"))
    await g.push("trip", trip(itin_id(10), start="2025-01-21T08:00:00.000+0000"))
    crash = fixture("crash.json")
    await a.push("crash", crash)
    await a.push("diagnosis", None, raw=fixture_bytes("diagnosis.json"))
    compact(data)
    await a.push("trip", trip(itin_id(1), user="second"))        # a re-push: copy-on-write
    crash["probability"] = 99
    await a.push("crash", crash)
    await g.push("trip", trip(itin_id(11)))
    await a.push("trip/event", deletion(itin_id(2)))
    compact(data)
    compact(data)
    return itin_id(2)


async def test_sync_mirrors_every_table_and_then_does_nothing(make_pusher, acme, globex, data):
    victim = await build_lake(make_pusher, acme, globex, data)
    assert sync(data) == len(TABLES)
    assert_mirrors_the_views(data)
    assert victim not in {r[2] for r in iceberg_rows(data, "trips")}
    for tbl in TABLES:
        assert iceberg_paths(data, tbl) == live_paths(data, tbl)
    cat = Catalog(data, readonly=True)
    try:
        with Mirror(data) as m:
            head, tables = m.status(cat)
            assert {t.table: t.mirrored for t in tables} == dict.fromkeys(TABLES, head)
            assert m.sync(cat) == 0          # nothing changed: no Iceberg commit
        with Mirror(data) as m:              # a new process: the marks say the same
            assert m.sync(cat) == 0
    finally:
        cat.close()


async def test_copy_on_write_and_merge_are_one_removal_and_addition(pusher, data):
    with Compactor(data, merge_min_files=4) as c:
        for i in range(5):
            await pusher.push("trip", trip(itin_id(i)))
            c.step()
        assert sync(data) == 3
        before = load_catalog(NAME, **properties(data)).load_table((NAME, "trips")).current_snapshot().snapshot_id
        assert len(iceberg_paths(data, "trips")) == 5
        c.merge_small_files()
        assert sync(data) == 3               # trips, trip_samples, trip_events
        tb = load_catalog(NAME, **properties(data)).load_table((NAME, "trips"))
        s = tb.current_snapshot()
        assert s.summary.operation.value == "overwrite"
        assert (s.summary["deleted-data-files"], s.summary["added-data-files"]) == ("5", "1")
        assert s.summary[MIRRORED] == tb.properties[MIRRORED]
        assert iceberg_paths(data, "trips") == live_paths(data, "trips")
        # the replaced files stay until vacuum: the older Iceberg snapshot is still readable
        assert len(iceberg_rows(data, "trips", snapshot_id=before)) == 5
        await pusher.push("trip/event", deletion(itin_id(3)))
        c.drain()
        c.drain()
    assert sync(data) >= 3
    assert_mirrors_the_views(data)
    assert [r[2] for r in iceberg_rows(data, "trips")] == [itin_id(i) for i in (0, 1, 2, 4)]


async def test_rebuild_gives_the_same_tables_and_the_cli_prints_a_loadable_catalog(make_pusher, acme, globex, data):
    await build_lake(make_pusher, acme, globex, data)
    sync(data)
    before = {t: iceberg_rows(data, t) for t in TABLES}
    out = run_cli("iceberg", "--rebuild", data=data)
    assert "trips" in out.stdout
    assert {t: iceberg_rows(data, t) for t in TABLES} == before
    props = json.loads(run_cli("iceberg", "--json", data=data).stdout)
    assert props == properties(data)
    assert len(load_catalog(NAME, **props).load_table((NAME, "trips")).scan().to_arrow()) == len(before["trips"])
    summary = run_cli("iceberg", data=data).stdout
    assert "trips" in summary and "in step" in summary
    p = run_cli("iceberg", data=data.parent / "missing", check=False)
    assert p.returncode != 0 and "no data directory" in p.stderr


async def test_expire_leaves_no_unreferenced_metadata_and_no_trip_id(pusher, data):
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    sync(data)
    victim = itin_id(1)
    await pusher.push("trip/event", deletion(victim))
    compact(data)
    compact(data)
    sync(data)
    with Mirror(data) as m:
        assert m.expire(time.time() + 1) > 0
        assert m.expire(time.time() + 1) == 0
    root = data / "iceberg"
    cat = load_catalog(NAME, **properties(data))
    referenced = set()
    for tbl in TABLES:
        tb = cat.load_table((NAME, tbl))
        assert len(tb.snapshots()) <= 1
        referenced.add(tb.metadata_location)
        for s in tb.snapshots():
            referenced.add(s.manifest_list)
            referenced.update(mf.manifest_path for mf in s.manifests(tb.io))
            # only the partition columns have bounds in the manifests (pyiceberg honours the metrics properties)
            for mf in s.manifests(tb.io):
                for e in mf.fetch_manifest_entry(tb.io):
                    names = {tb.schema().find_column_name(i) for i in e.data_file.lower_bounds or {}}
                    assert names <= {"team_id", "date"}, names
    on_disk = {f"file://{p}" for p in root.rglob("*") if p.is_file() and p.name != ".lock"}
    assert on_disk == referenced
    for p in root.rglob("*"):
        if p.is_file():
            assert victim.encode() not in p.read_bytes(), p
    assert victim not in {r[2] for r in iceberg_rows(data, "trips")}
    findings, _ = verify_erased(data, victim)
    assert not [f for f in findings if f.startswith("iceberg")], findings


async def test_sync_heals_a_diff_it_cannot_trust(pusher, data):
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    sync(data)
    await pusher.push("trip", trip(itin_id(1), user="again"))
    compact(data)
    # vacuum forgets the replaced files before the mirror saw them go: the diff misses a removal
    cat = Catalog(data)
    cat.forget_files([f.id for f in cat.expired_files(time.time() + 1)])
    cat.close()
    sync(data)
    for tbl in TABLES:
        assert iceberg_paths(data, tbl) == live_paths(data, tbl)
    # a lost metadata.json (pyiceberg does not fsync it): the table is recreated from the catalog
    tb = load_catalog(NAME, **properties(data)).load_table((NAME, "trips"))
    Path(tb.metadata_location.removeprefix("file://")).unlink()
    assert sync(data) >= 1
    assert_mirrors_the_views(data)


async def test_mirror_loop_follows_the_lake(pusher, data):
    await pusher.push("trip", trip(itin_id(1)))
    compact(data)
    stop = threading.Event()
    th = threading.Thread(target=mirror_loop, args=(data, stop), kwargs={"every": 0.05, "history_s": 0})
    th.start()
    try:
        await pusher.push("trip", trip(itin_id(2)))
        compact(data)
        cat = Catalog(data, readonly=True)
        head = cat.read_state().snapshot
        cat.close()
        deadline = time.monotonic() + 20
        mirrored = None
        while time.monotonic() < deadline:
            try:  # the loop's first sync creates the tables: until then there is none to load
                tb = load_catalog(NAME, **properties(data)).load_table((NAME, "trips"))
            except NoSuchTableError:
                time.sleep(0.05)
                continue
            mirrored = tb.properties.get(MIRRORED)
            if mirrored == str(head):
                break
            time.sleep(0.05)
        assert mirrored == str(head)
    finally:
        stop.set()
        th.join(10)
    assert not th.is_alive()
    assert [r[2] for r in iceberg_rows(data, "trips")] == [itin_id(1), itin_id(2)]


def test_serve_keeps_the_mirror_in_step_within_seconds(tmp_path):
    """As users run it: ``pushlake serve`` with its compactor, the mirror in its own process."""
    import urllib.request

    from tests.helpers import ServerProcess, create_team
    data = tmp_path / "data"
    key = create_team(data, "acme")
    srv = ServerProcess(data, "--iceberg-interval", "0.5")
    try:
        def push(path: str, body: dict) -> None:
            req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            assert urllib.request.urlopen(req, timeout=10).status == 200

        def iceberg_trips() -> set[str]:
            try:
                return {r[2] for r in iceberg_rows(data, "trips")}
            except Exception:  # noqa: BLE001 - the table is created at the mirror's first sync
                return {"<none>"}

        def until(want: set[str]) -> float:
            t0 = time.monotonic()
            while iceberg_trips() != want:
                assert time.monotonic() - t0 < 30, (iceberg_trips(), want, srv.output()[-3000:])
                time.sleep(0.1)
            return time.monotonic() - t0
        for i in range(3):
            push("/push/trip", trip(itin_id(i)))
        until({itin_id(0), itin_id(1), itin_id(2)})
        push("/push/trip/event", deletion(itin_id(1)))
        until({itin_id(0), itin_id(2)})
        assert view_rows(data, "trips") == iceberg_rows(data, "trips")
        assert "Traceback" not in srv.output()  # the mirror process logs to the service's output
    finally:
        srv.stop()


def test_the_mirror_follows_a_postgresql_catalog(tmp_path, postgres):
    """With the lake catalog in PostgreSQL, the Iceberg catalog's tables are in the same database
    (``pushlake iceberg --json`` gives a ``postgresql+psycopg://`` URI) and follow its commits."""
    import datetime as dt

    import pyarrow as pa

    from lake import files as lf
    from lake.catalog import Commit
    from lake.schema import SCHEMAS
    url = postgres.fresh_database("iceberg_pg")
    data = tmp_path / "data"

    def trips(*itins: str) -> pa.Table:
        rows = [dict.fromkeys(SCHEMAS["trips"].names) | {"team_id": "acme", "itin_id": i, "log_part": "p0",
                                                           "log_offset": n, "date": dt.date(2025, 1, 20)}
                for n, i in enumerate(itins)]
        return pa.Table.from_pylist(rows, schema=SCHEMAS["trips"])
    cat = Catalog(data, url=url)
    try:
        first = lf.write_file(data, "trips", "acme", "2025-01-20", trips("a", "b"))
        cat.commit(Commit("append", add_files=[first]))
        with Mirror(data, url) as m:
            assert m.sync(cat) >= 1
            props = m.properties()
        assert props["uri"].startswith("postgresql+psycopg://")
        ice = load_catalog(NAME, **props).load_table((NAME, "trips"))
        assert sorted(ice.scan().to_arrow()["itin_id"].to_pylist()) == ["a", "b"]
        # a copy-on-write: the file replaced by one without "a"
        fid = cat.live_files("trips")[0].id
        cat.commit(Commit("append", remove_files={fid},
                          add_files=[lf.write_file(data, "trips", "acme", "2025-01-20", trips("b"))]))
        with Mirror(data, url) as m:
            assert m.sync(cat) == 1
            assert m.sync(cat) == 0  # nothing new
        ice = load_catalog(NAME, **props).load_table((NAME, "trips"))
        assert ice.scan().to_arrow()["itin_id"].to_pylist() == ["b"]
        assert int(ice.properties[MIRRORED]) == cat.db.execute("SELECT max(id) FROM snapshots").fetchone()[0]
    finally:
        cat.close()


def test_the_mirror_of_a_lake_on_s3(tmp_path, s3, postgres, monkeypatch):  # noqa: F811
    """A lake on S3 with its catalog in PostgreSQL (a cluster's): the warehouse is the lake's
    ``iceberg/`` prefix, the data files are registered by their s3:// URIs, the properties a
    reader loads hold no key (pyarrow's S3 client takes the reader's AWS_* variables), and
    expire and rebuild clean the metadata on S3."""
    import orjson

    from ingest.log import LogWriter
    from ingest.record import Kind
    from lake.storage import open_storage
    bucket = s3.bucket("pushlake-iceberg")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PUSHLAKE_LAKE", f"s3://{bucket}/lk")
    monkeypatch.setenv("PUSHLAKE_CATALOG", postgres.fresh_database("iceberg_s3"))
    data = tmp_path / "data"
    data.mkdir()

    pushed = [1_750_000_000_000_000]

    def push(items) -> None:
        w = LogWriter(data, 0)
        w.append([(Kind.TRIP, pushed[0] + n, team, itin_id(i), orjson.dumps(trip(itin_id(i), user=user)))
                  for n, (team, i, user) in enumerate(items)])
        pushed[0] += 1000
        w.close()
        compact(data)
    push([("acme", i, "first") for i in range(3)] + [("globex", 10, "first")])
    assert sync(data) >= 1
    props = properties(data)
    assert props["warehouse"] == f"s3://{bucket}/lk/iceberg" and props["uri"].startswith("postgresql+psycopg://")
    assert props["s3.endpoint"] == s3.endpoint and not any("key" in k for k in props)
    assert json.loads(run_cli("iceberg", "--json", data=data).stdout) == props
    assert_mirrors_the_views(data)
    st = open_storage(data)
    cat = Catalog(data, readonly=True)
    try:
        assert iceberg_paths(data, "trips") == {st.uri(f.path) for f in cat.live_files("trips")}
    finally:
        cat.close()
    push([("acme", 1, "second")])  # a copy-on-write: one removal and one addition
    assert sync(data) >= 1
    assert_mirrors_the_views(data)
    with Mirror(data) as m:
        assert m.expire(time.time() + 1) > 0
        cat = Catalog(data, readonly=True)
        try:
            assert all(t.in_step for t in m.status(cat)[1])
        finally:
            cat.close()
    ice = load_catalog(NAME, **props)
    for tbl in TABLES:
        tb = ice.load_table((NAME, tbl))
        keep = {tb.metadata_location} | {s.manifest_list for s in tb.snapshots()}
        keep |= {m.manifest_path for s in tb.snapshots() for m in s.manifests(tb.io)}
        assert tb.metadata.location.startswith(f"s3://{bucket}/lk/iceberg/")
        stored = {st.uri(r) for r in st.list_files(tb.metadata.location.removeprefix(st.uri("")) + "/metadata")}
        assert stored == keep, tbl
    before = {tbl: iceberg_rows(data, tbl) for tbl in TABLES}
    with Mirror(data) as m:
        assert m.rebuild() == len(TABLES)
    assert {tbl: iceberg_rows(data, tbl) for tbl in TABLES} == before
    assert [p.name for p in (data / "iceberg").iterdir()] == [".lock"]  # nothing of the mirror on disk


def test_serve_on_s3_keeps_the_mirror_in_step(tmp_path, s3, monkeypatch):  # noqa: F811
    """``pushlake serve`` with the lake on S3 (the catalog embedded): its mirror process finds the
    lake through the environment, writes its metadata to the bucket, and follows pushes and a
    deletion."""
    import urllib.request

    from lake.storage import open_storage
    from tests.helpers import ServerProcess, create_team
    bucket = s3.bucket("pushlake-iceberg-serve")
    for k, v in s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PUSHLAKE_LAKE", f"s3://{bucket}/served")
    data = tmp_path / "data"
    key = create_team(data, "acme")
    srv = ServerProcess(data, "--iceberg-interval", "0.5")
    try:
        def push(path: str, body: dict) -> None:
            req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            assert urllib.request.urlopen(req, timeout=10).status == 200

        def until(want: set[str]) -> None:
            t0 = time.monotonic()
            while True:
                try:
                    got = {r[2] for r in iceberg_rows(data, "trips")}
                except Exception:  # noqa: BLE001 - the table is created at the mirror's first sync
                    got = {"<none>"}
                if got == want:
                    return
                assert time.monotonic() - t0 < 30, (got, want, srv.output()[-3000:])
                time.sleep(0.2)
        for i in range(3):
            push("/push/trip", trip(itin_id(i)))
        until({itin_id(0), itin_id(1), itin_id(2)})
        push("/push/trip/event", deletion(itin_id(1)))
        until({itin_id(0), itin_id(2)})
        assert view_rows(data, "trips") == iceberg_rows(data, "trips")
        assert "Traceback" not in srv.output()
    finally:
        srv.stop()
    st = open_storage(data)
    assert any(r.endswith(".metadata.json") for r in st.list_files("iceberg"))
    assert not list(data.rglob("*.parquet")) and not list(data.rglob("*.avro"))
