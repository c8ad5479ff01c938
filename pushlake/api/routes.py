"""The route table: every operation of the API once, with its handler. It registers the routes
(``register``), it is what ``openapi.py`` describes, and ``tests/test_openapi.py`` checks the app,
the document and what each handler can answer against it.

A route's responses are ``ok`` (a body struct of ``bodies.py``, a push body schema of
``pushbodies.py`` by name, or other media types) and ``err`` (the ``error`` codes answered, in
the ``{error, message}`` body unless told otherwise). The receiver's routes (``RECEIVER``) are
registered by ``ingest.app.build_app`` from its own ``RECEIVER_ROUTES`` (a layer below this one),
which these entries take their handlers from; the others (``API``) by ``pushlake.api.make_app``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ingest.app import RECEIVER_ROUTES, add_routes
from ingest.keys import ROUTES as PUSH_KINDS
from ingest.record import Kind
from lake.schema import TABLES
from queries.export import FORMATS
from queries.worker import ARROW, PARQUET

from . import bodies as b
from . import enterprise, oauth, openapi, operators, reads, status
from .bodies import DQ_DATE_EXAMPLE
from .pushbodies import BODIES


@dataclass(frozen=True)
class Response:
    description: str
    body: Any = None                 # a struct type (or list[...] of one), a component name, or None
    codes: tuple[str, ...] = ()      # error codes (an error response)
    headers: tuple[str, ...] = ()    # response headers, by name (openapi.HEADERS describes them)
    content: dict | None = None      # media type -> struct type or schema, instead of a JSON body


def ok(description: str, body: Any = None, headers: tuple[str, ...] = (), content: dict | None = None) -> Response:
    return Response(description, body, (), headers, content)


def err(description: str, codes: str, headers: tuple[str, ...] = (), body: Any = b.Error) -> Response:
    return Response(description, body, tuple(codes.split()), headers)


@dataclass(frozen=True)
class Param:
    name: str
    where: str                       # "path", "query" or "header"
    description: str
    schema: Any = None               # a type (annotated), a schema dict, or None for a string
    required: bool = False


@dataclass(frozen=True)
class Body:
    schema: Any                      # a struct type, or a component name
    example: Any = None
    media: str = "application/json"


@dataclass(frozen=True)
class Route:
    method: str                      # lower case, as in OpenAPI
    path: str                        # aiohttp's, e.g. /v1/enterprise/hyperadmin/{userId:.+}
    handler: Any
    operation_id: str
    tag: str
    summary: str
    description: str
    security: list
    responses: dict[int, Response]
    body: Body | None = None
    parameters: tuple[Param, ...] = ()

    @property
    def template(self) -> str:
        """The path as OpenAPI (and ``resource.canonical``) write it: without the patterns."""
        return re.sub(r"{(\w+):[^}]+}", r"{\1}", self.path)


def register(app: web.Application, routes: list[Route]) -> None:
    add_routes(app, routes)


# -- security requirements (openapi.SECURITY_SCHEMES describes each scheme) --------------------------
PUSH_SECURITY = [{"pushBearer": []}, {"pushBasic": []}, {"oauth2": []}]
ENTERPRISE_SECURITY = [{"enterpriseKey": []}]
READ_SECURITY = [{"adminBearer": []}, {"hyperadminBasic": []}]
PUBLIC: list = []


# -- the receiver ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Push:
    operation_id: str
    summary: str
    description: str
    example: dict


PUSHES = {
    Kind.TRIP: Push("pushTrip", "Push a trip",
                    "DriveQuant's trip push. Idempotency key `itinId`: the lake keeps one row per trip, the latest "
                    "push wins.",
                    {"itinId": "6030ebe4ea60426b34e9b3bf", "userId": "driver-1",
                     "itineraryData": {"startDate": DQ_DATE_EXAMPLE}}),
    Kind.EVENT: Push("pushTripEvent", "Push a trip event (deletion)",
                     "A `TRIP_DELETION` is a permanent tombstone for that `itinId` in the pushing team, published "
                     "before the `200`: from then on no query returns a row of that trip, whatever the order of "
                     "arrival, and its data is physically erased after the retention.",
                     {"itinId": "6030ebe4ea60426b34e9b3bf", "event": "TRIP_DELETION", "date": DQ_DATE_EXAMPLE}),
    Kind.CRASH: Push("pushCrash", "Push a crash", "DriveQuant's crash push. Idempotency key `crashId`.",
                     {"crashId": "c7e7aaf7905721dc7d90b503", "parameters": {"date": DQ_DATE_EXAMPLE}}),
    Kind.DIAGNOSIS: Push("pushDiagnosis", "Push a diagnosis",
                         "DriveQuant's diagnosis push; an empty one (no events) is the daily heartbeat. Idempotency "
                         "key `userId` + SHA-256 of the body.",
                         {"userId": "john.doe@drivequant.com", "smartphoneData": {"phoneModel": "iPhone 15 Pro"}}),
}

PUSH_RESPONSES = {
    200: ok("Stored durably.", b.PushAck),
    400: err("Body is not a JSON object, a key field is missing, empty, not a string or longer than 256 characters, "
             "or the compressed body is broken", "invalid_json missing_key bad_encoding"),
    401: err("No credentials, unknown or revoked key, invalid or expired token, unsupported scheme",
             "missing_credentials invalid_credentials invalid_token", ("WWW-Authenticate",)),
    403: err("The team is disabled", "team_disabled"),
    413: err("Body (or inflated body) over the size limit", "too_large"),
    415: err("Content-Type is not JSON, or Content-Encoding is not gzip/deflate/identity",
             "unsupported_media_type unsupported_encoding"),
    503: err("Write queue full, free disk below the threshold, or the write failed; retry after `Retry-After` "
             "seconds", "overloaded disk_full write_failed", ("Retry-After",)),
}
CONTENT_ENCODING = Param("Content-Encoding", "header",
                         "`gzip`, `x-gzip` or `deflate` bodies are inflated (bounded); others get 415.",
                         {"type": "string", "enum": ["identity", "gzip", "x-gzip", "deflate"]})


# the receiver registers its own routes (ingest.app.RECEIVER_ROUTES): this table documents them
SERVED = {(r.method, r.path): r.handler for r in RECEIVER_ROUTES}


def push_route(segment: str, kind: int) -> Route:
    p = PUSHES[kind]
    return Route(
        "post", f"/push/{segment}", SERVED[("post", f"/push/{segment}")], p.operation_id, "push", p.summary,
        p.description + " Body: `application/json` (or any `+json` type), optionally gzip or deflate encoded, at "
        "most `--max-body` bytes (default 32 MiB, inflated size). `200` means the raw body is in the log and "
        "fdatasynced; any other status means nothing was stored, and the push should be retried.",
        PUSH_SECURITY, PUSH_RESPONSES, Body(BODIES[kind].name, p.example), (CONTENT_ENCODING,))


RECEIVER: list[Route] = [push_route(segment, kind) for segment, (kind, _) in PUSH_KINDS.items()] + [
    Route("get", "/health", SERVED[("get", "/health")], "health", "service", "Receiver health",
          "State of this receiver process: its log partition, next offset, group-commit counters and the "
          "compactor's lag. `503` with `status: degraded` and the `reasons` while pushes are refused for lack of "
          "disk space, or while the compactor is failing or not advancing (from `compactor.status`).",
          PUBLIC, {200: ok("The state.", b.Health),
                   503: ok("Degraded: the same document, with its reasons.", b.Health)}),
]


# -- OAuth2 ---------------------------------------------------------------------------------------------
OAUTH = Route(
    "post", "/oauth/token", oauth.token, "token", "oauth", "Get an access token (OAuth2 client credentials)",
    "RFC 6749 §4.4. The client is the team: client id = teamId, client secret = pushApiKey, given as HTTP Basic or "
    "as `client_id`/`client_secret` in the form body. The token (`at_...`) is accepted as `Authorization: Bearer` "
    "by the push endpoints until it expires; disabling the team refuses it at once, and re-enabling (new keys) "
    "voids it for good. Errors follow RFC 6749 §5.2.",
    [{"pushBasic": []}, {}],
    {200: ok("The token.", b.TokenResponse, ("Cache-Control", "Pragma")),
     400: err("Body not `application/x-www-form-urlencoded`, `grant_type` missing, `client_id` differs from the "
              "Basic credentials, or a grant other than `client_credentials`",
              "invalid_request unsupported_grant_type", ("Cache-Control",), b.OAuthError),
     401: err("No client authentication, unknown client, wrong secret, malformed Basic credentials, or the team is "
              "disabled (`WWW-Authenticate: Basic` when Basic was used)", "invalid_client",
              ("WWW-Authenticate", "Cache-Control"), b.OAuthError)},
    Body(b.TokenRequest, {"grant_type": "client_credentials"}, "application/x-www-form-urlencoded"))


# -- enterprise -----------------------------------------------------------------------------------------
ENTERPRISE_401 = err("Missing or wrong `x-dq-enterprise-api-key` header", "unauthorized")
NOT_AN_OBJECT = "Body is not a JSON object"
DAY = {"type": "string", "format": "date"}


def creation_errors(exists: str, invalid: str, quota: str) -> dict[int, Response]:
    """What creating a team or a hyper-admin can answer besides 200 (``TeamError``'s statuses)."""
    return {400: err(NOT_AN_OBJECT, "bad_request"), 409: err(exists, "conflict"), 422: err(invalid, "unprocessable"),
            429: err(quota, "too_many_requests")}


def enterprise_route(method: str, path: str, handler, operation_id: str, summary: str, description: str,
                     responses: dict[int, Response], body: Body | None = None,
                     parameters: tuple[Param, ...] = ()) -> Route:
    return Route(method, path, handler, operation_id, "enterprise", summary, description, ENTERPRISE_SECURITY,
                 {**responses, 401: ENTERPRISE_401}, body, parameters)


def report_route(what: str, plural: str, kind: int, item, report, counts: str) -> Route:
    return enterprise_route(
        "get", f"/v1/enterprise/push/{plural}/report", enterprise.report_handler(kind, item, report), f"{plural}Report",
        f"Push {what} report",
        f"Per receive day (UTC) and team, the counts of {what} pushes: {counts}. `{item.__name__}` says exactly what "
        "each count means. `startDate` and `endDate` are days `yyyy-MM-dd` (inclusive).",
        {200: ok("The counts.", report),
         400: err("`startDate`/`endDate` missing, not `yyyy-MM-dd`, or startDate after endDate", "bad_request"),
         404: err("`teamId` names no team", "not_found")},
        parameters=(Param("startDate", "query", "First receive day, `yyyy-MM-dd`.", DAY, required=True),
                    Param("endDate", "query", "Last receive day (inclusive), `yyyy-MM-dd`.", DAY, required=True),
                    Param("teamId", "query", "Only this team.", b.TeamId)))


TEAM_404 = err("`teamId` names no team", "not_found")


def failed_route(what: str, plural: str, kind: int) -> Route:
    return enterprise_route(
        "get", f"/v1/enterprise/push/{plural}/failed", enterprise.failed_handler(kind),
        f"listFailed{plural.capitalize()}", f"List the FAILED {plural}",
        f"The {what} pushes still FAILED: accepted into the log (answered `200`) but not projectable, with the "
        "reason, where the push is in the log and how many projections of it failed. By id, a page of at most "
        "`limit` at a time: pass `nextAfterId` as `afterId` for the next page. An item keeps its id across "
        f"retries (`POST /v1/enterprise/push/{plural}/failed/retry`) and leaves this list once it is fixed.",
        {200: ok("A page of FAILED items.", b.FailedPushes),
         400: err("`limit` or `afterId` is not an integer in its range", "bad_request"),
         404: TEAM_404},
        parameters=(Param("teamId", "query", "Only this team.", b.TeamId),
                    Param("limit", "query", "Items per page.",
                          {"type": "integer", "minimum": 1, "maximum": enterprise.PAGE_MAX,
                           "default": enterprise.PAGE_DEFAULT}),
                    Param("afterId", "query", "Only items with a greater id: the `nextAfterId` of the previous page.",
                          {"type": "integer", "minimum": 0, "default": 0})))


def retry_route(what: str, plural: str, task_type: str) -> Route:
    return enterprise_route(
        "post", f"/v1/enterprise/push/{plural}/failed/retry", enterprise.retry_handler(task_type),
        f"retryFailed{plural.capitalize()}", f"Retry the FAILED {plural}",
        f"Queues a `{task_type}` task that re-projects every {what} push currently FAILED (accepted into the "
        "log but not projectable); the compactor runs it asynchronously. Follow it with "
        "`GET /v1/enterprise/task/{taskId}`: once COMPLETED, `nbFixedItems` were fixed and `nbStillFailedItems` "
        f"failed again (they keep their ids, with the new reason, in `GET /v1/enterprise/push/{plural}/failed`). "
        "No body.",
        {200: ok("The task.", b.RetryTask),
         409: err(f"A {task_type} task is already PENDING or IN_PROGRESS", "conflict")})


ENTERPRISE = [
    enterprise_route(
        "post", "/v1/enterprise/team", enterprise.create_team, "createTeam", "Create a team",
        "Creates an enabled team and returns its keys once (they are stored as hashes). At most `max_teams` teams "
        "(default 100).",
        {200: ok("The team and its keys.", b.TeamCreated),
         **creation_errors("A team with that teamId exists", "teamId missing or not a valid team identifier",
                           "The team quota is reached")},
        Body(b.TeamCreate, {"teamId": "acme"})),
    enterprise_route(
        "get", "/v1/enterprise/teams", enterprise.list_teams, "listTeams", "List teams",
        "Every team with its status, oldest first.", {200: ok("The teams.", list[b.Team])}),
    enterprise_route(
        "put", "/v1/enterprise/teams/{teamId}/status", enterprise.team_status, "setTeamStatus",
        "Enable or disable a team",
        "Disabling revokes the team's push key, admin key and access tokens at once (they get 403, in every receiver "
        "process). Enabling again issues new keys, returned once.",
        {200: ok("The new status (and new keys when enabling).", b.TeamStatusResult),
         400: err(f"{NOT_AN_OBJECT}, or `status` is not ENABLED or DISABLED", "bad_request"),
         404: err("No such team", "not_found"),
         409: err("The team already has that status", "conflict")},
        Body(b.TeamStatus, {"status": "DISABLED"}),
        (Param("teamId", "path", "The team (URL-encoded)."),)),
    enterprise_route(
        "post", "/v1/enterprise/hyperadmin", enterprise.create_hyperadmin, "createHyperAdmin", "Create a hyper-admin",
        "A hyper-admin reads every team through `/v1/query` and `/v1/export` with Basic `userId:password`. At most "
        "`max_hyperadmins` (default 10).",
        {200: ok("The hyper-admin (without the password).", b.HyperAdmin),
         **creation_errors("A hyper-admin with that userId exists",
                           "A name field is missing or invalid, or the password breaks the policy (the message "
                           "lists the missing rules)", "The hyper-admin quota is reached")},
        Body(b.HyperAdminCreate, {"userId": "jane.doe@example.com", "firstname": "Jane", "lastname": "Doe",
                                  "password": "PnsPYthv4N?zI%CK"})),
    enterprise_route(
        "get", "/v1/enterprise/hyperadmins", enterprise.list_hyperadmins, "listHyperAdmins", "List hyper-admins",
        "Every hyper-admin, oldest first.", {200: ok("The hyper-admins.", list[b.HyperAdmin])}),
    enterprise_route(
        "delete", "/v1/enterprise/hyperadmin/{userId:.+}", enterprise.delete_hyperadmin, "deleteHyperAdmin",
        "Delete a hyper-admin", "The account can no longer read, at once.",
        {200: ok("Deleted.", b.HyperAdminDeleted),
         404: err("No such hyper-admin", "not_found")},
        parameters=(Param("userId", "path", "The hyper-admin (URL-encoded)."),)),
    report_route("trip", "trips", Kind.TRIP, b.TripReportItem, b.TripsReport,
                 "received, stored, duplicates, still FAILED, deleted (TRIP_DELETION events) and discarded (pushed "
                 "after their deletion)"),
    report_route("crash", "crashes", Kind.CRASH, b.CrashReportItem, b.CrashesReport,
                 "received, stored, duplicates and still FAILED"),
    report_route("diagnosis", "diagnoses", Kind.DIAGNOSIS, b.DiagnosisReportItem, b.DiagnosesReport,
                 "received, stored, duplicates and still FAILED"),
    failed_route("trip", "trips", Kind.TRIP),
    failed_route("crash", "crashes", Kind.CRASH),
    failed_route("diagnosis", "diagnoses", Kind.DIAGNOSIS),
    retry_route("trip", "trips", "PUSH_FAILED_TRIPS"),
    retry_route("crash", "crashes", "PUSH_FAILED_CRASHES"),
    retry_route("diagnosis", "diagnoses", "PUSH_FAILED_DIAGNOSES"),
    enterprise_route(
        "get", "/v1/enterprise/task/{taskId}", enterprise.get_task, "getTask", "Task status",
        "Progress and result of a retry task: `nbFixedItems` and `nbStillFailedItems` say how its items ended. "
        "COMPLETED means every item was processed, not that every item was fixed.",
        {200: ok("The task.", b.Task),
         404: err("No such task", "not_found")},
        parameters=(Param("taskId", "path", "The task id returned by a retry call."),)),
]


# -- reads ----------------------------------------------------------------------------------------------
READER_ERRORS = {
    401: err("No, unknown or revoked admin key; unknown hyper-admin or wrong password; unsupported scheme",
             "missing_credentials invalid_credentials"),
    403: err("The team is disabled; a team key asked for another team; the statement tried something a reader may "
             "not do (write, file access, settings)", "team_disabled forbidden"),
    404: err("Hyper-admin: `teamId` names no team", "not_found"),
    429: err("This reader already runs `query_per_team` (default 2) queries or exports; or, for a hyper-admin, too "
             "many failed password checks in a row (refused without a check, for 1 s, 2 s, 4 s... until one "
             "succeeds); retry after `Retry-After` seconds", "too_many_requests", ("Retry-After",)),
    503: err("Every query slot (`query_workers`, default 6) is busy, or too many password checks are waiting; retry "
             "after `Retry-After` seconds", "overloaded", ("Retry-After",)),
}
BINARY = {"type": "string", "format": "binary"}
TEXT = {"type": "string"}

READS = [
    Route(
        "post", "/v1/query", reads.query, "query", "reads", "Run a SQL query",
        "One read-only DuckDB statement over the lake views, deleted trips excluded. A team's admin key sees that "
        "team only; a hyper-admin sees every team, or one with `teamId`. The result format follows `Accept`: "
        f"`application/json` (default, also for `*/*`), `text/csv`, `{ARROW}` or `{PARQUET}` (also "
        "`application/x-parquet`); the first supported type listed wins (q-values are ignored). The statement runs "
        "in a process of its own that can write no file, is killed at `query_timeout_s` (default 30 s; 400 "
        "`query_timeout`) and cannot use more than `query_memory_limit` (default 1 GB) plus headroom (400 "
        "`out_of_memory`). The result is cut at `query_max_rows` (default 100,000) and at `query_max_bytes` of body "
        "(default 64 MiB; for Parquet the rows' uncompressed size counts): the rows that fit, "
        "`X-Pushlake-Truncated: true` (and `truncated: true` in JSON). A client that reads nothing for "
        "`query_write_timeout_s` (30 s) is cut off.",
        READ_SECURITY,
        {200: ok("The result.", headers=("X-Pushlake-Rows", "X-Pushlake-Truncated"),
                 content={"application/json": b.QueryResult, "text/csv": TEXT, ARROW: BINARY, PARQUET: BINARY}),
         400: err("Body is not `{\"sql\": \"...\"}`, the statement is invalid, or it ran over the time or memory "
                  "limit", "invalid_request invalid_query query_timeout out_of_memory"),
         **READER_ERRORS,
         406: err("`Accept` names no supported format", "not_acceptable")},
        Body(b.QueryRequest, {"sql": "SELECT itin_id, distance_m FROM trips LIMIT 10"})),
    Route(
        "get", "/v1/export/{table}", reads.export, "export", "reads", "Export a table",
        "Streams one table (deleted trips excluded), ordered by `date`, between two days. Same readers as "
        "`/v1/query`. Errors found before the first byte are JSON; a failure after that cuts the connection rather "
        "than sending a short file.",
        READ_SECURITY,
        {200: ok("The table, streamed.", headers=("X-Pushlake-Rows", "Content-Disposition"),
                 content={mime: BINARY if fmt == "parquet" else TEXT for fmt, mime in FORMATS.items()}),
         400: err("Unknown format, or a date that is not `yyyy-MM-dd`", "invalid_request invalid_query"),
         **READER_ERRORS,
         404: err("No such table; or, for a hyper-admin, `teamId` names no team", "not_found")},
        parameters=(Param("table", "path", "A lake table (another name gets 404).",
                          {"type": "string", "enum": list(TABLES)}),
                    Param("format", "query", "Output format.",
                          {"type": "string", "enum": list(FORMATS), "default": "parquet"}),
                    Param("from", "query", "First day (`date` column, inclusive), `yyyy-MM-dd`.", DAY),
                    Param("to", "query", "Last day (inclusive), `yyyy-MM-dd`.", DAY),
                    Param("teamId", "query", "Only this team. A team key may only give its own team (403 otherwise); "
                                             "for a hyper-admin an unknown team is 404. Default: the key's team, or "
                                             "every team for a hyper-admin.", b.TeamId))),
]


# -- operators ------------------------------------------------------------------------------------------
OPERATOR_SECURITY = [{"enterpriseKey": []}, {"enterpriseBearer": []}, {"hyperadminBasic": []}]
OPERATOR_ERRORS = {
    401: err("No or wrong enterprise key, unknown hyper-admin or wrong password (with a `WWW-Authenticate: Basic` "
             "challenge, for browsers)", "unauthorized missing_credentials invalid_credentials", ("WWW-Authenticate",)),
    403: err("A team's key: these pages show every team", "forbidden team_disabled"),
    429: err("Too many failed password checks in a row for this hyper-admin", "too_many_requests", ("Retry-After",)),
    503: err("Too many password checks waiting", "overloaded", ("Retry-After",)),
}
OPERATORS = [
    Route("get", "/metrics", operators.metrics_handler, "metrics", "service", "Prometheus metrics",
          "Every process of the service (receivers, compactor) in the Prometheus text format: pushes by team, kind, "
          "status and code; ack and fsync latency; group-commit sizes; the compactor's lag per log partition (records "
          "and seconds), step durations, FAILED items and pending tombstones; queries by route and status; free "
          "disk. Scrape it with the enterprise key (`authorization: {type: Bearer, credentials_file: ...}`).",
          OPERATOR_SECURITY, {200: ok("The metrics.", content={"text/plain": TEXT}), **OPERATOR_ERRORS}),
    Route("get", "/status", status.status_page, "statusPage", "service", "Status page",
          "One self-contained HTML page for a person in a browser (log in as a hyper-admin when it asks): pushes per "
          "minute by team and kind, ack latency (p50, p99) and the compactor's lag over the last hours (one point per "
          "minute, SVG drawn by the server, times in UTC), and the current FAILED items, pending tombstones, free "
          "disk, lag per log partition and health reasons. No external resource (`Content-Security-Policy: "
          "default-src 'none'`); it refreshes itself every `refresh` seconds from `/status.json`.",
          OPERATOR_SECURITY,
          {200: ok("The page.", content={"text/html": TEXT}),
           400: err("`hours` is not a whole number from 1 to 6, or `refresh` not one from 1 to 3600",
                    "invalid_request"),
           **OPERATOR_ERRORS},
          parameters=(Param("hours", "query", "Hours the charts span at most (they start at the first sampled "
                                              "minute, and span at least one hour).",
                            {"type": "integer", "minimum": 1, "maximum": 6, "default": 6}),
                      Param("refresh", "query", "Seconds between the page's refreshes.",
                            {"type": "integer", "minimum": 1, "maximum": 3600, "default": 10}))),
    Route("get", "/status.json", status.status_json, "status", "service", "Status page data",
          "What `/status` shows, as JSON: the history's minutes in the window (pushes by team, kind and outcome, ack "
          "latency quantiles, compactor lag, FAILED items, pending tombstones, free disk), the totals per team and "
          "kind, the current numbers and this receiver's health. `revision` changes whenever the data does.",
          OPERATOR_SECURITY,
          {200: ok("The data.", status.StatusReport),
           400: err("`hours` is not a whole number from 1 to 6, or `refresh` not one from 1 to 3600",
                    "invalid_request"),
           **OPERATOR_ERRORS},
          parameters=(Param("hours", "query", "As for `/status`.",
                            {"type": "integer", "minimum": 1, "maximum": 6, "default": 6}),
                      Param("refresh", "query", "Accepted (and checked) as for `/status`, unused.",
                            {"type": "integer", "minimum": 1, "maximum": 3600, "default": 10}))),
    Route("get", "/", status.root, "root", "service", "Where a browser lands",
          "Redirects to the status page (`/status`), which asks for the credentials.", PUBLIC,
          {302: ok("To `/status` (`Location: /status`).", content={"text/plain": TEXT})}),
]


# -- this documentation ---------------------------------------------------------------------------------
SERVICE = [
    Route("get", "/openapi.json", openapi.openapi_json, "openapi", "service", "This document",
          "The OpenAPI 3.1 description of the API.", PUBLIC, {200: ok("The document.", {"type": "object"})}),
    Route("get", "/docs", openapi.docs, "docs", "service", "API documentation page",
          "This document rendered as one self-contained HTML page.", PUBLIC,
          {200: ok("HTML.", content={"text/html": TEXT})}),
]

API: list[Route] = [OAUTH, *ENTERPRISE, *READS, *OPERATORS, *SERVICE]
ROUTES: list[Route] = RECEIVER + API
