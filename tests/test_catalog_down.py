"""The receiver while the catalog (PostgreSQL) cannot be reached (README, Many machines): trips, crashes and
diagnoses are still acked (the fsynced log is enough), deletions get 503 + Retry-After (their
tombstone must be in the catalog before the ack), known keys keep working and unknown ones get
503 rather than 401. When PostgreSQL is back the same processes reconnect by themselves, and after
compaction every acked push is in the lake and the deleted trip is gone.

A real ``pushlake serve --catalog`` on its own database, reaching the session's PostgreSQL through
a TCP proxy the test cuts (so the server keeps running for the other tests)."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import orjson
import pytest

from ingest.app import is_deletion
from ingest.groupcommit import GroupCommit, Item, NotPublished
from ingest.log import LogWriter
from ingest.record import Kind
from pushlake.db import open_db
from tests.cluster import TcpProxy
from tests.helpers import ServerProcess, deletion, fixture, itin_id, run_cli, trip


def push(server: ServerProcess, route: str, body: dict, key: str) -> tuple[int, dict, dict]:
    req = urllib.request.Request(f"{server.url}/push/{route}", data=orjson.dumps(body), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


def visible(catalog: str, data) -> set[str]:
    """The trips a reader sees now (pushlake sql on the catalog)."""
    rows = run_cli("sql", "--json", "--catalog", catalog, "SELECT itin_id FROM trips", data=data).stdout
    return {r["itin_id"] for r in json.loads(rows)}


def crash(n: int) -> dict:
    return {**fixture("crash.json"), "crashId": f"crash-{n}"}


def diagnosis(user: str) -> dict:
    return {**fixture("diagnosis.json"), "userId": user}


@pytest.fixture
def catalog(postgres, request):  # noqa: F811
    """(direct URL, URL through the proxy, proxy) of a fresh database."""
    url = postgres.fresh_database("down_" + request.node.name.lower()[:40])
    proxy = TcpProxy(postgres.host, postgres.port)
    yield url, url.replace(f"{postgres.host}:{postgres.port}", f"127.0.0.1:{proxy.port}"), proxy
    proxy.close()


async def test_a_hanging_catalog_delays_deletions_only(tmp_path):
    """The tombstones are published by their own thread: while the catalog hangs (a network that
    drops packets: every call waits for its timeout) trips are acked at their fsync, and while it
    fails deletions are refused at once, the catalog tried again at most every PROBE_S."""
    release, calls = threading.Event(), []

    def sink(first: int, items: list[Item]) -> None:
        calls.append(first)
        if not release.wait(10):
            raise OSError("catalog timeout")
        if len(calls) == 2:
            raise OSError("catalog refused")

    gc = GroupCommit(LogWriter(tmp_path, 0), sink, needs_sink=is_deletion)
    gc.start()
    try:
        def item(kind: int, key: str) -> Item:
            return Item(kind, 1, "acme", key, b"{}")
        deleting = asyncio.ensure_future(gc.submit(item(Kind.EVENT, f"{itin_id(1)}:TRIP_DELETION")))
        await asyncio.sleep(0.2)
        assert calls == [0] and not deleting.done()
        started = time.monotonic()
        assert await gc.submit(item(Kind.TRIP, itin_id(2))) == 1  # acked while the sink hangs
        assert await gc.submit(item(Kind.EVENT, f"{itin_id(2)}:START")) == 2  # other events need no tombstone
        assert time.monotonic() - started < 2
        release.set()
        assert await deleting == 0
        with pytest.raises(NotPublished, match="refused"):
            await gc.submit(item(Kind.EVENT, f"{itin_id(3)}:TRIP_DELETION"))
        with pytest.raises(NotPublished):  # within PROBE_S: refused without asking the catalog
            await gc.submit(item(Kind.EVENT, f"{itin_id(3)}:TRIP_DELETION"))
        assert len(calls) == 2
        await asyncio.sleep(1.1)
        assert await gc.submit(item(Kind.EVENT, f"{itin_id(3)}:TRIP_DELETION")) == 5
        assert len(calls) == 3 and gc.sink_down_since is None
    finally:
        release.set()
        await gc.close()


def test_a_broken_connection_is_replaced_when_the_server_is_back(catalog):
    _, via_proxy, proxy = catalog
    db = open_db(via_proxy)
    assert db.execute("SELECT 1").fetchone() == (1,)
    proxy.down()
    with pytest.raises(db.Unavailable):
        db.execute("SELECT 1")
    with pytest.raises(db.Unavailable):  # still down: the new connection is refused
        db.execute("SELECT 1")
    proxy.up()
    assert db.execute("SELECT 1").fetchone() == (1,)
    with db.tx():
        db.execute("SELECT 1")
    proxy.down()
    with pytest.raises(db.Unavailable):
        with db.tx():  # a transaction that lost its connection is an error, never silently redone
            db.execute("SELECT 1")
    proxy.up()
    assert db.changes() >= 1
    # an outage the idle connection never saw: the next transaction begins on a new connection
    proxy.down()
    proxy.up()
    with db.tx():
        assert db.execute("SELECT 1").fetchone() == (1,)
    proxy.down()
    proxy.up()
    assert db.changes() >= 1
    db.close()


def test_pushes_during_a_catalog_outage(catalog, tmp_path):
    direct, via_proxy, proxy = catalog
    data = tmp_path / "node"
    key = json.loads(run_cli("teams", "create", "acme", "--json", "--catalog", direct, data=tmp_path / "admin")
                     .stdout)["pushApiKey"]
    server = ServerProcess(data, "--catalog", via_proxy, "--iceberg-interval", "0")
    try:
        acked: list[tuple[str, str]] = []  # (table, id) of every push answered 200
        gone, kept = itin_id(1), itin_id(2)
        for itin in (gone, kept):
            assert push(server, "trip", trip(itin), key)[0] == 200
            acked.append(("trips", itin))
        assert push(server, "trip/event", deletion(itin_id(9)), key)[0] == 200  # a deletion that works

        proxy.down()
        for n in range(3, 6):
            status, _, body = push(server, "trip", trip(itin_id(n)), key)
            assert status == 200 and body["status"] == "OK", body
            acked.append(("trips", itin_id(n)))
        assert push(server, "crash", crash(1), key)[0] == 200
        acked.append(("crashes", "crash-1"))
        assert push(server, "diagnosis", diagnosis("driver-x"), key)[0] == 200
        for _ in range(3):
            status, headers, body = push(server, "trip/event", deletion(gone), key)
            assert status == 503 and int(headers["Retry-After"]) > 0, body
            assert body["error"] == "catalog_unavailable" and body["message"]
        status, headers, body = push(server, "trip", trip(itin_id(6)), "pk_not_a_known_key")
        assert status == 503 and int(headers["Retry-After"]) > 0 and body["error"] == "catalog_unavailable"

        proxy.up()
        # the refused deletions changed nothing: refused before the log (the outage was known),
        # so once a trip pushed after them is in the lake, the trip they named still is
        assert push(server, "trip", trip(itin_id(8)), key)[0] == 200
        acked.append(("trips", itin_id(8)))
        deadline = time.monotonic() + 60
        while itin_id(8) not in visible(direct, data) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert {gone, itin_id(8)} <= visible(direct, data)
        deadline = time.monotonic() + 30
        while (status := push(server, "trip/event", deletion(gone), key)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
        assert gone not in visible(direct, data)  # hidden from its ack on, before any compaction
        # the team cache asks the store again within a second (ingest.auth.RETRY_S): checked again
        deadline = time.monotonic() + 10
        while (status := push(server, "trip", trip(itin_id(6)), "pk_not_a_known_key")[0]) == 503 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 401
        assert push(server, "trip", trip(itin_id(7)), key)[0] == 200
        acked.append(("trips", itin_id(7)))

        def lake() -> dict[str, set[str]]:
            out = {}
            for table, col in (("trips", "itin_id"), ("crashes", "crash_id")):
                rows = json.loads(run_cli("sql", "--json", "--catalog", direct, f"SELECT {col} AS id FROM {table}",
                                          data=data).stdout)
                out[table] = {r["id"] for r in rows}
            return out
        want = {t: {i for tt, i in acked if tt == t and i != gone} for t in ("trips", "crashes")}
        deadline = time.monotonic() + 60
        while (seen := lake()) != want and time.monotonic() < deadline:
            time.sleep(0.5)
        assert seen == want
        diagnoses = json.loads(run_cli("sql", "--json", "--catalog", direct, "SELECT user_id FROM diagnoses",
                                       data=data).stdout)
        assert [r["user_id"] for r in diagnoses] == ["driver-x"]
    finally:
        server.proc.terminate()
        server.proc.wait(15)
        out = server.output()
        server.stop()
    # one line when the outage begins and one when it ends, not one per request
    assert out.count("the teams' store cannot be reached") == 1, out
    assert out.count("the teams' store is reachable again") == 1, out


def test_pushes_while_the_catalog_hangs(postgres, tmp_path):  # noqa: F811
    """PostgreSQL that neither answers nor refuses: the receiver's event loop waits at most a
    half a second for the catalog's check (then serves the team cache), deletions get 503 at
    once (the check before they are written failed), and everything resumes when it answers. (A
    publication that hangs after the check passed: test_a_hanging_catalog_delays_deletions_only.)"""
    direct = postgres.fresh_database("down_hangs")
    proxy = TcpProxy(postgres.host, postgres.port)  # pause(): connections open, nothing forwarded
    key = json.loads(run_cli("teams", "create", "acme", "--json", "--catalog", direct, data=tmp_path / "admin")
                     .stdout)["pushApiKey"]
    data = tmp_path / "node"
    server = ServerProcess(data, "--catalog", direct.replace(f"{postgres.host}:{postgres.port}",
                                                             f"127.0.0.1:{proxy.port}"), "--iceberg-interval", "0")
    try:
        assert push(server, "trip", trip(itin_id(1)), key)[0] == 200
        assert push(server, "trip/event", deletion(itin_id(9)), key)[0] == 200
        proxy.pause()
        for n in range(2, 5):
            started = time.monotonic()
            assert push(server, "trip", trip(itin_id(n)), key)[0] == 200
            assert time.monotonic() - started < 2
        for _ in range(2):  # refused before the log: the catalog did not answer its check
            started = time.monotonic()
            status, headers, body = push(server, "trip/event", deletion(itin_id(1)), key)
            assert status == 503 and headers["Retry-After"] and body["error"] == "catalog_unavailable"
            assert time.monotonic() - started < 2
        assert push(server, "trip", trip(itin_id(5)), key)[0] == 200
        proxy.resume()
        deadline = time.monotonic() + 30
        while (status := push(server, "trip/event", deletion(itin_id(1)), key)[0]) != 200 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
        want = {itin_id(n) for n in range(2, 6)}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            rows = json.loads(run_cli("sql", "--json", "--catalog", direct, "SELECT itin_id FROM trips",
                                      data=data).stdout)
            if {r["itin_id"] for r in rows} == want:
                break
            time.sleep(0.5)
        assert {r["itin_id"] for r in rows} == want
    finally:
        server.proc.terminate()
        server.proc.wait(15)
        out = server.output()
        server.stop()
        proxy.close()
    assert out.count("the teams' store cannot be reached") == 1, out


def test_a_node_that_authenticated_nobody_yet_rides_an_outage_out(catalog, tmp_path):
    """The receiver loads the teams at start: a node whose first push arrives during an outage
    acknowledges it with the key it loaded (before: 503, the cache was filled at the first push)."""
    direct, via_proxy, proxy = catalog
    key = json.loads(run_cli("teams", "create", "acme", "--json", "--catalog", direct, data=tmp_path / "admin")
                     .stdout)["pushApiKey"]
    server = ServerProcess(tmp_path / "node", "--catalog", via_proxy, "--iceberg-interval", "0")
    try:
        proxy.down()
        status, _, body = push(server, "trip", trip(itin_id(1)), key)
        assert status == 200 and body["status"] == "OK", body
        status, headers, body = push(server, "trip", trip(itin_id(2)), "pk_not_a_known_key")
        assert status == 503 and int(headers["Retry-After"]) > 0, body
    finally:
        proxy.up()
        server.stop()
