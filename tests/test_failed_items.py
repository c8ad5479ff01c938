"""FAILED items (issue 13, point 7): listed over HTTP, a retry that fails again keeps the item's id
and says so in its task (``nbFixedItems`` / ``nbStillFailedItems``), diagnoses have a push report
and a retry too. The catalog's part runs on both backends (SQLite, and a real PostgreSQL from
tests/services.py); the HTTP part on a real server on loopback with real compactions."""
from __future__ import annotations

import json

import orjson
import pytest

import queries
from ingest.log import LogWriter
from ingest.record import Kind
from lake.catalog import Catalog, Commit, FailedRow, ResolvedRow, TaskDone
from pushlake import failpoints
from pushlake.api import make_app
from pushlake.api.openapi import document
from pushlake.cli import build_parser
from tests.conftest import compact, settings
from tests.helpers import itin_id, run_cli, trip
from tests.services import backend_url
from tests.test_openapi import check

H = "x-dq-enterprise-api-key"
DAY_US = 1737331200_000000  # 2025-01-20T00:00:00Z


# -- the catalog, on both backends --------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def url(request) -> str | None:
    return backend_url(request, "failed_")


@pytest.fixture
def cat(tmp_path, url):
    c = Catalog(tmp_path, url=url)
    yield c
    c.close()


def failed(n: int, key: str, kind: int = Kind.TRIP, team: str = "acme", reason: str = "bad") -> FailedRow:
    return FailedRow(kind, team, key, "p0", n, DAY_US + n, reason)


def test_failing_again_keeps_the_item_its_id_and_counts_the_attempt(cat):
    cat.commit(Commit("append", failed=[failed(1, "a"), failed(2, "b")]))
    before = {f.offset: f for f in cat.failed_items()}
    assert [(f.attempts, f.reason) for f in before.values()] == [(1, "bad"), (1, "bad")]
    cat.commit(Commit("retry", failed=[failed(1, "a", reason="worse")]))
    after = {f.offset: f for f in cat.failed_items()}
    assert (after[1].id, after[1].reason, after[1].attempts, after[1].status) == (before[1].id, "worse", 2, "FAILED")
    assert after[2] == before[2]
    assert len(cat.failed_items(None)) == 2  # no new row
    # an item settled meanwhile (a newer good push of its key) stays settled if its retry fails
    cat.commit(Commit("append", resolved=[ResolvedRow(Kind.TRIP, "acme", "b", DAY_US + 10)]))
    cat.commit(Commit("retry", failed=[failed(2, "b", reason="again")]))
    (b,) = [f for f in cat.failed_items(None) if f.offset == 2]
    assert (b.id, b.status, b.reason, b.attempts) == (before[2].id, "RESOLVED", "bad", 1)


def test_a_task_counts_its_items_fixed_and_still_failed(cat):
    cat.commit(Commit("append", failed=[failed(i, f"k{i}") for i in (1, 2, 3)]))
    ids = [f.id for f in cat.failed_items()]
    assert cat.create_task("PUSH_FAILED_TRIPS", "t1") == ("t1", 3)
    t = cat.get_task("t1")
    assert (t.status, t.nb_items, t.nb_remaining, t.nb_fixed, t.nb_still_failed, t.error) == ("PENDING", 3, 3, 0, 0, None)
    # first chunk: k1 fails again, k2 is stored (its FAILED item resolved)
    cat.commit(Commit("retry", failed=[failed(1, "k1", reason="still")],
                      resolved=[ResolvedRow(Kind.TRIP, "acme", "k2", DAY_US + 2)], task=TaskDone("t1", ids[:2])))
    t = cat.get_task("t1")
    assert (t.status, t.nb_remaining, t.nb_fixed, t.nb_still_failed, t.completed_at) == ("IN_PROGRESS", 1, 1, 1, None)
    # the same items again (a chunk committed twice) change nothing; the last one fails again
    cat.commit(Commit("retry", task=TaskDone("t1", ids[:2])))
    cat.commit(Commit("retry", failed=[failed(3, "k3")], task=TaskDone("t1", ids[2:])))
    t = cat.get_task("t1")
    assert (t.status, t.nb_remaining, t.nb_fixed, t.nb_still_failed) == ("COMPLETED", 0, 1, 2) and t.completed_at
    assert [(f.id, f.attempts) for f in cat.failed_items()] == [(ids[0], 2), (ids[2], 2)]
    # nothing FAILED of a kind: a task COMPLETED at once, with nothing in it
    assert cat.create_task("PUSH_FAILED_DIAGNOSES", "t2") == ("t2", 0)
    t = cat.get_task("t2")
    assert (t.status, t.nb_items, t.nb_fixed, t.nb_still_failed) == ("COMPLETED", 0, 0, 0)
    cat.fail_task("t1", "ValueError: boom")
    assert (cat.get_task("t1").status, cat.get_task("t1").error) == ("FAILED", "ValueError: boom")


def test_failed_items_by_kind_team_and_page(cat):
    rows = [failed(1, "t1"), failed(2, "c1", Kind.CRASH), failed(3, "t2", team="other"), failed(4, "t3"),
            failed(5, "d1", Kind.DIAGNOSIS)]
    cat.commit(Commit("append", failed=rows))
    cat.commit(Commit("append", resolved=[ResolvedRow(Kind.TRIP, "acme", "t3", DAY_US + 99)]))
    ids = {f.key: f.id for f in cat.failed_items(None)}
    assert [f.key for f in cat.failed_items("FAILED", Kind.TRIP)] == ["t1", "t2"]
    assert [f.key for f in cat.failed_items("FAILED", Kind.TRIP, "acme")] == ["t1"]
    assert [f.key for f in cat.failed_items("FAILED", None, None, 0, 2)] == ["t1", "c1"]
    assert [f.key for f in cat.failed_items("FAILED", None, None, ids["c1"], 2)] == ["t2", "d1"]
    assert cat.failed_items("FAILED", Kind.DIAGNOSIS, "other") == []
    assert [f.key for f in cat.failed_items(None, Kind.TRIP)] == ["t1", "t2", "t3"]


def test_a_catalog_made_before_the_columns_gets_them(tmp_path, url):
    """An older catalog (no attempts, no task outcome) is migrated at the next open by a writer
    (on SQLite by a reader too); its items count one attempt."""
    c = Catalog(tmp_path, url=url)
    c.commit(Commit("append", failed=[failed(1, "a")]))
    c.create_task("PUSH_FAILED_TRIPS", "t1")
    with c.db.tx():
        for table, column in (("failed", "attempts"), ("tasks", "nb_fixed"), ("tasks", "nb_still_failed"),
                              ("task_items", "still_failed")):
            c.db.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    c.close()
    c = Catalog(tmp_path, readonly=url is None, url=url)
    try:
        assert [(f.key, f.attempts) for f in c.failed_items()] == [("a", 1)]
        t = c.get_task("t1")
        assert (t.nb_items, t.nb_remaining, t.nb_fixed, t.nb_still_failed) == (1, 1, 0, 0)
    finally:
        c.close()


# -- over HTTP --------------------------------------------------------------------------------------------
class Api:
    def __init__(self, client, key: str):
        self.client, self.key, self.doc = client, key, document()

    async def get(self, path: str, template: str | None = None, expect: int = 200, key: str | None = None, **params):
        """GET with the enterprise key; the answer is checked against the OpenAPI document."""
        r = await self.client.get(path, params=params, headers={H: self.key if key is None else key})
        assert r.status == expect, (path, params, r.status, await r.text())
        return await check(self.doc, "get", template or path, r)

    async def post(self, path: str, body=None, expect: int = 200):
        r = await self.client.post(path, data=orjson.dumps(body) if body is not None else None,
                                   headers={H: self.key, "Content-Type": "application/json"})
        assert r.status == expect, (path, r.status, await r.text())
        return await check(self.doc, "post", path, r)

    async def push(self, kind: str, body, key: str) -> int:
        r = await self.client.post(f"/push/{kind}", data=orjson.dumps(body),
                                   headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        assert r.status == 200, await r.text()
        return (await r.json())["offset"]

    async def report(self, plural: str, **q) -> list[dict]:
        body = await self.get(f"/v1/enterprise/push/{plural}/report",
                              **{"startDate": "2000-01-01", "endDate": "2100-01-01", **q})
        return body["items"]

    async def failed(self, plural: str, **q) -> dict:
        return await self.get(f"/v1/enterprise/push/{plural}/failed", **q)

    async def task(self, task_id: str, **kw) -> dict:
        return await self.get(f"/v1/enterprise/task/{task_id}", "/v1/enterprise/task/{taskId}", **kw)


@pytest.fixture
async def api(aiohttp_client, data):
    async def make() -> Api:
        client = await aiohttp_client(make_app(settings(data)))
        return Api(client, (data / "enterprise.key").read_text().strip())
    return make


def counts(item: dict) -> tuple:
    return item["teamId"], item["received"], item["stored"], item["duplicates"], item["failed"]


async def test_failed_items_are_listed_retried_and_counted(api, aiohttp_client, data, monkeypatch):
    a = await api()
    fleet = (await a.post("/v1/enterprise/team", {"teamId": "fleet"}))["pushApiKey"]
    other = (await a.post("/v1/enterprise/team", {"teamId": "other"}))["pushApiKey"]
    # a good diagnosis that fails while the failpoint is set (the cause, "fixed" by unsetting it)
    heartbeat = {"userId": "u1", "smartphoneData": {"phoneModel": "Pixel 8"}}
    await a.push("diagnosis", heartbeat, fleet)
    monkeypatch.setitem(failpoints._ACTIVE, "plan.project", "bug")
    compact(data)
    monkeypatch.delitem(failpoints._ACTIVE, "plan.project")
    # a trip whose route arrays differ in length: FAILED until DriveQuant pushes it again
    bad = trip(itin_id(7))
    bad["route"]["latitude"] = bad["route"]["latitude"][:7]
    trip_offset = await a.push("trip", bad, fleet)
    for body in ({"userId": "u1", "events": []}, {"userId": "u1", "events": []}, {"userId": "u2"},
                 {"userId": "u3", "events": "nope"}):
        await a.push("diagnosis", body, fleet)
    await a.push("diagnosis", {"userId": "u9"}, other)
    crash_offsets = [await a.push("crash", {"crashId": f"c{i}", "probability": "high"}, fleet) for i in range(3)]
    compact(data)

    # the diagnoses report: per day and team, exact
    assert [counts(x) for x in await a.report("diagnoses")] == [("fleet", 5, 2, 1, 2), ("other", 1, 1, 0, 0)]
    assert [counts(x) for x in await a.report("diagnoses", teamId="other")] == [("other", 1, 1, 0, 0)]

    # the FAILED items, over HTTP
    page = await a.failed("trips")
    (item,) = page["items"]
    assert page["nextAfterId"] is None
    assert {k: v for k, v in item.items() if k not in ("id", "receivedAt", "failedAt")} == {
        "teamId": "fleet", "kind": "trip", "key": itin_id(7), "partition": "p0", "offset": trip_offset,
        "reason": "route.latitude: has 7 samples, route.gpsDate has 10", "attempts": 1}
    assert item["receivedAt"][:10] == (await a.report("trips"))[0]["date"] and item["receivedAt"].endswith("+0000")
    diagnoses = (await a.failed("diagnoses"))["items"]
    assert [(d["key"].split(":")[0], d["reason"], d["attempts"]) for d in diagnoses] == [
        ("u1", "ValueError: injected error at plan.project", 1), ("u3", 'events: expected an array, got "nope"', 1)]
    assert (await a.failed("diagnoses", teamId="other")) == {"items": [], "nextAfterId": None}
    first = await a.failed("crashes", limit="2")
    assert [c["offset"] for c in first["items"]] == crash_offsets[:2]
    assert first["nextAfterId"] == first["items"][1]["id"]
    rest = await a.failed("crashes", limit="2", afterId=str(first["nextAfterId"]))
    assert [c["offset"] for c in rest["items"]] == crash_offsets[2:] and rest["nextAfterId"] is None
    failed_path = "/v1/enterprise/push/trips/failed"
    await a.get(failed_path, expect=404, teamId="ghost")
    for bad_q in ({"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"afterId": "-1"}, {"afterId": "1e3"}):
        await a.get(failed_path, expect=400, **bad_q)
    await a.get(failed_path, expect=401, key="wrong")
    await a.get("/v1/enterprise/push/diagnoses/report", expect=400, startDate="2025-01-02", endDate="2025-01-01")
    await a.get("/v1/enterprise/push/diagnoses/report", expect=400, startDate="2025-1-1", endDate="2025-01-02")
    await a.get("/v1/enterprise/push/diagnoses/report", expect=404, startDate="2025-01-01", endDate="2025-01-02",
                teamId="ghost")

    # retried while the cause is still there: COMPLETED, and it says the item still fails; same id
    t = await a.post("/v1/enterprise/push/trips/failed/retry")
    assert (await a.task(t["taskId"]))["nbStillFailedItems"] == 0  # PENDING: nothing processed yet
    compact(data)
    task = await a.task(t["taskId"])
    assert (task["status"], task["nbItems"], task["nbRemainingItems"], task["nbFixedItems"],
            task["nbStillFailedItems"], task["error"]) == ("COMPLETED", 1, 0, 0, 1, None)
    (again,) = (await a.failed("trips"))["items"]
    assert (again["id"], again["reason"], again["attempts"]) == (item["id"], item["reason"], 2)

    # diagnoses: retried with the failpoint still set, both fail again; without it, one is fixed
    monkeypatch.setitem(failpoints._ACTIVE, "plan.project", "bug")
    t = await a.post("/v1/enterprise/push/diagnoses/failed/retry")
    assert t["nbItems"] == 2
    compact(data)
    monkeypatch.delitem(failpoints._ACTIVE, "plan.project")
    task = await a.task(t["taskId"])
    assert (task["type"], task["status"], task["nbFixedItems"], task["nbStillFailedItems"]) == (
        "PUSH_FAILED_DIAGNOSES", "COMPLETED", 0, 2)
    assert [(d["id"], d["attempts"]) for d in (await a.failed("diagnoses"))["items"]] == [
        (diagnoses[0]["id"], 2), (diagnoses[1]["id"], 2)]
    t = await a.post("/v1/enterprise/push/diagnoses/failed/retry")
    compact(data)
    task = await a.task(t["taskId"])
    assert (task["status"], task["nbItems"], task["nbFixedItems"], task["nbStillFailedItems"]) == ("COMPLETED", 2, 1, 1)
    (left,) = (await a.failed("diagnoses"))["items"]
    assert (left["id"], left["reason"], left["attempts"]) == (diagnoses[1]["id"], diagnoses[1]["reason"], 3)
    assert [counts(x) for x in await a.report("diagnoses")] == [("fleet", 5, 3, 1, 1), ("other", 1, 1, 0, 0)]
    with queries.connect(data) as con:
        assert con.execute("SELECT user_id, phone_model FROM diagnoses WHERE user_id = 'u1' AND phone_model "
                           "IS NOT NULL").fetchall() == [("u1", "Pixel 8")]

    # the trip is fixed at its source: a newer push of it is stored while a retry is queued; the
    # retry finds the item settled, and counts it as fixed
    t = await a.post("/v1/enterprise/push/trips/failed/retry")
    await a.push("trip", trip(itin_id(7)), fleet)
    compact(data)  # the log first, then the task
    task = await a.task(t["taskId"])
    assert (task["status"], task["nbItems"], task["nbFixedItems"], task["nbStillFailedItems"]) == ("COMPLETED", 1, 1, 0)
    assert await a.failed("trips") == {"items": [], "nextAfterId": None}

    # a restart answers the same
    await a.client.close()
    b = Api(await aiohttp_client(make_app(settings(data))), a.key)
    assert [counts(x) for x in await b.report("diagnoses")] == [("fleet", 5, 3, 1, 1), ("other", 1, 1, 0, 0)]
    assert (await b.task(t["taskId"]))["nbFixedItems"] == 1


# -- the command line -------------------------------------------------------------------------------------
def test_pushlake_failed_lists_by_kind_and_retry_prints_the_outcome(data):
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, DAY_US, "acme", itin_id(1), orjson.dumps(trip(itin_id(1)))),
              (Kind.CRASH, DAY_US + 1, "acme", "c1", b'{"crashId": "c1"}')])
    w.close()
    bug = {"PUSHLAKE_FAILPOINT": "plan.project=bug"}
    run_cli("compact", data=data, env=bug)
    rows = json.loads(run_cli("failed", "list", "--kind", "trips", "--json", data=data).stdout)
    assert [(r["kind"], r["key"], r["offset"], r["attempts"], r["received"]) for r in rows] == [
        ("trip", itin_id(1), 0, 1, "2025-01-20T00:00:00+00:00")]
    assert len(json.loads(run_cli("failed", "list", "--json", data=data).stdout)) == 2
    assert json.loads(run_cli("failed", "list", "--kind", "diagnoses", "--json", data=data).stdout) == []
    out = json.loads(run_cli("failed", "retry", "--kind", "trips", "--json", data=data, env=bug).stdout)
    assert {k: out[k] for k in ("status", "nbItems", "nbRemainingItems", "nbFixedItems", "nbStillFailedItems")} == {
        "status": "COMPLETED", "nbItems": 1, "nbRemainingItems": 0, "nbFixedItems": 0, "nbStillFailedItems": 1}
    (row,) = json.loads(run_cli("failed", "list", "--kind", "trips", "--json", data=data).stdout)
    assert (row["id"], row["attempts"]) == (rows[0]["id"], 2)
    out = dict(kv.split("=", 1) for kv in run_cli("failed", "retry", "--kind", "trips", data=data).stdout.split())
    assert {k: v for k, v in out.items() if k != "taskId"} == {
        "nbItems": "1", "status": "COMPLETED", "nbRemainingItems": "0", "nbFixedItems": "1", "nbStillFailedItems": "0"}
    assert [r["kind"] for r in json.loads(run_cli("failed", "list", "--json", data=data).stdout)] == ["crash"]
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args(["failed", "list", "--kind", "deletions"])
    assert refused.value.code == 2
