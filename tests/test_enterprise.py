"""The enterprise API, which mirrors DriveQuant's: teams, OAuth2, hyper-admins, push reports, retry tasks."""
from __future__ import annotations

import asyncio
import base64
import os
import stat

import orjson
import pytest

from lake.compactor import Compactor
from pushlake.api import make_app
from tests.conftest import compact, settings
from tests.helpers import deletion, fixture, fixture_bytes, itin_id, trip

H = "x-dq-enterprise-api-key"


class Api:
    def __init__(self, client, key: str):
        self.client, self.key = client, key

    async def call(self, method: str, path: str, body=None, key: str | None = "default", **kw):
        headers = kw.pop("headers", {})
        if key is not None:
            headers[H] = self.key if key == "default" else key
        data = orjson.dumps(body) if body is not None else None
        r = await self.client.request(method, path, data=data, headers=headers, **kw)
        return r.status, await r.json(content_type=None)

    async def push(self, kind: str, body, key: str):
        r = await self.client.post(f"/push/{kind}", data=orjson.dumps(body),
                                   headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        return r.status


@pytest.fixture
async def api(aiohttp_client, data):
    async def make(**kw) -> Api:
        client = await aiohttp_client(make_app(settings(data, **kw)))
        return Api(client, (data / "enterprise.key").read_text().strip())
    return make


async def test_enterprise_key_is_created_0600_and_required(api, data):
    a = await api()
    assert stat.S_IMODE(os.stat(data / "enterprise.key").st_mode) == 0o600
    routes = [("POST", "/v1/enterprise/team"), ("GET", "/v1/enterprise/teams"),
              ("PUT", "/v1/enterprise/teams/x/status"), ("POST", "/v1/enterprise/hyperadmin"),
              ("GET", "/v1/enterprise/hyperadmins"), ("DELETE", "/v1/enterprise/hyperadmin/x"),
              ("GET", "/v1/enterprise/push/trips/report"), ("GET", "/v1/enterprise/push/crashes/report"),
              ("GET", "/v1/enterprise/push/diagnoses/report"), ("GET", "/v1/enterprise/push/trips/failed"),
              ("GET", "/v1/enterprise/push/crashes/failed"), ("GET", "/v1/enterprise/push/diagnoses/failed"),
              ("POST", "/v1/enterprise/push/trips/failed/retry"), ("POST", "/v1/enterprise/push/crashes/failed/retry"),
              ("POST", "/v1/enterprise/push/diagnoses/failed/retry"), ("GET", "/v1/enterprise/task/x")]
    for method, path in routes:
        for key in (None, "wrong", a.key[:-1]):
            status, body = await a.call(method, path, {}, key=key)
            assert status == 401, (method, path, key)
            assert body["error"] == "unauthorized"


async def test_enterprise_key_from_the_environment(aiohttp_client, data, monkeypatch):
    monkeypatch.setenv("PUSHLAKE_ENTERPRISE_KEY", "ek_from_env")
    client = await aiohttp_client(make_app(settings(data)))
    r = await client.get("/v1/enterprise/teams", headers={H: "ek_from_env"})
    assert r.status == 200
    assert not (data / "enterprise.key").exists()


async def test_teams_create_list_quota_and_errors(api):
    a = await api(max_teams=2)
    status, t = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet-a"})
    assert status == 200 and t["teamId"] == "fleet-a" and t["pushApiKey"] and t["adminApiKey"]
    assert (await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet-a"}))[0] == 409
    for bad in ({"teamId": "../etc"}, {"teamId": ""}, {}, {"teamId": 42}, {"teamId": "a" * 65}):
        assert (await a.call("POST", "/v1/enterprise/team", bad))[0] == 422, bad
    assert (await a.call("POST", "/v1/enterprise/team", None))[0] == 400
    assert (await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet-b"}))[0] == 200
    status, body = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet-c"})
    assert status == 429 and body["error"] == "too_many_requests"
    status, teams = await a.call("GET", "/v1/enterprise/teams")
    assert [(x["teamId"], x["status"]) for x in teams] == [("fleet-a", "ENABLED"), ("fleet-b", "ENABLED")]
    assert all(x["creationDate"].endswith("+0000") and len(x["creationDate"]) == 28 for x in teams)
    assert (await a.push("trip", trip(itin_id(1)), t["pushApiKey"])) == 200


async def test_team_status(api):
    a = await api()
    _, t = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet"})
    assert await a.call("PUT", "/v1/enterprise/teams/fleet/status", {"status": "DISABLED"}) == (200, {"status": "DISABLED"})
    assert (await a.call("PUT", "/v1/enterprise/teams/fleet/status", {"status": "DISABLED"}))[0] == 409
    assert (await a.call("PUT", "/v1/enterprise/teams/ghost/status", {"status": "DISABLED"}))[0] == 404
    assert (await a.call("PUT", "/v1/enterprise/teams/fleet/status", {"status": "PAUSED"}))[0] == 400
    assert await a.push("trip", trip(itin_id(1)), t["pushApiKey"]) == 403
    status, again = await a.call("PUT", "/v1/enterprise/teams/fleet/status", {"status": "ENABLED"})
    assert status == 200 and again["status"] == "ENABLED" and again["pushApiKey"] != t["pushApiKey"]
    assert await a.push("trip", trip(itin_id(1)), t["pushApiKey"]) == 401  # old keys stay revoked
    assert await a.push("trip", trip(itin_id(1)), again["pushApiKey"]) == 200


async def test_disabling_a_team_mid_stream_refuses_its_pushes_at_once(api, data):
    from ingest.log import iter_all_records
    a = await api()
    _, t = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet"})
    _, other = await a.call("POST", "/v1/enterprise/team", {"teamId": "other"})
    after_disable: list[int] = []
    disabled = asyncio.Event()
    stop = asyncio.Event()

    async def stream(key, sink, start):
        n = start
        while not stop.is_set():
            n += 1
            status = await a.push("trip", trip(itin_id(n)), key)
            if disabled.is_set():
                sink.append(status)
    others: list[int] = []
    tasks = [asyncio.create_task(stream(t["pushApiKey"], after_disable, 0)),
             asyncio.create_task(stream(other["pushApiKey"], others, 10**6))]
    await asyncio.sleep(0.3)
    status, _ = await a.call("PUT", "/v1/enterprise/teams/fleet/status", {"status": "DISABLED"})
    assert status == 200
    disabled.set()
    n_logged = sum(1 for _, r in iter_all_records(data, "p0") if r.team == "fleet")
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.gather(*tasks)
    # requests already past authentication may finish; everything sent after the 200 is refused
    assert after_disable.count(403) >= len(after_disable) - 1 and len(after_disable) > 5
    assert sum(1 for _, r in iter_all_records(data, "p0") if r.team == "fleet") <= n_logged + 1
    assert set(others) == {200}


async def test_oauth_client_credentials(api, data):
    a = await api(token_ttl_s=2)
    _, t = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet"})
    form = {"grant_type": "client_credentials", "client_id": "fleet", "client_secret": t["pushApiKey"]}
    r = await a.client.post("/oauth/token", data=form)
    tok = await r.json()
    assert r.status == 200 and tok["token_type"] == "Bearer" and tok["expires_in"] == 2
    assert r.headers["Cache-Control"] == "no-store"
    basic = base64.b64encode(f"fleet:{t['pushApiKey']}".encode()).decode()
    r = await a.client.post("/oauth/token", data={"grant_type": "client_credentials"},
                            headers={"Authorization": f"Basic {basic}"})
    assert r.status == 200
    assert await a.push("trip", trip(itin_id(1)), tok["access_token"]) == 200
    assert await a.push("trip", trip(itin_id(2)), tok["access_token"] + "x") == 401
    errors = [
        ({**form, "client_secret": "wrong"}, {}, 401, "invalid_client"),
        ({**form, "client_id": "ghost"}, {}, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, {}, 401, "invalid_client"),
        ({**form, "grant_type": "password"}, {}, 400, "unsupported_grant_type"),
        ({k: v for k, v in form.items() if k != "grant_type"}, {}, 400, "invalid_request"),
        ({"grant_type": "client_credentials"}, {"Authorization": "Basic " + base64.b64encode(b"fleet:bad").decode()},
         401, "invalid_client"),
    ]
    for body, headers, status, code in errors:
        r = await a.client.post("/oauth/token", data=body, headers=headers)
        assert (r.status, (await r.json())["error"]) == (status, code), body
    r = await a.client.post("/oauth/token", json=form)
    assert r.status == 400 and (await r.json())["error"] == "invalid_request"
    # expiry
    await asyncio.sleep(2.1)
    assert await a.push("trip", trip(itin_id(3)), tok["access_token"]) == 401
    # disabling refuses tokens at once; enabling again does not revive them
    r = await a.client.post("/oauth/token", data=form)
    tok = await r.json()
    await a.call("PUT", "/v1/enterprise/teams/fleet/status", {"status": "DISABLED"})
    assert await a.push("trip", trip(itin_id(4)), tok["access_token"]) == 403
    r = await a.client.post("/oauth/token", data=form)
    assert r.status == 401
    await a.call("PUT", "/v1/enterprise/teams/fleet/status", {"status": "ENABLED"})
    assert await a.push("trip", trip(itin_id(5)), tok["access_token"]) == 401


PASSWORDS = [
    ("Short1!a", "at least 12 characters"),
    ("nouppercase1!xx", "uppercase"),
    ("NOLOWERCASE1!XX", "lowercase"),
    ("NoDigitsHere!!", "digit"),
    ("NoSpecials1234", "special character"),
    ("Spaces Only 12", "special character"),
]


async def test_hyperadmins(api, data):
    a = await api(max_hyperadmins=2)
    good = {"userId": "jane.doe@example.com", "firstname": "Jane", "lastname": "Doe", "password": "PnsPYthv4N?zI%CK"}
    for pw, rule in PASSWORDS:
        status, body = await a.call("POST", "/v1/enterprise/hyperadmin", {**good, "password": pw})
        assert status == 422 and rule in body["message"], (pw, body)
    for field, v in (("userId", "curly{brace}"), ("userId", "tilde~"), ("firstname", ""), ("lastname", None), ("userId", "é")):
        assert (await a.call("POST", "/v1/enterprise/hyperadmin", {**good, field: v}))[0] == 422, field
    status, body = await a.call("POST", "/v1/enterprise/hyperadmin", good)
    assert status == 200 and body == {"userId": good["userId"], "firstname": "Jane", "lastname": "Doe"}
    assert (await a.call("POST", "/v1/enterprise/hyperadmin", good))[0] == 409
    assert (await a.call("POST", "/v1/enterprise/hyperadmin", {**good, "userId": "second"}))[0] == 200
    status, body = await a.call("POST", "/v1/enterprise/hyperadmin", {**good, "userId": "third"})
    assert status == 429
    status, listed = await a.call("GET", "/v1/enterprise/hyperadmins")
    assert [x["userId"] for x in listed] == [good["userId"], "second"]
    assert set(listed[0]) == {"userId", "firstname", "lastname", "creationDate"}
    assert good["password"].encode() not in (data / "admin.db").read_bytes()
    assert (await a.call("DELETE", "/v1/enterprise/hyperadmin/second"))[0] == 200
    assert (await a.call("DELETE", "/v1/enterprise/hyperadmin/second"))[0] == 404
    assert [x["userId"] for x in (await a.call("GET", "/v1/enterprise/hyperadmins"))[1]] == [good["userId"]]


async def _report(a, kind="trips", **q):
    params = {"startDate": "2020-01-01", "endDate": "2100-01-01", **q}
    status, body = await a.call("GET", f"/v1/enterprise/push/{kind}/report", params=params)
    assert status == 200, body
    return body["items"]


async def test_push_reports_are_exact_and_survive_restarts(api, aiohttp_client, data):
    a = await api()
    _, t = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet"})
    _, u = await a.call("POST", "/v1/enterprise/team", {"teamId": "other"})
    k = t["pushApiKey"]
    for i in range(5):
        assert await a.push("trip", trip(itin_id(i)), k) == 200
    await a.push("trip", trip(itin_id(0)), k)                 # identical re-push: duplicate
    await a.push("trip", trip(itin_id(1), user="changed"), k)  # a new version: stored
    await a.push("trip", fixture("trip_odd_shape.json"), k)    # failed
    await a.push("trip/event", deletion(itin_id(2)), k)       # deleted
    await a.push("trip/event", deletion(itin_id(2)), k)       # the deletion, retried
    await a.push("trip", trip(itin_id(2)), k)                 # a retry after the deletion: discarded
    await a.push("crash", fixture("crash.json"), k)
    await a.push("crash", fixture("crash.json"), k)
    await a.push("trip", trip(itin_id(50)), u["pushApiKey"])
    compact(data)
    items = await _report(a)
    [fleet] = [x for x in items if x["teamId"] == "fleet"]
    assert {k: fleet[k] for k in ("received", "stored", "duplicates", "failed", "deleted", "discarded")} == {
        "received": 9, "stored": 6, "duplicates": 1, "failed": 1, "deleted": 2, "discarded": 1}
    assert [x["teamId"] for x in await _report(a, teamId="other")] == ["other"]
    crashes = await _report(a, "crashes")
    assert [(x["received"], x["stored"], x["duplicates"], x["failed"]) for x in crashes] == [(2, 1, 1, 0)]
    assert await _report(a, startDate="2000-01-01", endDate="2000-01-02") == []
    for q, status in (({"startDate": "2025-1-1", "endDate": "2025-01-02"}, 400), ({"endDate": "2025-01-02"}, 400),
                      ({"startDate": "2025-01-03", "endDate": "2025-01-02"}, 400),
                      ({"startDate": "2025-01-01", "endDate": "2025-01-02", "teamId": "ghost"}, 404)):
        assert (await a.call("GET", "/v1/enterprise/push/trips/report", params=q))[0] == status, q
    # a restart: a new server on the same data directory answers the same
    await a.client.close()
    b = Api(await aiohttp_client(make_app(settings(data))), a.key)
    assert await _report(b) == items
    # and a rebuild from the log counts the same
    from lake.catalog import Catalog
    from lake.rebuild import rebuild
    rebuild(data, data.parent / "rebuilt")
    cat = Catalog(data.parent / "rebuilt")
    assert cat.report(1, "2000-01-01", "2100-01-01") == [{k: v for k, v in x.items()} for x in items]
    cat.close()


async def test_retry_task_turns_failed_items_into_rows_once_the_cause_is_fixed(api, data, monkeypatch):
    a = await api()
    _, t = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet"})
    odd = trip(itin_id(9))
    odd["itineraryStatistics"]["distance"] = "fifteen km"
    await a.push("trip", odd, t["pushApiKey"])
    await a.push("crash", {"crashId": "c1", "probability": "high"}, t["pushApiKey"])
    compact(data)
    assert (await _report(a))[0]["failed"] == 1
    _, listed = await a.call("GET", "/v1/enterprise/push/trips/failed")
    (item,) = listed["items"]
    assert (item["key"], item["attempts"]) == (odd["itinId"], 1) and "fifteen km" in item["reason"]
    # retried while the cause is still there: the item stays FAILED, and the task says so
    status, task = await a.call("POST", "/v1/enterprise/push/trips/failed/retry")
    assert status == 200 and task["nbItems"] == 1 and len(task["taskId"]) == 24
    status, again = await a.call("POST", "/v1/enterprise/push/trips/failed/retry")
    assert status == 409  # one task of a type at a time
    status, crash_task = await a.call("POST", "/v1/enterprise/push/crashes/failed/retry")
    assert status == 200 and crash_task["nbItems"] == 1  # another type may run
    status, body = await a.call("GET", f"/v1/enterprise/task/{task['taskId']}")
    assert (body["status"], body["nbItems"], body["nbRemainingItems"], body["completedAt"]) == ("PENDING", 1, 1, None)
    assert body["type"] == "PUSH_FAILED_TRIPS"
    compact(data)
    status, body = await a.call("GET", f"/v1/enterprise/task/{task['taskId']}")
    assert (body["status"], body["nbRemainingItems"]) == ("COMPLETED", 0) and body["completedAt"]
    assert (body["nbFixedItems"], body["nbStillFailedItems"]) == (0, 1)
    _, listed = await a.call("GET", "/v1/enterprise/push/trips/failed")
    assert [(x["id"], x["attempts"]) for x in listed["items"]] == [(item["id"], 2)]  # the same item, not a new one
    _, failed = compact(data)
    assert len(failed) == 2
    # the cause is fixed (a new release that reads "fifteen km"), the retry stores the trip
    import lake.project as lp
    orig = lp.CONVERT["f64"]
    monkeypatch.setitem(lp.CONVERT, "f64", lambda v, p: 15000.0 if v == "fifteen km" else orig(v, p))
    status, task = await a.call("POST", "/v1/enterprise/push/trips/failed/retry")
    assert status == 200 and task["nbItems"] == 1
    compact(data)
    _, body = await a.call("GET", f"/v1/enterprise/task/{task['taskId']}")
    assert (body["status"], body["nbFixedItems"], body["nbStillFailedItems"]) == ("COMPLETED", 1, 0)
    assert (await a.call("GET", "/v1/enterprise/push/trips/failed"))[1] == {"items": [], "nextAfterId": None}
    import queries
    con = queries.connect(data)
    assert con.execute("SELECT itin_id, distance_m FROM trips").fetchall() == [(odd["itinId"], 15000.0)]
    report = (await _report(a))[0]
    assert (report["failed"], report["stored"]) == (0, 1)
    assert (await a.call("GET", "/v1/enterprise/task/nope"))[0] == 404


async def test_an_interrupted_task_is_resumed(api, data):
    from tests.helpers import run_cli
    a = await api()
    _, t = await a.call("POST", "/v1/enterprise/team", {"teamId": "fleet"})
    for i in range(3):
        await a.push("crash", {"crashId": f"c{i}", "probability": "high"}, t["pushApiKey"])
    compact(data)
    _, task = await a.call("POST", "/v1/enterprise/push/crashes/failed/retry")
    assert task["nbItems"] == 3
    with Compactor(data) as c:
        assert c.run_tasks(chunk=1) == 1
    _, body = await a.call("GET", f"/v1/enterprise/task/{task['taskId']}")
    assert (body["status"], body["nbRemainingItems"]) == ("IN_PROGRESS", 2)
    p = run_cli("compact", data=data, check=False, env={"PUSHLAKE_FAILPOINT": "task.before_commit"})
    assert p.returncode == -9  # killed in the middle of the task
    _, body = await a.call("GET", f"/v1/enterprise/task/{task['taskId']}")
    assert (body["status"], body["nbRemainingItems"]) == ("IN_PROGRESS", 2)
    run_cli("compact", data=data)  # the next compactor resumes it
    _, body = await a.call("GET", f"/v1/enterprise/task/{task['taskId']}")
    assert (body["status"], body["nbRemainingItems"]) == ("COMPLETED", 0)
    _, body = await a.call("GET", f"/v1/enterprise/task/{task['taskId']}")
    assert (body["nbFixedItems"], body["nbStillFailedItems"]) == (0, 3)  # the chunk before the kill counted once
    out = orjson.loads(run_cli("failed", "retry", "--kind", "crashes", "--json", data=data).stdout)
    assert (out["nbItems"], out["nbFixedItems"], out["nbStillFailedItems"]) == (3, 0, 3)  # the cause was not fixed
