"""Team-scoped reads over HTTP: a team key sees its team only; a hyper-admin sees all teams;
no SQL reaches other teams' files or the host."""
from __future__ import annotations

import asyncio
import base64
import csv
import io

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ingest.log import LogWriter
from ingest.record import Kind
from pushlake.api import make_app
from pushlake.hyperadmins import HyperAdmins
from pushlake.teams import Teams
from tests.conftest import compact, settings
from tests.helpers import itin_id, trip

ADMIN_PW = "PnsPYthv4N?zI%CK"


@pytest.fixture
async def lake(aiohttp_client, data):
    teams = Teams(data)
    keys = {t: teams.create(t) for t in ("acme", "globex")}
    teams.close()
    admins = HyperAdmins(data)
    admins.create("root@example.com", "Root", "Admin", ADMIN_PW)
    admins.close()
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_750_000_000_000_000 + i, "acme" if i < 6 else "globex", itin_id(i),
               orjson.dumps(trip(itin_id(i), start=f"2025-03-0{1 + i % 3}T10:00:00.000+0000"))) for i in range(9)])
    w.close()
    compact(data)

    async def make(**kw):
        client = await aiohttp_client(make_app(settings(data, **kw)))
        return client, keys
    return make


def bearer(k: str) -> dict:
    return {"Authorization": f"Bearer {k}"}


def basic(user: str, pw: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}


async def q(client, sql: str, headers: dict, accept: str = "application/json", **extra):
    r = await client.post("/v1/query", data=orjson.dumps({"sql": sql, **extra}), headers={**headers, "Accept": accept})
    return r


async def test_team_key_reads_its_team_and_hyperadmin_reads_all(lake):
    client, keys = await lake()
    r = await q(client, "SELECT team_id, count(*) AS n FROM trips GROUP BY 1", bearer(keys["acme"]["adminApiKey"]))
    body = await r.json()
    assert r.status == 200 and body["rows"] == [{"team_id": "acme", "n": 6}] and body["truncated"] is False
    assert body["columns"] == [{"name": "team_id", "type": "string"}, {"name": "n", "type": "int64"}]
    r = await q(client, "SELECT team_id, count(*) AS n FROM trips GROUP BY 1 ORDER BY 1", basic("root@example.com", ADMIN_PW))
    assert (await r.json())["rows"] == [{"team_id": "acme", "n": 6}, {"team_id": "globex", "n": 3}]
    r = await q(client, "SELECT DISTINCT team_id FROM trips", basic("root@example.com", ADMIN_PW), teamId="globex")
    assert (await r.json())["rows"] == [{"team_id": "globex"}]
    # a team key cannot ask for another team
    r = await q(client, "SELECT 1", bearer(keys["acme"]["adminApiKey"]), teamId="globex")
    assert r.status == 403
    for bad in (["globex"], {"a": 1}, 7):  # a teamId that is not a string is a 400, not a 500
        r = await q(client, "SELECT 1", basic("root@example.com", ADMIN_PW), teamId=bad)
        assert r.status == 400 and (await r.json())["error"] == "invalid_request", bad


@pytest.mark.parametrize("headers,status", [
    ({}, 401), (bearer("nope"), 401), (basic("root@example.com", "wrong"), 401), (basic("ghost", ADMIN_PW), 401),
    ({"Authorization": "Digest x"}, 401)])
async def test_reads_need_credentials(lake, headers, status):
    client, keys = await lake()
    r = await q(client, "SELECT 1", headers)
    assert r.status == status
    r = await client.get("/v1/export/trips", headers=headers)
    assert r.status == status


async def test_push_key_is_not_a_read_key_and_disabled_team_is_refused(lake, data):
    client, keys = await lake()
    assert (await q(client, "SELECT 1", bearer(keys["acme"]["pushApiKey"]))).status == 401
    t = Teams(data)
    t.set_status("acme", "DISABLED")
    t.close()
    await asyncio.sleep(0.02)  # another process's change is seen within 10 ms
    assert (await q(client, "SELECT 1", bearer(keys["acme"]["adminApiKey"]))).status == 403


HTTP_ESCAPES = [
    "SELECT * FROM read_parquet('{lake}/trips/team=globex/*/*.parquet')",
    "SELECT * FROM read_parquet('{lake}/trips/team=acme/../team=globex/*/*.parquet')",
    "SELECT * FROM read_parquet('{lake}/**/*.parquet')",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "COPY (SELECT * FROM trips) TO '{lake}/trips/team=acme/stolen.csv'",
    "ATTACH '{data}/admin.db' AS a",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT getenv('HOME')",
    "SET enable_external_access = true",
    "SET VARIABLE pl_trips = ['{lake}/trips/team=globex/x.parquet']",
    "DELETE FROM _pushlake_deleted",
    "SELECT 1; SELECT 2",
    "PRAGMA database_list",
    "CALL pragma_version()",
]


@pytest.mark.parametrize("sql", HTTP_ESCAPES)
async def test_escape_routes_over_http_get_nothing(lake, data, sql):
    client, keys = await lake()
    text = sql.format(lake=data / "lake", data=data)
    for who in (bearer(keys["acme"]["adminApiKey"]), basic("root@example.com", ADMIN_PW)):
        if "team=globex" in text and who is not None and "Basic" in who["Authorization"]:
            continue  # a hyper-admin may read globex, through the views
        r = await q(client, text, who)
        body = await r.json()
        assert r.status in (400, 403), (sql, body)
        assert "rows" not in body
    assert not list((data / "lake").rglob("stolen.csv"))


async def test_hyperadmin_cannot_reach_the_host_either(lake):
    client, _ = await lake()
    r = await q(client, "SELECT * FROM read_text('/etc/passwd')", basic("root@example.com", ADMIN_PW))
    assert r.status == 403


async def test_enterprise_routes_refuse_read_keys(lake):
    client, keys = await lake()
    for h in (bearer(keys["acme"]["adminApiKey"]), basic("root@example.com", ADMIN_PW)):
        r = await client.get("/v1/enterprise/teams", headers=h)
        assert r.status == 401


async def test_bad_sql_and_bad_requests(lake):
    client, keys = await lake()
    h = bearer(keys["acme"]["adminApiKey"])
    r = await q(client, "SELEC nonsense", h)
    assert r.status == 400 and (await r.json())["error"] == "invalid_query"
    r = await q(client, "SELECT * FROM no_such_table", h)
    assert r.status == 400
    r = await client.post("/v1/query", data=b"not json", headers=h)
    assert r.status == 400
    r = await client.post("/v1/query", data=orjson.dumps({"sql": ""}), headers=h)
    assert r.status == 400
    r = await q(client, "SELECT 1", h, accept="image/png")
    assert r.status == 406


async def test_result_formats(lake):
    client, keys = await lake()
    h = bearer(keys["acme"]["adminApiKey"])
    sql = "SELECT itin_id, distance_m FROM trips ORDER BY 1"
    r = await q(client, sql, h, accept="text/csv")
    rows = list(csv.DictReader(io.StringIO(await r.text())))
    assert r.headers["Content-Type"].startswith("text/csv") and len(rows) == 6
    r = await q(client, sql, h, accept="application/vnd.apache.arrow.stream")
    t = pa.ipc.open_stream(await r.read()).read_all()
    assert t.num_rows == 6 and t.column_names == ["itin_id", "distance_m"]
    r = await q(client, sql, h, accept="application/vnd.apache.parquet")
    t = pq.read_table(io.BytesIO(await r.read()))
    assert t["itin_id"].to_pylist() == [itin_id(i) for i in range(6)]


async def test_row_and_time_limits(lake):
    client, keys = await lake(query_max_rows=4, query_timeout_s=0.5)
    h = bearer(keys["acme"]["adminApiKey"])
    r = await q(client, "SELECT * FROM trip_samples", h)
    body = await r.json()
    assert body["rowCount"] == 4 and body["truncated"] is True and r.headers["X-Pushlake-Truncated"] == "true"
    r = await q(client, "SELECT count(*) FROM range(100000000000) a, range(1000) b", h)
    body = await r.json()
    assert r.status == 400 and body["error"] == "query_timeout"
    r = await q(client, "SELECT count(*) AS n FROM trips", h)  # the server is still fine
    assert (await r.json())["rows"] == [{"n": 6}]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
async def test_export_streams_the_team_only(lake, fmt):
    client, keys = await lake()
    r = await client.get(f"/v1/export/trip_samples?format={fmt}&from=2025-03-02&to=2025-03-03",
                         headers=bearer(keys["acme"]["adminApiKey"]))
    assert r.status == 200
    raw = await r.read()
    if fmt == "parquet":
        rows = pq.read_table(io.BytesIO(raw)).to_pylist()
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(raw.decode())))
    else:
        rows = [orjson.loads(line) for line in raw.splitlines()]
    assert {r["team_id"] for r in rows} == {"acme"}
    assert len(rows) == 40 and int(r.headers["X-Pushlake-Rows"]) == 40
    r = await client.get("/v1/export/trips?teamId=globex", headers=bearer(keys["acme"]["adminApiKey"]))
    assert r.status == 403
    r = await client.get("/v1/export/trips?format=parquet&teamId=globex", headers=basic("root@example.com", ADMIN_PW))
    assert pq.read_table(io.BytesIO(await r.read())).num_rows == 3
    r = await client.get("/v1/export/nope", headers=bearer(keys["acme"]["adminApiKey"]))
    assert r.status == 404
    for bad in ("yesterday", "2025-W01-1", "20250101", "2025-01-01T00:00", "2025-1-1"):
        r = await client.get(f"/v1/export/trips?from={bad}", headers=bearer(keys["acme"]["adminApiKey"]))
        assert r.status == 400 and "YYYY-MM-DD" in (await r.json())["message"], bad


async def test_abandoned_exports_do_not_exhaust_the_query_workers(lake, data):
    """Clients that hang up mid-download must not leave workers blocked on a full queue."""
    import aiohttp
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_760_000_000_000_000 + i, "acme", itin_id(1000 + i),
               orjson.dumps(trip(itin_id(1000 + i)))) for i in range(300)])
    w.close()
    compact(data)
    client, keys = await lake()
    url = str(client.make_url("/v1/export/trip_samples?format=jsonl"))
    for _ in range(4):  # more than the 2 query workers
        async with aiohttp.ClientSession() as s:
            r = await s.get(url, headers=bearer(keys["acme"]["adminApiKey"]))
            assert r.status == 200
            await r.content.read(1000)
            r.close()  # hang up
    await asyncio.sleep(1.5)
    r = await asyncio.wait_for(q(client, "SELECT count(*) AS n FROM trips", bearer(keys["acme"]["adminApiKey"])), 10)
    assert (await r.json())["rows"] == [{"n": 306}]



async def test_a_deletion_acknowledged_is_gone_from_reads_before_any_compaction(lake):
    """The query worker (confined, read-only) reads pending.db too: a deletion's 200 holds for
    reads over HTTP at once, the team's and a hyper-admin's."""
    from tests.helpers import deletion
    client, keys = await lake()
    r = await client.post("/push/trip/event", data=orjson.dumps(deletion(itin_id(1))),
                          headers={**bearer(keys["acme"]["pushApiKey"]), "Content-Type": "application/json"})
    assert r.status == 200
    sql = "SELECT itin_id FROM trips UNION SELECT itin_id FROM trip_samples UNION SELECT itin_id FROM trip_events"
    for who in (bearer(keys["acme"]["adminApiKey"]), basic("root@example.com", ADMIN_PW)):
        body = await (await q(client, sql, who)).json()
        ids = {row["itin_id"] for row in body["rows"]}
        assert itin_id(1) not in ids and itin_id(0) in ids and not body["truncated"]
