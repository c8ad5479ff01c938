"""Several nodes on one catalog and one lake (README, Many machines), as real processes: ``pushlake serve
--node nK`` on its own data directory, PostgreSQL (the catalog) and moto_server (S3, the lake)
behind proxies a test can take down, and readers on an empty data directory (tests/cluster.py).

One cluster serves the tests that do not need their own settings; each test uses itinIds of its
own, and whatever a test breaks (a node killed, a service down) is mended before the next one.
Waits are for a state, with a deadline (``wait_for``), never for a duration.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading

import pytest

from tests.cluster import Cluster, TcpProxy, cmdline, wait_for
from tests.helpers import PUSHLAKE, ROOT, deletion, trip

NODES = ["n1", "n2", "n3"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, postgres, s3):  # noqa: F811
    c = Cluster(tmp_path_factory.mktemp("cluster"), postgres, s3, nodes=3)
    yield c
    c.stop()


@pytest.fixture(autouse=True)
def mend(request):
    """After each test on the shared cluster: services up, every node running again."""
    yield
    if "cluster" not in request.fixturenames:
        return
    c = request.getfixturevalue("cluster")
    c.catalog_proxy.up()
    c.lake_proxy.up()
    for name, n in c.nodes.items():
        if not n.running():
            c.restart(name)


def rows_of(c: Cluster, itins: list[str]) -> list[tuple]:
    return c.query("SELECT itin_id, user_id, count(*) OVER (PARTITION BY itin_id) FROM trips "
                   "WHERE itin_id IN (SELECT unnest(?)) ORDER BY itin_id", [itins])


def failures(node) -> int:
    """How many compaction steps of ``node`` failed and were retried so far (its log)."""
    return node.output().count("compaction step failed; retrying")


def assert_once(c: Cluster, itins: list[str]) -> None:
    """Every one of ``itins`` is in the trips view exactly once, with its 10 samples."""
    doubled = c.query("SELECT itin_id, count(*) FROM trips WHERE itin_id IN (SELECT unnest(?)) "
                      "GROUP BY 1 HAVING count(*) > 1", [itins])
    assert doubled == []
    missing = set(itins) - c.visible(itins)
    assert not missing, f"{len(missing)} acknowledged trips are missing"
    samples = c.query("SELECT itin_id, count(*) FROM trip_samples WHERE itin_id IN (SELECT unnest(?)) "
                      "GROUP BY 1 HAVING count(*) != 10", [itins])
    assert samples == []


def test_the_outage_proxy_cuts_open_connections_and_refuses_new_ones(postgres):  # noqa: F811
    """The harness's outage is real: an open PostgreSQL connection through the proxy breaks at
    ``down()``, a new one fails, and after ``up()`` connections work again."""
    import psycopg
    proxy = TcpProxy(postgres.host, postgres.port)
    dsn = f"host=127.0.0.1 port={proxy.port} user={postgres.user} dbname={postgres.database} connect_timeout=3"
    try:
        con = psycopg.connect(dsn, autocommit=True)
        assert con.execute("SELECT 1").fetchone() == (1,)
        proxy.down()
        with pytest.raises(psycopg.OperationalError):
            con.execute("SELECT 1")
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn)
        proxy.up()
        with psycopg.connect(dsn, autocommit=True) as again:
            assert again.execute("SELECT 2").fetchone() == (2,)
    finally:
        proxy.close()


# --- latest push wins, deletions across nodes ------------------------------------------------------


def test_the_later_push_wins_across_nodes(cluster):
    """The same itinId pushed to two nodes: the later push (by received_us) wins whichever node's
    partition sorts first, and the trip is one row with one set of samples."""
    a, b = cluster.new_ids(2)
    assert cluster.push("n1", "trip", trip(a, user="first")) == 200
    assert cluster.push("n2", "trip", trip(a, user="second")) == 200
    assert cluster.push("n3", "trip", trip(b, user="first")) == 200
    assert cluster.push("n1", "trip", trip(b, user="second")) == 200

    def settled():
        rows = rows_of(cluster, [a, b])
        assert all(n == 1 for *_, n in rows), f"a trip has two rows: {rows}"
        return rows == sorted([(a, "second", 1), (b, "second", 1)])
    wait_for(settled, 90, "the later pushes to win")
    assert_once(cluster, [a, b])
    assert sorted((r["itin_id"], r["user_id"]) for r in cluster.sql(
        f"SELECT itin_id, user_id FROM trips WHERE itin_id IN ('{a}', '{b}')")) == [(a, "second"), (b, "second")]


def test_a_deletion_acked_by_one_node_hides_a_trip_another_stored(cluster):
    """From the 200 of a deletion on n1, a reader on an empty data directory sees nothing of a
    trip that n2 stored and compacted: asked right after the ack, before any compactor ran."""
    [a] = cluster.new_ids(1)
    assert cluster.push("n2", "trip", trip(a)) == 200
    cluster.wait_visible([a])
    assert cluster.count("trip_samples", "itin_id = ?", [a]) == 10
    before_events = cluster.count("trip_events", "itin_id = ?", [a])
    assert before_events > 0
    assert cluster.push("n1", "trip/event", deletion(a)) == 200
    [row] = cluster.sql(f"SELECT (SELECT count(*) FROM trips WHERE itin_id = '{a}') AS t, "
                        f"(SELECT count(*) FROM trip_samples WHERE itin_id = '{a}') AS s, "
                        f"(SELECT count(*) FROM trip_events WHERE itin_id = '{a}') AS e")
    assert row == {"t": 0, "s": 0, "e": 0}
    # the reader that had the trip in view (a long-lived process) does not show it either
    assert [cluster.count(t, "itin_id = ?", [a]) for t in ("trips", "trip_samples", "trip_events")] == [0, 0, 0]


def test_a_deletion_before_its_trip_on_another_node_wins(cluster):
    """Deletion on n1, then the trip on n2: the trip never appears, not even for a moment."""
    a, after = cluster.new_ids(2)
    assert cluster.push("n1", "trip/event", deletion(a)) == 200
    assert cluster.push("n2", "trip", trip(a)) == 200
    assert cluster.push("n2", "trip", trip(after)) == 200  # behind it in n2's partition

    def after_is_compacted():
        assert cluster.count("trips", "itin_id = ?", [a]) == 0, "the deleted trip appeared"
        return cluster.visible([after]) == {after}
    wait_for(after_is_compacted, 90, "n2's compactor to pass the deleted trip")
    assert cluster.sql(f"SELECT count(*) AS n FROM trip_samples WHERE itin_id = '{a}'") == [{"n": 0}]
    assert cluster.raw_counts("trips").get(a) is None  # not stored at all, not merely hidden
    wait_for(lambda: cluster.count("trip_deletions", "itin_id = ?", [a]) == 1, 60,
             "the deletion's audit row")


# --- crashes and outages -------------------------------------------------------------------------


async def test_sigkill_of_a_node_under_load_loses_and_doubles_nothing(cluster):
    """Clients push to every node; n2 is SIGKILLed meanwhile, then restarted: every push any
    node answered 200 is in the lake exactly once."""
    killed = []

    def during(elapsed: float) -> None:
        if elapsed > 1.0 and not killed:
            cluster.kill("n2")
            killed.append(elapsed)
    acked = await cluster.load(NODES, seconds=2.5, clients=12, during=during)
    assert killed
    by_node = {n: sum(1 for node, _ in acked if node == n) for n in NODES}
    assert all(v > 10 for v in by_node.values()), by_node
    cluster.restart("n2")
    itins = [i for _, i in acked]
    cluster.wait_visible(itins, timeout=150)
    assert_once(cluster, itins)


def test_catalog_down_trips_200_deletions_503_then_everything_lands(cluster):
    """PostgreSQL unreachable: trips, crashes and diagnoses are still acknowledged (the log is
    enough), a deletion is refused with 503 + Retry-After (its tombstone could not be published);
    the compactors wait. Back: every acknowledged push lands, the deletion is taken."""
    [old] = cluster.new_ids(1)
    assert cluster.push("n3", "trip", trip(old)) == 200
    warm = cluster.new_ids(2)  # every receiver has the team's key in its cache (from a push)
    assert [cluster.push(n, "trip", trip(x)) for n, x in zip(["n1", "n2"], warm)] == [200, 200]
    cluster.wait_visible([old, *warm])
    ids = cluster.new_ids(6)
    before = {n.name: failures(n) for n in cluster.nodes.values()}
    cluster.catalog_proxy.down()
    try:
        statuses = [cluster.push(NODES[i % 3], "trip", trip(x)) for i, x in enumerate(ids)]
        assert statuses == [200] * 6
        assert cluster.push("n1", "crash", {"crashId": f"crash-{ids[0]}", "probability": 1}) == 200
        r = cluster.post("n2", "trip/event", deletion(old))
        assert r.status == 503, r
        assert int(r.headers.get("Retry-After", "0")) > 0
        wait_for(lambda: all(failures(n) > before[n.name] for n in cluster.nodes.values()), 60,
                 "every node's compactor to meet the outage")
    finally:
        cluster.catalog_proxy.up()
    cluster.wait_visible(ids, timeout=120)
    assert all(n.running() for n in cluster.nodes.values())
    [m] = cluster.new_ids(1)  # behind the refused deletion in n2's log: when visible, n2 passed it
    assert cluster.push("n2", "trip", trip(m)) == 200
    cluster.wait_visible([m])
    assert cluster.visible([old]) == {old}, "a deletion answered 503 was applied (refused input must change nothing)"
    wait_for(lambda: cluster.count("crashes", "crash_id = ?", [f"crash-{ids[0]}"]) == 1, 60, "the crash")
    # the client retries the deletion (after Retry-After, as DriveQuant does) until it is taken
    wait_for(lambda: cluster.push("n2", "trip/event", deletion(old)) == 200, 60, "the deletion's retry", every=1.0)
    assert cluster.sql(f"SELECT count(*) AS n FROM trips WHERE itin_id = '{old}'") == [{"n": 0}]
    assert_once(cluster, ids)


def test_object_store_down_receivers_unaffected_then_data_lands(cluster):
    """S3 unreachable: every push is acknowledged, deletions too (they need the catalog only);
    the compactors fail and retry. Back: everything lands."""
    [old] = cluster.new_ids(1)
    assert cluster.push("n1", "trip", trip(old)) == 200
    cluster.wait_visible([old])
    ids = cluster.new_ids(6)
    before = {n.name: failures(n) for n in cluster.nodes.values()}
    cluster.lake_proxy.down()
    try:
        statuses = [cluster.push(NODES[i % 3], "trip", trip(x)) for i, x in enumerate(ids)]
        assert statuses == [200] * 6
        assert cluster.push("n2", "trip/event", deletion(old)) == 200
        # (a compactor's S3 client may retry a request for tens of seconds before its step fails)
        wait_for(lambda: any(failures(n) > before[n.name] for n in cluster.nodes.values()), 60,
                 "a compactor to meet the outage")
        assert all(n.running() for n in cluster.nodes.values())
    finally:
        cluster.lake_proxy.up()
    cluster.wait_visible(ids, timeout=120)
    assert_once(cluster, ids)
    assert cluster.count("trips", "itin_id = ?", [old]) == 0
    wait_for(lambda: old not in cluster.raw_counts("trips"), 90, "the deletion to be applied to the files")


def test_compactors_racing_on_one_file_lose_no_deletion_and_double_nothing(cluster):
    """Trips stored by n1 in one file (one team, one date); then n2 and n3 delete and replace
    trips of that file at once, so both compactors rewrite it: optimistic commits make one of them
    plan again. No deletion is lost (the files no longer hold the deleted trips), no row doubled."""
    ids = cluster.new_ids(30)
    for x in ids:
        assert cluster.push("n1", "trip", trip(x, user="v1")) == 200
    cluster.wait_visible(ids)
    deleted = ids[:12]
    replaced = ids[12:20]
    untouched = ids[20:]
    errors: list = []

    def worker(node: str, mine: list[str], again: list[str]) -> None:
        try:
            for x in mine:
                assert cluster.push(node, "trip/event", deletion(x)) == 200
            for x in again:
                assert cluster.push(node, "trip", trip(x, user="v2")) == 200
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=worker, args=("n2", deleted[0::2], replaced[0::2])),
               threading.Thread(target=worker, args=("n3", deleted[1::2], replaced[1::2]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert cluster.visible(deleted) == set()  # at their acks

    def settled():
        raw = cluster.raw_counts("trips")
        assert all(raw.get(x, 0) <= 1 for x in ids), "a trip is twice in the live files"
        users = dict((i, u) for i, u, _ in rows_of(cluster, replaced + untouched))
        return (not any(x in raw for x in deleted)
                and all(users.get(x) == "v2" for x in replaced)
                and all(users.get(x) == "v1" for x in untouched))
    wait_for(settled, 120, "both compactors' rewrites to be committed")
    assert_once(cluster, replaced + untouched)
    raw_samples = cluster.raw_counts("trip_samples")
    assert not any(x in raw_samples for x in deleted)
    assert all(raw_samples.get(x) == 10 for x in replaced + untouched)


# --- fencing ---------------------------------------------------------------------------------------


def test_a_fenced_compactor_cannot_commit_after_its_lease_moved(cluster, postgres, s3):  # noqa: F811
    """Node f1's compactor stalls between writing a step's files and committing them (its
    catalog connection stops answering the moment it PUTs a trips file); a replacement,
    `pushlake compact --node f1` on a copy of f1's disk (as after moving the disk to another
    machine), takes f1's lease and commits the same records. When the stalled compactor's network
    comes back, its commit is refused (the lease's epoch moved: fencing), nothing is doubled, and
    it takes the lease again and compacts what comes next."""
    catalog_link = TcpProxy(postgres.host, postgres.port)  # f1's own links to the two services
    lake_link = TcpProxy(s3.host, s3.port)
    url = cluster.catalog.replace(f":{cluster.catalog_proxy.port}/", f":{catalog_link.port}/")
    node = cluster.add_node("f1", extra=("--catalog", url),
                            env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{lake_link.port}"})
    try:
        [warm] = cluster.new_ids(1)
        assert cluster.push("f1", "trip", trip(warm)) == 200
        cluster.wait_visible([warm])
        put = re.compile(rb"^PUT /[^ ]*/files/trips/", re.M)
        lake_link.watch = lambda data: catalog_link.pause() if put.search(data) else None
        ids = cluster.new_ids(20)
        for x in ids:
            assert cluster.push("f1", "trip", trip(x)) == 200
        wait_for(lambda: catalog_link.paused, 60, "f1's compactor to write its step's files")
        lake_link.watch = None
        assert cluster.visible(ids) == set()
        copy = cluster.root / "f1-replacement"
        shutil.copytree(node.data, copy, ignore=shutil.ignore_patterns("*.lock"))

        def replaced():  # refused while the stalled lease lasts (if it is seen as alive)
            p = cluster.cli("compact", "--node", "f1", "--no-maintenance", "--json", data=copy, check=False)
            assert p.returncode == 0 or re.search(r"lease|held", p.stderr, re.I), p.stderr
            return p.returncode == 0
        wait_for(replaced, 90, "the replacement compactor to take f1's lease", every=1.0)
        cluster.wait_visible(ids, timeout=60)
        catalog_link.resume()
        wait_for(lambda: re.search(r"fenced|lost the lease|taken over", node.output(), re.I), 60,
                 "f1's compactor to find its lease gone")
        more = cluster.new_ids(5)
        for x in more:
            assert cluster.push("f1", "trip", trip(x)) == 200
        cluster.wait_visible(more, timeout=90)  # f1 compacts again, under a new epoch
        assert_once(cluster, [warm, *ids, *more])
        raw = cluster.raw_counts("trips")
        assert all(raw.get(x) == 1 for x in [warm, *ids, *more]), "a trip is twice in the live files"
    finally:
        catalog_link.resume()
        node.stop()
        del cluster.nodes["f1"]
        catalog_link.close()
        lake_link.close()


# --- rebuild and erasure ---------------------------------------------------------------------------


REBUILD_QUERIES = {
    "trips": "SELECT itin_id, user_id, distance_m, log_part, log_offset FROM trips ORDER BY itin_id",
    "trip_samples": "SELECT itin_id, count(*) AS n, sum(seq) AS s FROM trip_samples GROUP BY 1 ORDER BY 1",
    "crashes": "SELECT crash_id, log_part, log_offset FROM crashes ORDER BY crash_id",
    "trip_deletions": "SELECT itin_id, log_part, log_offset FROM trip_deletions ORDER BY itin_id, log_part",
}


def test_rebuild_from_every_nodes_log_equals_the_incremental_lake(cluster, tmp_path, postgres, s3):  # noqa: F811
    """`pushlake rebuild` of the logs of every node (their partitions, named apart, gathered in one
    log directory) into a fresh catalog and lake reproduces the lake the nodes built
    incrementally: re-pushes across nodes, deletions in both orders, everything earlier tests of
    this module pushed (killed nodes, outages, races)."""
    a, b, c, d = cluster.new_ids(4)
    assert cluster.push("n1", "trip", trip(a, user="v1")) == 200
    assert cluster.push("n2", "trip", trip(a, user="v2")) == 200
    assert cluster.push("n3", "trip/event", deletion(b)) == 200
    assert cluster.push("n1", "trip", trip(b)) == 200
    assert cluster.push("n2", "trip", trip(c)) == 200
    assert cluster.push("n3", "trip/event", deletion(c)) == 200
    assert cluster.push("n3", "trip", trip(d)) == 200
    markers = cluster.new_ids(3)
    for name, m in zip(NODES, markers):  # behind everything each node received: when visible, caught up
        assert cluster.push(name, "trip", trip(m)) == 200
    cluster.wait_visible([a, d, *markers])
    wait_for(lambda: cluster.count("trip_deletions", "itin_id IN (?, ?)", [b, c]) == 2, 60, "the deletions' rows")
    built = {t: cluster.sql(q) for t, q in REBUILD_QUERIES.items()}
    assert [x["user_id"] for x in built["trips"] if x["itin_id"] == a] == ["v2"]
    assert {x["itin_id"] for x in built["trips"]} & {b, c} == set()

    # every node's log (f1's too, if the fencing test left one): partition names are unique
    logs = tmp_path / "logs"
    parts = sorted(p for p in cluster.root.glob("*/data/log/*") if p.is_dir())
    assert {p.name for p in parts} >= {"n1.p0", "n2.p0", "n3.p0"}
    for p in parts:
        shutil.copytree(p, logs / "log" / p.name, ignore=shutil.ignore_patterns("*.lock"))
    catalog = postgres.fresh_database("rb_" + re.sub(r"\W", "_", tmp_path.name.lower())[:40])
    lake = f"s3://{s3.bucket('rb-' + re.sub(r'[^a-z0-9]+', '-', tmp_path.name.lower())[:40].strip('-'))}/lake"
    env = {**cluster.env, "AWS_ENDPOINT_URL": s3.endpoint}
    p = subprocess.run([*PUSHLAKE, "rebuild", "--json", "--data", str(logs), "--into", str(tmp_path / "into"),
                        "--catalog", catalog, "--lake", lake],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    (tmp_path / "empty").mkdir()
    for table, q in REBUILD_QUERIES.items():
        r = subprocess.run([*PUSHLAKE, "sql", "--json", "--catalog", catalog, "--lake", lake,
                            "--data", str(tmp_path / "empty"), q],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == built[table], table


def test_erase_verify_names_the_nodes_that_have_not_cleaned_yet(tmp_path, postgres, s3):  # noqa: F811
    """With retention 0: a trip stored by n1 and deleted through n2 is reported NOT erased while
    n1 (whose log holds it) is down, naming n1; once n1 is back and has cleaned its log and the
    lake is vacuumed, `erase --verify` finds nothing, from a machine with an empty data dir."""
    with Cluster(tmp_path, postgres, s3, nodes=2,
                 serve_args=("--retention", "0", "--segment-age", "1", "--maintenance-interval", "2")) as c:
        [a] = c.new_ids(1)
        assert c.push("n1", "trip", trip(a)) == 200
        c.wait_visible([a])
        c.nodes["n1"].stop()
        assert c.push("n2", "trip/event", deletion(a)) == 200

        # each check is polled (wait_for): with retention 0 the running nodes vacuum replaced files
        # while `erase --verify` lists and reads the bucket (an object gone before its read is gone)
        def verify() -> dict:
            p = c.cli("erase", a, "--verify", "--json", data=c.reader_dir, check=False)
            assert p.returncode in (0, 1) and p.stdout.strip(), (p.returncode, p.stdout, p.stderr)
            return json.loads(p.stdout)

        def only_n1_left():  # n2 cleans at once (nothing of the trip in its log); n1 is down
            out = verify()
            assert out["erased"] is False, out
            named = lambda n: any(re.search(rf"\b{n}\b", f) for f in out["findings"])  # noqa: E731
            return named("n1") and not named("n2")
        wait_for(only_n1_left, 60, "erase --verify to name n1 (down) and not n2", every=1.0)
        c.restart("n1")

        def erased():
            [filler] = c.new_ids(1)
            c.push("n1", "trip", trip(filler))  # new records roll n1's old segment over (sealed)
            return verify()["erased"]
        wait_for(erased, 120, "every node to clean and the lake to be vacuumed", every=1.0)

        def says_erased():  # the plain text and exit code a person reads
            out = c.cli("erase", a, "--verify", data=c.reader_dir, check=False)
            assert "NOT erased" not in out.stdout, out.stdout
            return out.returncode == 0 and f"trip {a} is erased" in out.stdout
        wait_for(says_erased, 30, "erase --verify to say the trip is erased", every=1.0)


# --- the example: make cluster -------------------------------------------------------------------


def test_make_cluster_example_prints_commands_that_work(tmp_path):
    """examples/cluster.py starts PostgreSQL, moto_server and three nodes, and prints the exact
    commands to push to each node and to query from a fourth place; they work as printed, and
    Ctrl-C (SIGINT) stops everything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PUSHLAKE_"))}
    env["CLUSTER_DIR"] = str(tmp_path / "cl")
    log = open(tmp_path / "example.out", "w+")
    p = subprocess.Popen([sys.executable, "examples/cluster.py"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                         env=env, start_new_session=True)
    try:
        def ready():
            log.seek(0)
            text = log.read()
            if p.poll() is not None:
                raise AssertionError(f"examples/cluster.py exited ({p.returncode}): {text[-3000:]}")
            return text if "Ctrl-C" in text else None
        text = wait_for(ready, 120, "the example cluster to be up", every=0.5)
        commands = [line.strip()[2:] for line in text.splitlines() if line.strip().startswith("$ ")]
        pushes = [c for c in commands if c.startswith("curl ") and c.endswith("/push/trip")]
        query = [c for c in commands if "pushlake sql" in c]
        assert len(pushes) == 3 and len(query) == 1, text
        assert len({re.search(r"127\.0\.0\.1:(\d+)/", c)[1] for c in pushes}) == 3  # one per node
        r = subprocess.run(pushes[1] + " -s -o /dev/null -w '%{http_code}'", shell=True, cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.stdout.strip() == "200", (r.stdout, r.stderr)
        env_q = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PUSHLAKE_"))}

        def queried():
            r = subprocess.run(query[0], shell=True, cwd=ROOT, capture_output=True, text=True, timeout=120,
                               env=env_q)
            assert r.returncode == 0, r.stderr
            return "0c83a8ad9bb98ef71a0bd659" in r.stdout  # the itinId of the trip the example pushes
        wait_for(queried, 90, "the pushed trip in the query's answer", every=1.0)
        assert shlex.split(query[0])  # one command line, as printed
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        log.seek(0)
        out = log.read()
        log.close()
    assert p.returncode == 0, out[-3000:]
    assert "cluster: stopped" in out
    assert not [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
                if str(tmp_path / "cl") in cmdline(pid)], "a node outlived the example"
