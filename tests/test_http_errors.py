"""Errors aiohttp makes itself (unknown route, wrong method, a body over the size limit, an Expect
it does not meet, an exception in a handler) have the JSON shape of every other error:
``{"error": code, "message": text}``, for the receiver alone and for the whole app."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from aiohttp import web

from ingest.app import build_app
from lake.receiver import ReceiverLake
from pushlake.api import make_app
from pushlake.config import enterprise_key
from tests.conftest import settings


async def json_error(resp, status: int, code: str) -> dict:
    assert resp.status == status, (resp.status, await resp.text())
    assert resp.content_type == "application/json", (resp.content_type, await resp.text())
    body = orjson.loads(await resp.read())
    assert set(body) == {"error", "message"} and body["error"] == code and body["message"], body
    return body


@pytest.fixture
async def receiver(aiohttp_client, data):
    return await aiohttp_client(build_app(settings(data), lake=ReceiverLake(data)))


@pytest.fixture
async def full(aiohttp_client, data):
    return await aiohttp_client(make_app(settings(data, max_body_bytes=4096)))


async def test_receiver_alone_answers_json_404_and_405(receiver):
    for path in ("/", "/nope", "/push", "/push/trips", "/push/trip/", "/push/trip/event/x", "/health/x", "/%ZZ"):
        body = await json_error(await receiver.post(path, data=b"{}"), 404, "not_found")
        assert path.split("?")[0] in body["message"] or path == "/%ZZ"
    for method in ("GET", "PUT", "DELETE", "PATCH", "OPTIONS"):
        resp = await receiver.request(method, "/push/trip")
        body = await json_error(resp, 405, "method_not_allowed")
        assert resp.headers["Allow"] == "POST" and "POST" in body["message"]
    resp = await receiver.post("/health")
    await json_error(resp, 405, "method_not_allowed")
    assert set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}


NOT_FOUND = ["/v1", "/v1/nope", "/v1/enterprise", "/v1/enterprise/nope", "/v1/enterprise/team/x",
             "/v1/enterprise/teams/a/b/status", "/v1/export", "/oauth", "/oauth/token/x", "/docs/x",
             "/openapi.yaml", "/v1/enterprise/task/"]
WRONG_METHOD = [("GET", "/v1/query", "POST"), ("POST", "/v1/export/trips", "GET,HEAD"),
                ("GET", "/oauth/token", "POST"), ("POST", "/openapi.json", "GET,HEAD"), ("PUT", "/docs", "GET,HEAD"),
                ("DELETE", "/v1/enterprise/teams", "GET,HEAD"), ("GET", "/v1/enterprise/team", "POST"),
                ("POST", "/v1/enterprise/teams/x/status", "PUT"), ("GET", "/v1/enterprise/hyperadmin/x", "DELETE"),
                ("PUT", "/v1/enterprise/push/trips/failed/retry", "POST"), ("POST", "/v1/enterprise/task/x", "GET,HEAD"),
                ("GET", "/push/crash", "POST")]


async def test_whole_app_answers_json_404(full):
    for path in NOT_FOUND:
        for method in ("GET", "POST"):
            await json_error(await full.request(method, path, data=b"{}"), 404, "not_found")


@pytest.mark.parametrize("method,path,allow", WRONG_METHOD, ids=[f"{m} {p}" for m, p, _ in WRONG_METHOD])
async def test_whole_app_answers_json_405_with_allow(full, method, path, allow):
    resp = await full.request(method, path, data=b"{}")
    await json_error(resp, 405, "method_not_allowed")
    assert set(resp.headers["Allow"].split(",")) == set(allow.split(","))


async def test_bodies_over_the_limit_get_json_413_on_every_route(full, data):
    big = b'{"teamId": "' + b"x" * 5000 + b'"}'
    ek = {"x-dq-enterprise-api-key": enterprise_key(data)[0], "Content-Type": "application/json"}
    await json_error(await full.post("/v1/enterprise/team", data=big, headers=ek), 413, "too_large")
    resp = await full.post("/oauth/token", data={"grant_type": "client_credentials", "pad": "x" * 5000})
    await json_error(resp, 413, "too_large")

    async def chunked():  # no Content-Length: the limit is met while reading
        for _ in range(10):
            yield b"x" * 1000
    await json_error(await full.post("/v1/enterprise/hyperadmin", data=chunked(), headers=ek), 413, "too_large")


async def test_an_exception_in_a_handler_is_a_json_500(aiohttp_client, data, caplog):
    app = build_app(settings(data), lake=ReceiverLake(data))

    async def boom(request):
        raise RuntimeError("kaboom")
    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    body = await json_error(await client.get("/boom"), 500, "internal_error")
    assert "kaboom" not in body["message"]  # logged, not shown
    assert any("kaboom" in (r.exc_text or "") or (r.exc_info and "kaboom" in str(r.exc_info[1]))
               for r in caplog.records)
    assert (await client.get("/health")).status == 200  # the server goes on


async def _raw(client, request: bytes) -> tuple[bytes, dict, bytes]:
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        n = int(headers.get("content-length", 0))
        body = await asyncio.wait_for(reader.readexactly(n), 5) if n else b""
        return lines[0].encode(), headers, body
    finally:
        writer.close()


async def test_an_unmet_expectation_is_a_json_417(full, data):
    ek = enterprise_key(data)[0]
    for path, extra in (("/health", ""), ("/v1/enterprise/teams", f"x-dq-enterprise-api-key: {ek}\r\n"),
                        ("/openapi.json", "")):
        status, headers, body = await _raw(full, (f"GET {path} HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n{extra}"
                                                  "Connection: close\r\n\r\n").encode())
        assert status.startswith(b"HTTP/1.1 417"), status
        assert headers["content-type"].startswith("application/json")
        assert orjson.loads(body)["error"] == "expectation_failed"
    # 100-continue still works as before
    status, _, body = await _raw(full, b"GET /health HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                       b"Connection: close\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 100") or status.startswith(b"HTTP/1.1 200")


async def test_a_malformed_request_is_still_refused(receiver):
    """Requests the HTTP parser refuses never reach the app (no middleware can answer them):
    aiohttp's plain 400, and the connection is closed."""
    status, headers, _ = await _raw(receiver, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    assert status.split()[1] == b"400"


async def test_errors_of_our_own_handlers_are_unchanged(full, data):
    ek = {"x-dq-enterprise-api-key": enterprise_key(data)[0]}
    await json_error(await full.get("/v1/enterprise/teams"), 401, "unauthorized")
    await json_error(await full.get("/v1/enterprise/task/nope", headers=ek), 404, "not_found")
    resp = await full.post("/push/trip", data=b"{}", headers={"Content-Type": "application/json"})
    await json_error(resp, 401, "missing_credentials")
    assert "Bearer" in resp.headers["WWW-Authenticate"]
    resp = await full.post("/oauth/token", data={"grant_type": "client_credentials"})
    assert resp.status == 401 and (await resp.json())["error"] == "invalid_client"  # OAuth's own shape


async def test_a_redirect_or_success_exception_passes_through(aiohttp_client, data):
    app = build_app(settings(data), lake=ReceiverLake(data))

    async def moved(request):
        raise web.HTTPFound("/health")
    app.router.add_get("/old", moved)
    client = await aiohttp_client(app)
    resp = await client.get("/old", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/health"


def test_a_real_pushlake_serve_answers_json_errors(tmp_path):
    """The same through `pushlake serve` (uvloop, run_app) as through the test client."""
    import urllib.error
    import urllib.request

    from tests.helpers import ServerProcess
    data = tmp_path / "data"
    data.mkdir()
    srv = ServerProcess(data, "--no-compactor", "--max-body", "1000")
    try:
        ek = (data / "enterprise.key").read_text().strip()
        cases = [("GET", "/nope", None, {}, 404, "not_found"),
                 ("GET", "/push/trip", None, {}, 405, "method_not_allowed"),
                 ("POST", "/v1/enterprise/team", b'{"teamId": "' + b"x" * 2000 + b'"}',
                  {"x-dq-enterprise-api-key": ek, "Content-Type": "application/json"}, 413, "too_large")]
        for method, path, body, headers, status, code in cases:
            req = urllib.request.Request(srv.url + path, data=body, method=method, headers=headers)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=10)
            assert e.value.code == status and e.value.headers["Content-Type"].startswith("application/json")
            assert orjson.loads(e.value.read())["error"] == code
            if status == 405:
                assert e.value.headers["Allow"] == "POST"
    finally:
        srv.stop()


@pytest.mark.parametrize("failure", [RuntimeError("disk gone"), web.HTTPBadRequest(), web.HTTPFound("/x")],
                         ids=["exception", "HTTP error", "redirect"])
async def test_a_failure_mid_stream_cuts_the_answer_and_writes_no_second_one(aiohttp_client, data, failure):
    """Once a streamed answer (an export) has begun, an error must not become a JSON response:
    it would be written inside the first one's body, a chunked CSV ending cleanly with the JSON
    in it. The connection is cut instead, so the client sees the transfer fail."""
    app = build_app(settings(data), lake=ReceiverLake(data))

    async def half_export(request):
        resp = web.StreamResponse()
        resp.content_type = "text/csv"
        await resp.prepare(request)
        await resp.write(b"a,b\n1,2\n")
        raise failure
    app.router.add_get("/export", half_export)
    client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"GET /export HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 200") and b"a,b\n1,2\n" in raw
    assert raw.count(b"HTTP/1.1") == 1 and b"error" not in raw
    assert not raw.endswith(b"0\r\n\r\n")  # no last chunk: the body is visibly incomplete
