"""Nodes that meet in one catalog: leases with fencing epochs, optimistic commits, per-node log
cleaning (lake/catalog.py, lake/compactor.py).

The catalog-level tests run on both backends; the compactor-level ones put two compactors, each
with its own log (``--data``) and node name, on one PostgreSQL catalog and one lake directory, in
this process, and make their commits interleave exactly where a race would hurt.
"""
from __future__ import annotations

import time
import uuid

import orjson
import pytest

import queries
from ingest.groupcommit import Item
from ingest.log import LogWriter, WrongNode
from ingest.record import Kind
from lake.catalog import Catalog, CatalogConflict, Commit, Key, LeaseLost, Order, TripRef, VersionRow
from lake.compactor import Compactor, CompactorBusy, partitions_lease
from tests.helpers import deletion, itin_id, trip
from tests.services import backend_url


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog(request, tmp_path):
    cat = Catalog(tmp_path / "data", url=backend_url(request, "nodes"))
    yield cat
    cat.close()


def snapshots(cat: Catalog) -> int:
    return cat.db.execute("SELECT count(*) FROM snapshots").fetchone()[0]


# -- leases ------------------------------------------------------------------------------------

def test_a_lease_is_held_by_one_holder_until_it_expires(catalog):
    a = catalog.acquire_lease("partitions:n1", "a", ttl=0.5)
    assert a is not None and a.epoch == 1
    assert catalog.acquire_lease("partitions:n1", "b", ttl=0.5) is None  # held
    assert catalog.renew_lease(a)
    time.sleep(0.6)
    b = catalog.acquire_lease("partitions:n1", "b", ttl=30)
    assert b is not None and b.epoch == 2  # expired: taken over, a new epoch
    assert not catalog.renew_lease(a)      # the old holder cannot renew it back
    assert catalog.leases() == [("partitions:n1", "b", 2, pytest.approx(time.time() + 30, abs=5))]


def test_a_commit_under_a_lease_taken_over_is_fenced_and_changes_nothing(catalog):
    catalog.lease = catalog.acquire_lease("partitions:n1", "a", ttl=0.2)
    catalog.commit(Commit("append", positions={"n1.p0": 5}))
    time.sleep(0.3)
    other = Catalog(catalog.data_dir, url=catalog.url or "")
    assert other.acquire_lease("partitions:n1", "b", ttl=30).epoch == 2
    other.close()
    before = snapshots(catalog)
    with pytest.raises(LeaseLost):
        catalog.commit(Commit("append", positions={"n1.p0": 9}))
    assert snapshots(catalog) == before and catalog.positions() == {"n1.p0": 5}


def test_a_dead_holder_on_this_host_is_taken_over_at_once(catalog):
    assert catalog.acquire_lease("partitions:n1", "n1@host:1:x", ttl=30)
    assert catalog.acquire_lease("partitions:n1", "n1@host:2:y", ttl=30, dead="n1@other:") is None
    assert catalog.acquire_lease("partitions:n1", "n1@host:2:y", ttl=30, dead="n1@host:").epoch == 2


# -- optimistic commits ------------------------------------------------------------------------

def version(key: str, received_us: int, part: str) -> VersionRow:
    return VersionRow(Kind.TRIP, "acme", key, received_us, part, 0, "h", "2025-01-01")


def test_two_first_versions_of_one_key_conflict(catalog):
    k = Key(Kind.TRIP, "acme", "t1")
    catalog.commit(Commit("append", versions=[version("t1", 2, "n2.p0")], previous={k: None}))
    with pytest.raises(CatalogConflict):
        catalog.commit(Commit("append", versions=[version("t1", 1, "n1.p0")], previous={k: None},
                              positions={"n1.p0": 1}))
    assert catalog.versions_of(Kind.TRIP, "acme", ["t1"])["t1"].order == Order(2, "n2.p0", 0)
    assert catalog.positions() == {}  # nothing of the conflicting commit


def test_replacing_a_version_that_moved_meanwhile_conflicts(catalog):
    k = Key(Kind.TRIP, "acme", "t1")
    catalog.commit(Commit("append", versions=[version("t1", 1, "n1.p0")], previous={k: None}))
    catalog.commit(Commit("append", versions=[version("t1", 3, "n2.p0")], previous={k: Order(1, "n1.p0", 0)}))
    with pytest.raises(CatalogConflict):  # planned against version 1, which is gone
        catalog.commit(Commit("append", versions=[version("t1", 2, "n1.p0")], previous={k: Order(1, "n1.p0", 0)}))
    with pytest.raises(CatalogConflict):  # a deletion planned against version 1
        catalog.commit(Commit("append", drop_versions=[k], applied=[TripRef("acme", "t1")],
                              previous={k: Order(1, "n1.p0", 0)}))
    assert catalog.versions_of(Kind.TRIP, "acme", ["t1"])["t1"].order == Order(3, "n2.p0", 0)


def test_a_deletion_that_saw_no_trip_conflicts_with_a_trip_stored_meanwhile(catalog):
    k = Key(Kind.TRIP, "acme", "t1")
    catalog.commit(Commit("append", versions=[version("t1", 1, "n2.p0")], previous={k: None}))
    with pytest.raises(CatalogConflict):
        catalog.commit(Commit("append", applied=[TripRef("acme", "t1")], previous={k: None}))


def test_a_trip_whose_deletion_was_applied_meanwhile_is_not_stored(catalog):
    catalog.add_tombstones([("acme", "t1", "n1.p0", 0, 5)])
    catalog.commit(Commit("append", applied=[TripRef("acme", "t1")], previous={Key(Kind.TRIP, "acme", "t1"): None}))
    with pytest.raises(CatalogConflict):
        catalog.commit(Commit("append", versions=[version("t1", 1, "n2.p0")],
                              previous={Key(Kind.TRIP, "acme", "t1"): None}))
    assert catalog.versions_of(Kind.TRIP, "acme", ["t1"]) == {}


# -- log cleaning per node -------------------------------------------------------------------

def test_a_trip_is_log_cleaned_once_every_node_has_cleaned_it(catalog):
    for n in ("n1", "n2"):
        catalog.register_node(n)
    catalog.add_tombstones([("acme", "t1", "n1.p0", 0, 5)])
    catalog.commit(Commit("append", applied=[TripRef("acme", "t1")]))
    t = TripRef("acme", "t1")
    assert catalog.tombstones_to_clean(time.time(), "n1") == [t] == catalog.tombstones_to_clean(time.time(), "n2")
    catalog.mark_log_cleaned([t], "n1")
    assert catalog.tombstones_to_clean(time.time(), "n1") == []
    assert catalog.uncleaned_nodes("acme", "t1") == ["n2"]
    catalog.mark_log_cleaned([t], "n2")
    assert catalog.uncleaned_nodes("acme", "t1") == []
    assert catalog.db.execute("SELECT log_cleaned FROM tombstones").fetchone()[0] == 1


def test_removing_a_node_stops_erasure_waiting_for_it(catalog):
    for n in ("n1", "n2"):
        catalog.register_node(n)
    catalog.add_tombstones([("acme", "t1", "n1.p0", 0, 5)])
    catalog.commit(Commit("append", applied=[TripRef("acme", "t1")]))
    catalog.mark_log_cleaned([TripRef("acme", "t1")], "n1")
    assert catalog.remove_node("n2")
    assert [n.name for n in catalog.nodes()] == ["n1"]
    assert catalog.uncleaned_nodes("acme", "t1") == []


# -- two compactors on one PostgreSQL catalog ----------------------------------------------------

@pytest.fixture
def cluster(tmp_path, postgres, monkeypatch):  # noqa: F811
    """Two nodes' logs and one lake directory on a fresh PostgreSQL catalog."""
    url = postgres.fresh_database(f"nodes_{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("PUSHLAKE_CATALOG", url)
    monkeypatch.delenv("PUSHLAKE_LAKE", raising=False)
    lake = tmp_path / "lake"
    lake.mkdir()

    class Nodes:
        def __init__(self):
            self.url, self.lake = url, lake
            self.logs = {n: tmp_path / n for n in ("n1", "n2")}
            self.offsets = {n: 0 for n in self.logs}

        def push(self, node: str, kind: int, key: str, doc: dict, received_us: int) -> None:
            w = LogWriter(self.logs[node], 0, node=node, floor=self.offsets[node])
            try:
                self.offsets[node] = w.append([Item(kind, received_us, "acme", key, orjson.dumps(doc))]) + 1
            finally:
                w.close()

        def compactor(self, node: str, **kw) -> Compactor:
            monkeypatch.setenv("PUSHLAKE_NODE", node)
            return Compactor(self.logs[node], out_dir=self.lake, workers=0, **kw)

        def rows(self, itin: str) -> int:
            with queries.connect(self.lake) as con:
                return con.execute("SELECT count(*) FROM trips WHERE itin_id = ?", [itin]).fetchone()[0]

    return Nodes()


def test_the_same_trip_pushed_to_two_nodes_latest_wins_with_one_row(cluster):
    t = itin_id(1)
    cluster.push("n1", Kind.TRIP, t, trip(t, user="old"), received_us=1_000)
    cluster.push("n2", Kind.TRIP, t, trip(t, user="new"), received_us=2_000)
    with cluster.compactor("n2") as c2:
        c2.drain()
    with cluster.compactor("n1") as c1:
        c1.drain()  # older than the version stored by n2: stale
    assert cluster.rows(t) == 1
    with queries.connect(cluster.lake) as con:
        assert con.execute("SELECT user_id FROM trips").fetchall() == [("new",)]


def race(monkeypatch, other: Compactor) -> list:
    """The next step to reach its commit lets ``other`` make a whole step first (between its
    plan, files written, and its commit: where another node's commit lands in a race)."""
    from pushlake import failpoints
    real, raced = failpoints.hit, []

    def hit(name: str) -> None:
        if name == "compactor.before_commit" and not raced:
            raced.append(None)
            raced[0] = other.step()
        real(name)
    monkeypatch.setattr(failpoints, "hit", hit)
    return raced


def test_a_commit_racing_another_node_on_one_key_is_planned_again(cluster, monkeypatch):
    """n1 plans its trip (no version yet), n2 stores a newer one before n1 commits: n1's commit
    conflicts, is planned again against n2's version, and its push is stale."""
    t = itin_id(2)
    cluster.push("n1", Kind.TRIP, t, trip(t, user="old"), received_us=1_000)
    cluster.push("n2", Kind.TRIP, t, trip(t, user="new"), received_us=2_000)
    with cluster.compactor("n1") as c1, cluster.compactor("n2") as c2:
        raced = race(monkeypatch, c2)
        with pytest.raises(CatalogConflict):
            c1.step()
        assert raced[0].stored == 1
        assert c1.step().stale == 1  # planned again: n2's version is newer
    assert cluster.rows(t) == 1
    with queries.connect(cluster.lake) as con:
        assert con.execute("SELECT user_id FROM trips").fetchall() == [("new",)]
        assert not [f for f in (cluster.lake / "files").rglob("*.parquet")
                    if str(f.relative_to(cluster.lake)) not in Catalog(cluster.lake, readonly=True).all_paths()]


def test_a_deletion_on_one_node_of_a_trip_another_node_stores_meanwhile(cluster, monkeypatch):
    """n1 applies a deletion while seeing no trip; n2 stores the trip before n1 commits: n1 is
    planned again and removes n2's rows."""
    t = itin_id(3)
    cluster.push("n2", Kind.TRIP, t, trip(t), received_us=1_000)
    cluster.push("n1", Kind.EVENT, f"{t}:TRIP_DELETION", deletion(t), received_us=2_000)
    with cluster.compactor("n1") as c1, cluster.compactor("n2") as c2:
        raced = race(monkeypatch, c2)
        with pytest.raises(CatalogConflict):
            c1.step()
        assert raced[0].stored == 1
        c1.drain()
    assert cluster.rows(t) == 0
    cat = Catalog(cluster.lake, readonly=True)
    assert cat.versions_of(Kind.TRIP, "acme", [t]) == {}
    cat.close()


def test_a_stalled_compactor_whose_lease_moved_cannot_commit(cluster, monkeypatch):
    """The compactor stalls between writing its files and committing, past its lease; another
    machine (a copy of the node's disk) takes the lease over: the stalled commit is refused."""
    from pushlake import failpoints
    t = itin_id(4)
    cluster.push("n1", Kind.TRIP, t, trip(t), received_us=1_000)
    real = failpoints.hit

    def stall(name: str) -> None:
        if name == "compactor.before_commit":
            time.sleep(0.4)  # past its 0.3 s lease
            thief = Catalog(cluster.lake, url=cluster.url)
            assert thief.acquire_lease(partitions_lease("n1"), "n1@elsewhere:1:z", ttl=30).epoch == 2
            thief.close()
        real(name)
    monkeypatch.setattr(failpoints, "hit", stall)
    old = cluster.compactor("n1", lease_ttl=0.3)
    try:
        with pytest.raises(LeaseLost):
            old.step()
        monkeypatch.setattr(failpoints, "hit", real)
        with pytest.raises(CompactorBusy):  # and cannot take it back while the other holds it
            old.drain()
    finally:
        old.close()
    assert cluster.rows(t) == 0  # nothing committed by the fenced compactor
    cat = Catalog(cluster.lake, readonly=True)
    assert cat.positions() == {}
    assert cat.leases()[0][1:3] == ("n1@elsewhere:1:z", 2)
    cat.close()
    assert not list((cluster.lake / "files").rglob("*.parquet"))  # its files removed with the refused commit


def test_a_data_directory_of_another_node_is_refused(cluster):
    cluster.push("n1", Kind.TRIP, itin_id(5), trip(itin_id(5)), received_us=1_000)
    with pytest.raises(WrongNode):
        LogWriter(cluster.logs["n1"], 0, node="n2")


def test_an_outage_of_the_catalog_or_the_store_retries_the_batch_and_fails_no_record():
    """An unreachable PostgreSQL or S3 raises errors that are not OSError: they must still retry
    the batch as it is (``transient``) instead of isolating records into FAILED items."""
    import botocore.exceptions as boto
    import psycopg
    from lake.isolation import transient
    assert transient(psycopg.OperationalError("connection refused"))
    assert transient(psycopg.InterfaceError("the connection is closed"))
    assert transient(boto.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"))
    assert not transient(psycopg.DataError("a value out of range"))  # a record's own fault: isolated
    assert not transient(ValueError("bad record"))


def test_nodes_list_and_remove_from_the_cli(cluster, tmp_path):
    """`pushlake nodes` shows the nodes erasure waits for and who holds the leases; a running
    node cannot be removed, a stopped one can, and erasure stops waiting for it."""
    import json

    from tests.helpers import run_cli
    t = itin_id(6)
    cluster.push("n1", Kind.TRIP, t, trip(t), received_us=1_000)
    cluster.push("n2", Kind.EVENT, f"{t}:TRIP_DELETION", deletion(t), received_us=2_000)
    reader = tmp_path / "reader"
    reader.mkdir()
    env = {"PUSHLAKE_CATALOG": cluster.url}
    with cluster.compactor("n1") as c1:
        c1.drain()
        with cluster.compactor("n2") as c2:
            c2.drain()
        out = json.loads(run_cli("nodes", "list", "--json", data=reader, env=env).stdout)
        assert [n["node"] for n in out["nodes"]] == ["n1", "n2"]
        assert out["nodes"][0]["compactor"].startswith("n1@") and out["nodes"][1]["compactor"] is None
        busy = run_cli("nodes", "remove", "n1", data=reader, env=env, check=False)
        assert busy.returncode != 0 and "running" in busy.stderr
    cat = Catalog(cluster.lake, readonly=True)
    assert cat.uncleaned_nodes("acme", t) == ["n1", "n2"]
    cat.close()
    assert run_cli("nodes", "remove", "n2", data=reader, env=env).returncode == 0
    missing = run_cli("nodes", "remove", "n9", data=reader, env=env, check=False)
    assert missing.returncode != 0 and "no node 'n9'" in missing.stderr
    cat = Catalog(cluster.lake, readonly=True)
    assert cat.uncleaned_nodes("acme", t) == ["n1"]
    cat.close()
    assert list(reader.iterdir()) == []  # a reader machine's data directory stays empty


@pytest.mark.parametrize("name", ["n1\n", "n1.", "../n1", "N1", "-n1", "n1-", "a" * 41, "n 1", "n1\x00"])
def test_a_node_name_that_could_escape_or_collide_is_refused(name):
    """The name is part of partition directory names and catalog keys: matched whole."""
    from pushlake.location import node_name
    with pytest.raises(ValueError):
        node_name(name)
