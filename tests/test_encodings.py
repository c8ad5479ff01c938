"""Compressed push bodies are inflated whole or refused: every gzip member is kept (as ``gzip -d``
does), the size bound applies to the total, and no byte after the last stream is ignored."""
from __future__ import annotations

import gzip
import time
import zlib

import orjson
import pytest

import ingest.app
from ingest.app import inflate
from tests.helpers import fixture_bytes, itin_id, trip
from tests.test_receiver import log_records

MAX_GZIP_MEMBERS = getattr(ingest.app, "MAX_GZIP_MEMBERS", 1000)

GZIPS = ["gzip", "x-gzip", "GZip"]


@pytest.mark.parametrize("encoding", GZIPS)
async def test_a_body_in_two_gzip_members_is_stored_whole(pusher, data, encoding):
    raw = fixture_bytes("trip_33min.json")
    body = gzip.compress(raw[:1000]) + gzip.compress(raw[1000:])  # `cat a.gz b.gz`
    status, resp = await pusher.push("trip", None, raw=body, headers={"Content-Encoding": encoding})
    assert status == 200, resp
    assert [r.body for r in log_records(data)] == [raw]


async def test_many_members_are_stored_whole(pusher, data):
    raw = orjson.dumps(trip(itin_id(1)))
    body = b"".join(gzip.compress(raw[i:i + 7]) for i in range(0, len(raw), 7))
    assert body.count(b"\x1f\x8b") >= len(raw) // 7
    status, resp = await pusher.push("trip", None, raw=body, headers={"Content-Encoding": "gzip"})
    assert status == 200, resp
    assert [r.body for r in log_records(data)] == [raw]


@pytest.mark.parametrize("encoding", GZIPS)
async def test_a_second_member_is_never_dropped(pusher, data, encoding):
    """Two documents, one per member: the first alone was a valid push, answered 200 with the
    second silently dropped. Inflated whole, the body is not one JSON object."""
    body = gzip.compress(orjson.dumps(trip(itin_id(1)))) + gzip.compress(orjson.dumps(trip(itin_id(2))))
    status, resp = await pusher.push("trip", None, raw=body, headers={"Content-Encoding": encoding})
    assert (status, resp["error"]) == (400, "invalid_json"), resp
    assert log_records(data) == []


def _trailing_cases():
    raw = fixture_bytes("crash.json")
    g, z = gzip.compress(raw), zlib.compress(raw)
    return [
        ("gzip + garbage", "gzip", g + b"garbage"),
        ("x-gzip + garbage", "x-gzip", g + b"garbage"),
        ("gzip + one byte", "gzip", g + b"\x1f"),
        ("gzip + zero padding", "gzip", g + b"\0" * 8),
        ("gzip + newline", "gzip", g + b"\n"),
        ("gzip + a broken member", "gzip", g + b"\x1f\x8b\x08\0garbage"),
        ("gzip + a truncated member", "gzip", g + gzip.compress(raw)[:-4]),
        ("deflate + garbage", "deflate", z + b"garbage"),
        ("deflate + newline", "deflate", z + b"\n"),
        ("deflate + a second stream", "deflate", z + zlib.compress(raw)),
        ("deflate + a gzip member", "deflate", z + g),
        ("empty gzip body", "gzip", b""),
        ("empty deflate body", "deflate", b""),
        ("raw deflate (no zlib header)", "deflate", zlib.compress(raw)[2:-4]),
    ]


@pytest.mark.parametrize("what,encoding,body", _trailing_cases(), ids=[c[0] for c in _trailing_cases()])
async def test_bytes_after_the_stream_are_refused(pusher, data, what, encoding, body):
    status, resp = await pusher.push("crash", None, raw=body, headers={"Content-Encoding": encoding})
    assert (status, resp["error"]) == (400, "bad_encoding"), resp
    assert resp["message"]
    assert log_records(data) == []


async def test_a_gzip_bomb_split_over_members_gets_413(make_pusher, acme, data):
    p = await make_pusher(acme, max_body_bytes=4096)
    doc = b'{"itinId": "' + b"x" * 100_000 + b'"}'
    parts = [doc[i:i + 3000] for i in range(0, len(doc), 3000)]  # each member inflates under the limit
    bomb = b"".join(gzip.compress(x) for x in parts)
    assert len(bomb) < 4096 and all(len(x) < 4096 for x in parts)
    for encoding in GZIPS:
        status, resp = await p.push("trip", None, raw=bomb, headers={"Content-Encoding": encoding})
        assert (status, resp["error"]) == (413, "too_large"), (encoding, resp)
    # exactly at the limit, over three members, is fine
    doc = b'{"itinId": "a", "pad": "' + b"y" * (4096 - 26) + b'"}'
    assert len(doc) == 4096
    body = gzip.compress(doc[:1000]) + gzip.compress(doc[1000:3000]) + gzip.compress(doc[3000:])
    status, resp = await p.push("trip", None, raw=body, headers={"Content-Encoding": "gzip"})
    assert status == 200, resp
    assert [r.body for r in log_records(data)] == [doc]


async def test_a_deflate_bomb_gets_413(make_pusher, acme, data):
    p = await make_pusher(acme, max_body_bytes=4096)
    bomb = zlib.compress(b'{"itinId": "' + b"x" * 100_000 + b'"}')
    status, resp = await p.push("trip", None, raw=bomb, headers={"Content-Encoding": "deflate"})
    assert (status, resp["error"]) == (413, "too_large")
    assert log_records(data) == []


async def test_too_many_members_are_refused_quickly(pusher, data):
    """Empty members cost Python time each: 1.6 M of them fit in 32 MiB (3 s of CPU)."""
    body = gzip.compress(b"") * (MAX_GZIP_MEMBERS + 1) + gzip.compress(b'{"crashId": "c1"}')
    status, resp = await pusher.push("crash", None, raw=body, headers={"Content-Encoding": "gzip"})
    assert (status, resp["error"]) == (400, "bad_encoding") and str(MAX_GZIP_MEMBERS) in resp["message"]
    body = gzip.compress(b"") * (MAX_GZIP_MEMBERS - 1) + gzip.compress(b'{"crashId": "c1"}')
    status, resp = await pusher.push("crash", None, raw=body, headers={"Content-Encoding": "gzip"})
    assert status == 200, resp
    assert [r.body for r in log_records(data)] == [b'{"crashId": "c1"}']
    # the worst a 32 MiB body can do: empty members, refused after the first thousand
    worst = gzip.compress(b"") * ((32 << 20) // 20)
    t = time.perf_counter()
    with pytest.raises(zlib.error, match="gzip members"):
        inflate(worst, "gzip", 32 << 20)
    assert time.perf_counter() - t < 1.0


def test_inflate_matches_gzip_d():
    raw = fixture_bytes("trip_33min.json")
    for body in (gzip.compress(raw), gzip.compress(raw[:5]) + gzip.compress(b"") + gzip.compress(raw[5:])):
        assert inflate(body, "gzip", len(raw)) == gzip.decompress(body) == raw
        with pytest.raises(OverflowError):
            inflate(body, "gzip", len(raw) - 1)
    assert inflate(zlib.compress(raw), "deflate", len(raw)) == raw


@pytest.mark.parametrize("headers", [[("Content-Encoding", "gzip"), ("Content-Encoding", "gzip")],
                                     [("Content-Encoding", "identity"), ("Content-Encoding", "gzip")],
                                     [("Content-Encoding", "gzip, gzip")], [("Content-Encoding", "gzip, identity")]],
                         ids=["gzip twice", "identity then gzip", "list", "gzip then identity"])
async def test_stacked_encodings_are_refused_not_half_decoded(pusher, data, headers):
    """Only the first of two Content-Encoding headers was read: a body gzipped twice was inflated
    once, a gzip body announced as 'identity' then 'gzip' was stored compressed. A list of
    codings is refused, whichever way it is written."""
    from multidict import CIMultiDict
    raw = fixture_bytes("crash.json")
    body = gzip.compress(gzip.compress(raw)) if headers[0][1] == "gzip" and len(headers) == 2 else gzip.compress(raw)
    h = CIMultiDict([("Authorization", f"Bearer {pusher.key}"), ("Content-Type", "application/json"), *headers])
    resp = await pusher.client.post("/push/crash", data=body, headers=h)
    assert resp.status == 415, await resp.text()
    assert (await resp.json())["error"] == "unsupported_encoding"
    assert log_records(data) == []
