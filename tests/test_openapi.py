"""The route table is exactly the app's routes, the OpenAPI document describes exactly the table, completely,
and what the handlers answer; the push body schemas are the lake's field lists."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import orjson
import pytest

from ingest.app import build_app
from ingest.keys import ROUTES as PUSH_KINDS
from lake.receiver import ReceiverLake
from lake.schema import (CRASH_FIELDS, DELETION_FIELDS, DIAGNOSIS_FIELDS, EVENT_ARRAYS, EVENT_FIELDS, ROUTE_SOURCES,
                         TRIP_FIELDS)
from pushlake.api import make_app, pushbodies
from pushlake.api.openapi import document
from pushlake.api.routes import API, RECEIVER, ROUTES
from pushlake.config import Settings, enterprise_key
from tests.helpers import trip

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# what each handler can answer (read from the handlers), by operation id; the table (and so the
# document) may say more, never less
PUSH = {200, 400, 401, 403, 413, 415, 503}
ANSWERS = {
    "pushTrip": PUSH,
    "pushTripEvent": PUSH,
    "pushCrash": PUSH,
    "pushDiagnosis": PUSH,
    "health": {200, 503},
    "token": {200, 400, 401},
    "createTeam": {200, 400, 401, 409, 422, 429},
    "listTeams": {200, 401},
    "setTeamStatus": {200, 400, 401, 404, 409},
    "createHyperAdmin": {200, 400, 401, 409, 422, 429},
    "listHyperAdmins": {200, 401},
    "deleteHyperAdmin": {200, 401, 404},
    "tripsReport": {200, 400, 401, 404},
    "crashesReport": {200, 400, 401, 404},
    "diagnosesReport": {200, 400, 401, 404},
    "listFailedTrips": {200, 400, 401, 404},
    "listFailedCrashes": {200, 400, 401, 404},
    "listFailedDiagnoses": {200, 400, 401, 404},
    "retryFailedTrips": {200, 401, 409},
    "retryFailedCrashes": {200, 401, 409},
    "retryFailedDiagnoses": {200, 401, 409},
    "getTask": {200, 401, 404},
    "query": {200, 400, 401, 403, 404, 406},
    "export": {200, 400, 401, 403, 404},
    "metrics": {200, 401, 403, 429, 503},
    "statusPage": {200, 400, 401, 403, 429, 503},
    "status": {200, 400, 401, 403, 429, 503},
    "root": {302},
    "openapi": {200},
    "docs": {200},
}


@pytest.fixture
def doc() -> dict:
    return document()


@pytest.fixture
async def client(aiohttp_client, tmp_path: Path):
    return await aiohttp_client(make_app(Settings(data_dir=tmp_path, min_free_bytes=0)))


def operations(doc: dict):
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def app_routes(app) -> set[tuple[str, str]]:
    return {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}


def table(routes) -> set[tuple[str, str]]:
    return {(r.method, r.template) for r in routes}


def resolve(doc: dict, pointer: str):
    assert pointer.startswith("#/"), f"only local references: {pointer}"
    node = doc
    for part in pointer[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{pointer} does not resolve"
        node = node[part]
    return node


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def conforms(doc: dict, schema: dict, value, where: str = "$") -> list[str]:
    """A small JSON Schema check, enough for the response schemas of this document."""
    if "$ref" in schema:
        return conforms(doc, resolve(doc, schema["$ref"]), value, where)
    if "const" in schema:
        return [] if value == schema["const"] else [f"{where}: {value!r} != {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} not in {schema['enum']}"]
    types = schema.get("type")
    if types is None:
        return []
    types = types if isinstance(types, list) else [types]
    checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "null": lambda v: v is None}
    if not any(checks[t](value) for t in types):
        return [f"{where}: {value!r} is not {types}"]
    problems = []
    if isinstance(value, dict):
        props = schema.get("properties", {})
        problems += [f"{where}: missing '{k}'" for k in schema.get("required", ()) if k not in value]
        for k, v in value.items():
            if k in props:
                problems += conforms(doc, props[k], v, f"{where}.{k}")
            elif schema.get("additionalProperties", True) is False:
                problems.append(f"{where}: undocumented field '{k}'")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            problems += conforms(doc, schema["items"], v, f"{where}[{i}]")
    return problems


async def check(doc: dict, method: str, path: str, resp) -> object:
    """The status is documented for the operation and a JSON body matches the documented schema."""
    o = doc["paths"][path][method]
    status = str(resp.status)
    body = await resp.read()
    assert status in o["responses"], f"{method.upper()} {path} answered {status}, undocumented: {body[:200]!r}"
    r = o["responses"][status]
    ctype = resp.content_type
    assert ctype in r.get("content", {}), f"{method.upper()} {path} {status}: undocumented content type {ctype}"
    schema = r["content"][ctype].get("schema", {})
    if ctype == "application/json":
        value = orjson.loads(body)
        problems = conforms(doc, schema, value)
        assert not problems, f"{method.upper()} {path} {status}: {problems}"
        return value
    return body


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


# -- (a) the app, the route table and the document have the same operations ------------------------------
async def test_every_route_is_documented_and_every_operation_exists(client, doc):
    routes = app_routes(client.server.app)
    documented = {(m, p) for m, p, _ in operations(doc)}
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the app does not serve"
    assert table(ROUTES) == routes and len(ROUTES) == len(routes), "the app serves other routes than the table's"


async def test_the_app_serves_each_route_with_the_table_s_handler(client, tmp_path):
    handlers = {(r.method, r.template): r.handler for r in ROUTES}
    served = {(r.method.lower(), r.resource.canonical): r.handler for r in client.server.app.router.routes()
              if r.method != "HEAD"}
    assert served == handlers
    # the receiver alone (build_app) serves the table's receiver routes, and every GET answers HEAD too
    receiver = build_app(Settings(data_dir=tmp_path / "receiver", min_free_bytes=0), lake=ReceiverLake(tmp_path / "receiver"))
    assert app_routes(receiver) == table(RECEIVER) and not table(RECEIVER) & table(API)
    heads = {r.resource.canonical for r in client.server.app.router.routes() if r.method == "HEAD"}
    assert heads == {r.template for r in ROUTES if r.method == "get"}
    assert [p for p, _ in PUSH_KINDS.items()] == [r.path.removeprefix("/push/") for r in RECEIVER
                                                  if r.tag == "push"]


def test_the_table_states_what_each_handler_can_answer():
    assert set(ANSWERS) == {r.operation_id for r in ROUTES}, "every route's possible answers are stated here"
    for r in ROUTES:
        undocumented = ANSWERS[r.operation_id] - set(r.responses)
        assert not undocumented, f"{r.method.upper()} {r.template}: undocumented {undocumented}"
        for status, resp in r.responses.items():
            assert not resp.codes or status >= 400, f"{r.operation_id} {status}: error codes on a success"
            # /health's 503 is its own document (degraded, with reasons), not an error body
            assert resp.codes or status < 400 or r.operation_id == "health", f"{r.operation_id} {status}: no codes"


# -- (b) every operation is complete --------------------------------------------------------------------
def test_every_operation_has_a_summary_a_success_and_its_errors(doc):
    schemes = doc["components"]["securitySchemes"]
    ids = set()
    for method, path, o in operations(doc):
        name = f"{method.upper()} {path}"
        assert o.get("summary"), f"{name}: no summary"
        assert o.get("description"), f"{name}: no description"
        assert o.get("operationId") and o["operationId"] not in ids, f"{name}: missing or repeated operationId"
        ids.add(o["operationId"])
        codes = set(o["responses"])
        assert all(re.fullmatch(r"[1-5]\d\d", c) for c in codes), f"{name}: odd status codes {codes}"
        assert any(c[0] in "23" for c in codes), f"{name}: no 2xx response (nor a redirect, GET /)"
        assert all(r.get("description") for r in o["responses"].values()), f"{name}: response without description"
        assert "security" in o, f"{name}: security not stated"
        for req in o["security"]:
            assert set(req) <= set(schemes), f"{name}: unknown security scheme in {req}"
        if any(o["security"]):
            assert "401" in codes, f"{name}: authenticated but no 401"
        expected = ANSWERS[o["operationId"]]
        assert {str(c) for c in expected} <= codes, f"{name}: undocumented {expected - {int(c) for c in codes}}"


def test_push_503_says_when_to_retry_and_errors_have_their_schema(doc):
    for method, path, o in operations(doc):
        for status, r in o["responses"].items():
            if status >= "400":
                schema = r["content"]["application/json"]["schema"]["$ref"]
                # /health's 503 is its own document (degraded, with reasons), for load balancers and people
                want = {"/oauth/token": "/OAuthError", "/health": "/Health"}.get(path, "/Error")
                assert schema.endswith(want), (path, status)
        if path.startswith("/push/"):
            assert "Retry-After" in o["responses"]["503"]["headers"]
            assert "requestBody" in o


def test_security_schemes(doc):
    s = doc["components"]["securitySchemes"]
    assert s["enterpriseKey"] == {**s["enterpriseKey"], "type": "apiKey", "in": "header",
                                  "name": "x-dq-enterprise-api-key"}
    assert s["oauth2"]["flows"]["clientCredentials"]["tokenUrl"] == "/oauth/token"
    assert {s[n]["scheme"] for n in ("pushBearer", "adminBearer")} == {"bearer"}
    assert {s[n]["scheme"] for n in ("pushBasic", "hyperadminBasic")} == {"basic"}


# -- (c) served over HTTP -------------------------------------------------------------------------------
async def test_openapi_json_and_docs_are_served(client, doc):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    assert orjson.loads(await resp.read()) == orjson.loads(orjson.dumps(doc))

    resp = await client.get("/docs")
    assert resp.status == 200
    assert resp.content_type == "text/html"
    page = await resp.text()
    assert page.startswith("<!doctype html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page  # self-contained
    for method, path, o in operations(doc):
        assert path in page, f"/docs does not mention {path}"
        assert o["summary"].replace("&", "&amp;") in page
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in page


# -- (d) structure ----------------------------------------------------------------------------------------
def test_every_ref_resolves_and_every_component_is_used(doc):
    found = set(refs(doc))
    assert found
    for r in found:
        resolve(doc, r)
    for kind in ("schemas", "headers"):
        unused = {f"#/components/{kind}/{n}" for n in doc["components"][kind]} - found
        assert not unused, f"unused components: {unused}"


def test_path_parameters_match_the_templates(doc):
    for method, path, o in operations(doc):
        declared = {p["name"] for p in o.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), f"{method.upper()} {path}"
        for p in o.get("parameters", []):
            assert p["in"] in ("query", "header", "path", "cookie") and "schema" in p
            assert p.get("required") is True or p["in"] != "path"


def test_document_is_valid_openapi_31(doc):
    from openapi_spec_validator import validate
    validate(doc)


# -- the push bodies are the lake's field lists ------------------------------------------------------------
def schema_at(doc: dict, schema: dict, path: tuple[str, ...]) -> dict:
    for part in path:
        if "$ref" in schema:
            schema = resolve(doc, schema["$ref"])
        assert part in schema.get("properties", {}), f"no '{part}' in {path}"
        schema = schema["properties"][part]
    return resolve(doc, schema["$ref"]) if "$ref" in schema else schema


def test_push_bodies_have_every_field_of_the_lake_and_the_receiver_s_key_fields(doc):
    schemas = doc["components"]["schemas"]
    types = {"str": ["string"], "f64": ["number", "string", "null"], "i64": ["number", "string", "null"],
             "bool": ["boolean"], "ts": ["string"]}
    bodies = {"trip": ("Trip", TRIP_FIELDS), "trip/event": ("TripDeletion", DELETION_FIELDS),
              "crash": ("Crash", CRASH_FIELDS), "diagnosis": ("Diagnosis", DIAGNOSIS_FIELDS)}
    assert set(bodies) == set(PUSH_KINDS)
    for segment, (kind, key_fields) in PUSH_KINDS.items():
        name, fields = bodies[segment]
        o = doc["paths"][f"/push/{segment}"]["post"]
        assert o["requestBody"]["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{name}"}
        body = schemas[name]
        assert body["required"] == list(key_fields) and body["additionalProperties"] is True
        for k in key_fields:
            assert body["properties"][k]["type"] == "string" and body["properties"][k]["minLength"] == 1
        for column, path, t in fields:
            leaf = schema_at(doc, body, path)
            got = leaf.get("type")
            assert (got if isinstance(got, list) else [got]) == types[t], (name, column, path)
    trip = schemas["Trip"]
    assert set(schema_at(doc, trip, ("route",))["properties"]) == set(ROUTE_SOURCES)
    for array in EVENT_ARRAYS:
        events = trip["properties"][array]
        assert events["type"] == "array"
        for _, path, t in EVENT_FIELDS:
            schema_at(doc, events["items"], path)
    # what is documented of a block with columns is its columns (speedingStatistics had drifted)
    assert set(trip["properties"]["speedingStatistics"]["properties"]) == {
        p[1] for _, p, _ in TRIP_FIELDS if p[0] == "speedingStatistics"}


def test_push_body_prose_must_name_a_field():
    with pytest.raises(ValueError, match="names no field"):
        pushbodies.schema(pushbodies.PushBody("X", CRASH_FIELDS, prose={"parameters.nope": "?"}), ("crashId",))


# -- the document is true: what the handlers answer is documented ------------------------------------------
async def test_every_operation_without_credentials_answers_as_documented(client, doc):
    for method, path, o in operations(doc):
        url = re.sub(r"{\w+}", "x", path)
        resp = await client.request(method.upper(), url, data=b"{}", headers={"Content-Type": "application/json"},
                                    allow_redirects=False)
        await check(doc, method, path, resp)
        if any(o["security"]):
            assert resp.status in (400, 401), f"{method.upper()} {path} answered {resp.status} without credentials"
        else:
            assert resp.status == (302 if path == "/" else 200)


async def test_a_tour_of_the_api_answers_as_documented(client, doc, tmp_path):
    ek = {"x-dq-enterprise-api-key": enterprise_key(tmp_path)[0]}
    json_h = {"Content-Type": "application/json"}

    async def call(method, path, url=None, expect=200, **kw):
        resp = await client.request(method.upper(), url or path, **kw)
        assert resp.status == expect, (method, url or path, resp.status, await resp.text())
        return await check(doc, method, path, resp)

    team = await call("post", "/v1/enterprise/team", json={"teamId": "acme"}, headers=ek)
    await call("post", "/v1/enterprise/team", json={"teamId": "acme"}, headers=ek, expect=409)
    await call("post", "/v1/enterprise/team", json={"teamId": "-bad"}, headers=ek, expect=422)
    await call("post", "/v1/enterprise/team", data=b"[]", headers=ek, expect=400)
    await call("get", "/v1/enterprise/teams", headers=ek)
    status = "/v1/enterprise/teams/{teamId}/status"
    await call("put", status, "/v1/enterprise/teams/nope/status", json={"status": "DISABLED"}, headers=ek, expect=404)
    await call("put", status, "/v1/enterprise/teams/acme/status", json={"status": "ENABLED"}, headers=ek, expect=409)
    await call("put", status, "/v1/enterprise/teams/acme/status", json={"status": "x"}, headers=ek, expect=400)

    push_h = {**json_h, "Authorization": f"Bearer {team['pushApiKey']}"}
    await call("post", "/push/trip", data=orjson.dumps(trip("6030ebe4ea60426b34e9b3bf")), headers=push_h)
    await call("post", "/push/trip", data=b'{"x": 1}', headers=push_h, expect=400)
    await call("post", "/push/trip", data=b"{}", headers={**push_h, "Content-Type": "text/plain"}, expect=415)
    await call("post", "/push/crash", data=b'{"crashId": "c1"}', headers={**json_h, "Authorization": "Bearer no"},
               expect=401)
    await call("get", "/health")

    token = await call("post", "/oauth/token", data={"grant_type": "client_credentials"},
                       headers={"Authorization": basic("acme", team["pushApiKey"])})
    await call("post", "/oauth/token", data={"grant_type": "password"},
               headers={"Authorization": basic("acme", team["pushApiKey"])}, expect=400)
    await call("post", "/oauth/token", data={"grant_type": "client_credentials", "client_id": "acme",
                                             "client_secret": "wrong"}, expect=401)
    await call("post", "/push/diagnosis", data=b'{"userId": "u1"}',
               headers={**json_h, "Authorization": f"Bearer {token['access_token']}"})

    admin = {"firstname": "Jane", "lastname": "Doe", "password": "PnsPYthv4N?zI%CK"}
    await call("post", "/v1/enterprise/hyperadmin", json={"userId": "jane", **admin}, headers=ek)
    await call("post", "/v1/enterprise/hyperadmin", json={"userId": "jane", **admin}, headers=ek, expect=409)
    await call("post", "/v1/enterprise/hyperadmin", json={"userId": "joe", **admin, "password": "short"},
               headers=ek, expect=422)
    await call("get", "/v1/enterprise/hyperadmins", headers=ek)

    report = "/v1/enterprise/push/trips/report"
    await call("get", report, f"{report}?startDate=2025-01-01&endDate=2025-01-31", headers=ek)
    await call("get", report, f"{report}?startDate=2025-01-01", headers=ek, expect=400)
    await call("get", report, f"{report}?startDate=2025-01-01&endDate=2025-01-31&teamId=nope", headers=ek, expect=404)
    retry = await call("post", "/v1/enterprise/push/crashes/failed/retry", headers=ek)
    task = "/v1/enterprise/task/{taskId}"
    await call("get", task, f"/v1/enterprise/task/{retry['taskId']}", headers=ek)
    await call("get", task, "/v1/enterprise/task/nope", headers=ek, expect=404)

    reader = {"Authorization": f"Bearer {team['adminApiKey']}"}
    hyper = {"Authorization": basic("jane", admin["password"])}
    await call("post", "/v1/query", json={"sql": "SELECT 1 AS n"}, headers=reader)
    await call("post", "/v1/query", json={"sql": "SELECT 1 AS n"}, headers={**reader, "Accept": "text/csv"})
    await call("post", "/v1/query", json={"sql": "SELECT 1"}, headers={**reader, "Accept": "image/png"}, expect=406)
    await call("post", "/v1/query", json={"sql": "SELEC"}, headers=reader, expect=400)
    await call("post", "/v1/query", json={"sql": "SELECT 1", "teamId": "other"}, headers=reader, expect=403)
    await call("post", "/v1/query", json={"sql": "SELECT 1", "teamId": "nope"}, headers=hyper, expect=404)
    export = "/v1/export/{table}"
    await call("get", export, "/v1/export/trips?format=jsonl", headers=reader)
    await call("get", export, "/v1/export/trips?format=xml", headers=reader, expect=400)
    await call("get", export, "/v1/export/nope", headers=hyper, expect=404)

    user = "/v1/enterprise/hyperadmin/{userId}"
    await call("delete", user, "/v1/enterprise/hyperadmin/jane", headers=ek)
    await call("delete", user, "/v1/enterprise/hyperadmin/jane", headers=ek, expect=404)
    await call("put", status, "/v1/enterprise/teams/acme/status", json={"status": "DISABLED"}, headers=ek)
    await call("post", "/push/trip", data=orjson.dumps(trip("6030ebe4ea60426b34e9b3bf")), headers=push_h, expect=403)
    enabled = await call("put", status, "/v1/enterprise/teams/acme/status", json={"status": "ENABLED"}, headers=ek)
    assert set(enabled) == {"status", "pushApiKey", "adminApiKey"}
