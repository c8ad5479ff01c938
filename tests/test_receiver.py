"""The push API: what is accepted, what is refused, and that refusals store nothing."""
from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from ingest.log import list_partitions, iter_all_records
from tests.helpers import fixture, fixture_bytes, trip, itin_id


def log_records(data) -> list:
    return [r for p in list_partitions(data) for _, r in iter_all_records(data, p)]


@pytest.mark.parametrize("kind,name", [("trip", "trip_small.json"), ("trip", "trip_33min.json"),
                                       ("crash", "crash.json"), ("diagnosis", "diagnosis.json"),
                                       ("diagnosis", "diagnosis_empty.json"), ("trip/event", "deletion.json")])
async def test_each_push_kind_is_acknowledged_and_logged(pusher, data, kind, name):
    status, body = await pusher.push(kind, None, raw=fixture_bytes(name))
    assert status == 200, body
    assert body["status"] == "OK"
    recs = log_records(data)
    assert len(recs) == 1
    assert recs[0].team == "acme"
    assert recs[0].body == fixture_bytes(name)  # the raw body, byte for byte
    assert recs[0].offset == body["offset"]


async def test_offsets_increase_and_basic_auth_works(pusher, data):
    s1, b1 = await pusher.push("trip", trip(itin_id(1)))
    s2, b2 = await pusher.push("trip", trip(itin_id(2)), auth="basic")
    assert (s1, s2) == (200, 200)
    assert b2["offset"] == b1["offset"] + 1


async def test_gzip_body_is_inflated_before_logging(pusher, data):
    raw = fixture_bytes("trip_33min.json")
    status, _ = await pusher.push("trip", None, raw=gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    assert status == 200
    status, _ = await pusher.push("crash", None, raw=zlib.compress(fixture_bytes("crash.json")),
                                  headers={"Content-Encoding": "deflate"})
    assert status == 200
    assert [r.body for r in log_records(data)] == [raw, fixture_bytes("crash.json")]


BAD = [
    ("not JSON", "trip", dict(raw=fixture_bytes("not_json.txt")), 400, "invalid_json"),
    ("JSON array", "trip", dict(raw=b"[1,2]"), 400, "invalid_json"),
    ("missing itinId", "trip", dict(raw=fixture_bytes("trip_missing_itinId.json")), 400, "missing_key"),
    ("empty itinId", "trip", dict(raw=b'{"itinId": ""}'), 400, "missing_key"),
    ("numeric crashId", "crash", dict(raw=b'{"crashId": 12}'), 400, "missing_key"),
    ("missing event", "trip/event", dict(raw=b'{"itinId": "abc"}'), 400, "missing_key"),
    ("ambiguous event", "trip/event", dict(raw=b'{"itinId": "a", "event": "x:TRIP_DELETION"}'), 400, "missing_key"),
    ("missing userId", "diagnosis", dict(raw=b'{"smartphoneData": {}}'), 400, "missing_key"),
    ("text/plain", "trip", dict(raw=fixture_bytes("trip_small.json"), headers={"Content-Type": "text/plain"}), 415,
     "unsupported_media_type"),
    ("form", "crash", dict(raw=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}), 415,
     "unsupported_media_type"),
    ("brotli", "crash", dict(raw=fixture_bytes("crash.json"), headers={"Content-Encoding": "br"}), 415,
     "unsupported_encoding"),
    ("broken gzip", "crash", dict(raw=b"\x1f\x8b garbage", headers={"Content-Encoding": "gzip"}), 400, "bad_encoding"),
    ("truncated gzip", "crash", dict(raw=gzip.compress(fixture_bytes("crash.json"))[:-12],
                                     headers={"Content-Encoding": "gzip"}), 400, "bad_encoding"),
    ("no credentials", "trip", dict(raw=fixture_bytes("trip_small.json"), auth=None), 401, "missing_credentials"),
    ("wrong key", "trip", dict(raw=fixture_bytes("trip_small.json"), headers={"Authorization": "Bearer nope"}), 401,
     "invalid_credentials"),
    ("wrong scheme", "trip", dict(raw=fixture_bytes("trip_small.json"), headers={"Authorization": "Digest x"}), 401,
     "invalid_credentials"),
    ("garbage basic", "trip", dict(raw=fixture_bytes("trip_small.json"), headers={"Authorization": "Basic %%%"}), 401,
     "invalid_credentials"),
]


@pytest.mark.parametrize("what,kind,kw,status,code", BAD, ids=[b[0] for b in BAD])
async def test_bad_input_gets_a_clear_error_and_stores_nothing(pusher, data, what, kind, kw, status, code):
    got, body = await pusher.push(kind, None, **kw)
    assert got == status, body
    assert body["error"] == code
    assert body["message"]
    assert log_records(data) == []


async def test_basic_auth_with_another_teams_key_is_refused(make_pusher, acme, globex, data):
    p = await make_pusher(acme)
    p.team = "globex"  # acme's key presented as globex
    status, body = await p.push("trip", trip(itin_id(1)), auth="basic")
    assert status == 401
    assert log_records(data) == []


async def test_too_large_body_is_413(make_pusher, acme, data):
    p = await make_pusher(acme, max_body_bytes=4096)
    status, body = await p.push("trip", None, raw=fixture_bytes("trip_33min.json"))
    assert status == 413 and body["error"] == "too_large"
    # a small gzip body that inflates past the limit is refused too
    bomb = gzip.compress(b'{"itinId": "' + b"x" * 100_000 + b'"}')
    status, body = await p.push("trip", None, raw=bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413
    assert log_records(data) == []


async def test_disabled_team_gets_403_and_nothing_is_stored(pusher, teams, data):
    status, _ = await pusher.push("trip", trip(itin_id(1)))
    assert status == 200
    teams.set_status("acme", "DISABLED")
    # a change from another connection is seen within 10 ms
    await asyncio.sleep(0.02)
    for auth in ("bearer", "basic"):
        status, body = await pusher.push("trip", trip(itin_id(2)), auth=auth)
        assert status == 403 and body["error"] == "team_disabled"
    assert [r.key for r in log_records(data)] == [itin_id(1)]
    # enabling again issues new keys; the old one stays revoked
    keys = teams.set_status("acme", "ENABLED")
    await asyncio.sleep(0.02)
    status, _ = await pusher.push("trip", trip(itin_id(3)))
    assert status == 401
    pusher.key = keys["pushApiKey"]
    status, _ = await pusher.push("trip", trip(itin_id(3)))
    assert status == 200


async def test_low_disk_answers_503_with_retry_after(make_pusher, acme, data):
    p = await make_pusher(acme, min_free_bytes=1 << 62)
    resp = await p.client.post("/push/trip", data=fixture_bytes("trip_small.json"),
                               headers={"Authorization": f"Bearer {p.key}", "Content-Type": "application/json"})
    assert resp.status == 503
    assert resp.headers["Retry-After"]
    assert (await resp.json())["error"] == "disk_full"
    assert log_records(data) == []
    health = await (await p.client.get("/health")).json()
    assert health["status"] == "degraded"


async def test_full_write_queue_answers_503_and_loses_nothing_acknowledged(make_pusher, acme, data):
    p = await make_pusher(acme, max_pending_requests=2)
    results = await asyncio.gather(*(p.push("trip/event", {"itinId": itin_id(i), "event": "TRIP_DELETION"})
                                     for i in range(200)))
    statuses = [s for s, _ in results]
    assert set(statuses) <= {200, 503}
    assert 503 in statuses  # 200 concurrent requests cannot all fit in a queue of 2
    acked = {itin_id(i) + ":TRIP_DELETION" for i, (s, _) in enumerate(results) if s == 200}
    assert acked <= {r.key for r in log_records(data)}


async def test_health(pusher):
    resp = await pusher.client.get("/health")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


def test_fixture_sanity():
    assert fixture("deletion.json")["event"] == "TRIP_DELETION"


async def test_a_full_queue_refuses_before_reading_the_body(make_pusher, acme, data):
    """An overloaded receiver answers 503 from the headers: it does not wait for (and buffer)
    a body it is going to refuse. The body here is announced and never sent."""
    p = await make_pusher(acme, max_pending_bytes=1000)
    host, port = p.client.server.host, p.client.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write((f"POST /push/trip HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {p.key}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n").encode())
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert status_line.startswith(b"HTTP/1.1 503"), status_line
    writer.close()
    # a push that fits still goes through
    status, _ = await p.push("trip/event", {"itinId": itin_id(1), "event": "TRIP_DELETION"})
    assert status == 200
    assert [r.key for r in log_records(data)] == [itin_id(1) + ":TRIP_DELETION"]
