"""``GET /openapi.json`` and ``GET /docs``: the API described, and a test keeps it true.

The document is plain Python data built by ``document()``; ``/docs`` renders it server-side into
one self-contained HTML page (no script, no CDN). ``tests/test_openapi.py`` checks that every
route of the app is documented and every documented operation exists.
"""
from __future__ import annotations

import functools
import html
import re

import orjson
from aiohttp import web

from lake.schema import TABLES
from pushlake import __version__
from pushlake.hyperadmins import SPECIALS
from queries.export import FORMATS

DQ_DATE = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"
DQ_DATE_EXAMPLE = "2025-01-30T07:23:22.000+0000"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"


# -- small builders ---------------------------------------------------------------------------------
def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def header_ref(name: str) -> dict:
    return {"$ref": f"#/components/headers/{name}"}


def obj(properties: dict, required: tuple[str, ...] = (), description: str | None = None,
        additional: bool = False, **extra) -> dict:
    out: dict = {"type": "object"}
    if description:
        out["description"] = description
    if required:
        out["required"] = list(required)
    out["properties"] = properties
    out["additionalProperties"] = additional
    out.update(extra)
    return out


def string(description: str, **extra) -> dict:
    return {"type": "string", "description": description, **extra}


def integer(description: str, **extra) -> dict:
    return {"type": "integer", "description": description, **extra}


def dq_date(description: str, nullable: bool = False) -> dict:
    return {"type": ["string", "null"] if nullable else "string",
            "description": f"{description} (`{DQ_DATE}`, UTC)", "examples": [DQ_DATE_EXAMPLE]}


def block(description: str, fields: str = "", **properties) -> dict:
    """A permissive object of the trip body: the named fields are numbers unless given a schema."""
    props = {f: ref("Numeric") for f in fields.split()}
    props.update(properties)
    return obj(props, description=description, additional=True)


def json_content(schema: dict, example=None) -> dict:
    media: dict = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def body(schema: dict, description: str | None = None, example=None) -> dict:
    out: dict = {"required": True, "content": json_content(schema, example)}
    if description:
        out["description"] = description
    return out


def ok(description: str, schema: dict | None = None, headers: dict | None = None,
       content: dict | None = None) -> dict:
    out: dict = {"description": description}
    if headers:
        out["headers"] = headers
    if content is not None:
        out["content"] = content
    elif schema is not None:
        out["content"] = json_content(schema)
    return out


def err(description: str, codes: str, headers: dict | None = None, schema: str = "Error") -> dict:
    """An error response: JSON ``{error, message}`` (or the OAuth2 form), with its ``error`` codes."""
    code_list = ", ".join(f"`{c}`" for c in codes.split())
    return ok(f"{description} (`error`: {code_list})", ref(schema), headers)


def query_param(name: str, description: str, schema: dict | None = None, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema or {"type": "string"}}


def path_param(name: str, description: str, schema: dict | None = None) -> dict:
    return {"name": name, "in": "path", "required": True, "description": description,
            "schema": schema or {"type": "string"}}


def op(tag: str, op_id: str, summary: str, description: str, security: list, responses: dict,
       request_body: dict | None = None, parameters: list | None = None) -> dict:
    out: dict = {"tags": [tag], "operationId": op_id, "summary": summary, "description": description,
                 "security": security}
    if parameters:
        out["parameters"] = parameters
    if request_body:
        out["requestBody"] = request_body
    out["responses"] = responses
    return out


# -- security ---------------------------------------------------------------------------------------
PUSH_SECURITY = [{"pushBearer": []}, {"pushBasic": []}, {"oauth2": []}]
ENTERPRISE_SECURITY = [{"enterpriseKey": []}]
READ_SECURITY = [{"adminBearer": []}, {"hyperadminBasic": []}]
PUBLIC: list = []

SECURITY_SCHEMES = {
    "pushBearer": {"type": "http", "scheme": "bearer",
                   "description": "`Authorization: Bearer <pushApiKey>` (the team's push key, `pk_...`) or "
                                  "`Bearer <access_token>` (`at_...`, from `POST /oauth/token`)."},
    "pushBasic": {"type": "http", "scheme": "basic",
                  "description": "`Authorization: Basic base64(teamId:pushApiKey)`."},
    "oauth2": {"type": "oauth2",
               "description": "OAuth2 client credentials (RFC 6749 §4.4): client id = teamId, client secret = "
                              "pushApiKey. The token is sent as `Authorization: Bearer <access_token>`; it is "
                              "refused once the team is disabled or its keys are re-issued.",
               "flows": {"clientCredentials": {"tokenUrl": "/oauth/token", "scopes": {}}}},
    "enterpriseKey": {"type": "apiKey", "in": "header", "name": "x-dq-enterprise-api-key",
                      "description": "The enterprise API key: `PUSHLAKE_ENTERPRISE_KEY`, or `data/enterprise.key` "
                                     "(created at first start). Compared in constant time."},
    "adminBearer": {"type": "http", "scheme": "bearer",
                    "description": "`Authorization: Bearer <adminApiKey>` (`ak_...`): reads that team's data only."},
    "hyperadminBasic": {"type": "http", "scheme": "basic",
                        "description": "`Authorization: Basic base64(userId:password)` of a hyper-admin: reads "
                                       "every team (or one, with `teamId`)."},
}

# -- schemas ----------------------------------------------------------------------------------------
_TEAM_ID = string("Team identifier: 1-64 characters, letters, digits, `_`, `.`, `-`, not starting with a symbol "
                  "nor ending with `.`; unique whatever the case.",
                  pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_-])?$", examples=["acme"])
_NAME = r"^[A-Za-z0-9 -_]+$"
_ITIN_ID = string("Trip unique identifier (24 hex characters at DriveQuant). Idempotency key of the trip.",
                  minLength=1, maxLength=256, examples=["6030ebe4ea60426b34e9b3bf"])
_PUSH_KEY = string("The team's push key, shown once: push with it (Bearer, or Basic `teamId:pushApiKey`) "
                   "and use it as the OAuth2 client secret.", examples=["pk_..."])
_ADMIN_KEY = string("The team's admin key, shown once: `Bearer` on `/v1/query` and `/v1/export` reads this "
                    "team's data only.", examples=["ak_..."])

_SAMPLE_ARRAYS = ("gpsDate latitude longitude gpsVelocity gpsElevation gpsAccuracy gpsHeading screenLocked "
                  "activityValue roll pitch yaw gyroscopeNormVar")
_NUM_ARRAY = {"type": "array", "items": ref("Numeric")}
_EVENT_ARRAY = {"type": "array", "items": block("An event (`time` s from the start, position, `type`, `level`, "
                                                 "`value`, `duration`, `index` into the route arrays).",
                                                 "time latitude longitude velocity heading elevation distance "
                                                 "type level value duration index")}

SCHEMAS: dict = {
    "Numeric": {"type": ["number", "string", "null"],
                "description": "A number. Numeric strings (`\"1234.5\"`) are read as numbers; a word where a "
                               "number belongs makes the push FAILED at projection."},
    "Trip": obj(
        {
            "itinId": _ITIN_ID,
            "userId": string("DriveKit user id chosen by the customer app."),
            "vehicleId": string("Vehicle id."),
            "firstname": string("Driver first name."),
            "lastname": string("Driver last name."),
            "endDate": dq_date("Trip end date; used when `itineraryData.endDate` is absent"),
            "comments": {"type": "array", "description": "Analysis comments, e.g. `{errorCode: 0, comment: \"OK\"}`.",
                         "items": obj({"errorCode": {"type": "integer"}, "comment": {"type": "string"}},
                                      additional=True)},
            "itineraryData": block("Where and when.",
                                   startDate=dq_date("Trip start date; dates the trip's lake partition (else the "
                                                     "end date, else the receive day)"),
                                   endDate=dq_date("Trip end date"),
                                   **{k: {"type": "string"} for k in ("departureCity", "arrivalCity",
                                                                      "departureAddress", "arrivalAddress")}),
            "itineraryStatistics": block("Trip statistics: durations in s, `distance` in m, `speedMean` in km/h, "
                                         "`meteo` and `transportationMode` codes.",
                                         "tripDuration drivingDuration idlingDuration drivingPercentage "
                                         "idlingPercentage distance speedMean subdispNb meteo transportationMode",
                                         day={"type": "boolean"}, weekDay={"type": "boolean"}),
            "ecoDriving": block("Eco-driving score (0-10) and sub-scores.",
                                "score scoreAccel scoreMain scoreDecel stdDevAccel stdDevMain stdDevDecel energyClass"),
            "fuelEstimation": block("Fuel and CO2 estimation.",
                                    "co2Mass co2Emission fuelVolume fuelConsumption idleFuelVolume idleFuelPercentage "
                                    "idleFuelConsumption idleCo2Emission idleCo2Mass coldFuelVolume",
                                    engineTempStatus={"type": "boolean"}),
            "safety": block("Safety score (0-10) and event counts.",
                            "safetyScore nbAdh nbAccel nbDecel nbAdhCrit nbAccelCrit nbDecelCrit"),
            "advancedEcoDriving": block("Eco-driving per road context (`ecoDrivingContext[]`)."),
            "advancedFuelEstimation": block("Fuel estimation per road context (`fuelEstimationContext[]`)."),
            "advancedSafety": block("Safety per road context (`safetyContext[]`)."),
            "pollutants": block("Pollutant estimates.", "co hc nox soot"),
            "tireWear": block("Tire wear indicators."),
            "brakeWear": block("Brake wear indicators."),
            "driverDistraction": block("Phone distraction.",
                                       "score nbUnlock durationUnlock durationPercentUnlock distanceUnlock "
                                       "distancePercentUnlock scoreUnlock scoreCall"),
            "speedingStatistics": block("Speeding.", "score distance duration speedingDistance speedingDuration"),
            "energyEstimation": block("Energy estimation (electric vehicles)."),
            "logbook": block("Logbook status.", "status"),
            "safetyEvents": _EVENT_ARRAY,
            "speedingEvents": _EVENT_ARRAY,
            "callEvents": _EVENT_ARRAY,
            "tripAdvicesData": {"type": "array", "items": {"type": "object"}, "description": "Coaching advice."},
            "metaData": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "Customer metadata set in the app."},
            "route": block("Raw per-sample tables: parallel arrays of the same length, about one sample per "
                           "second (`gpsDate` in Unix seconds). Arrays of different lengths make the push FAILED.",
                           **{name: _NUM_ARRAY for name in _SAMPLE_ARRAYS.split()}),
        },
        required=("itinId",), additional=True,
        description="A DriveQuant trip push: the trip analysis (scores grouped by category) plus the raw data "
                    "recorded by the phone. Only `itinId` is checked on receipt; every other field is optional "
                    "and any unknown field is kept (in the `extra` JSON column). A body with an unexpected shape "
                    "is acknowledged and, if it cannot be projected, quarantined as FAILED. The latest push of "
                    "an `itinId` wins; a trip pushed after its deletion never becomes visible."),
    "TripDeletion": obj(
        {"itinId": _ITIN_ID,
         "event": string("The modification event. `TRIP_DELETION` deletes the trip; other values are stored, "
                         "not acted upon.", minLength=1, maxLength=256, examples=["TRIP_DELETION"]),
         "date": dq_date("When the user deleted the trip")},
        required=("itinId", "event"), additional=True,
        description="A trip event (DriveQuant \"push deleted trip\"). Idempotency key: `itinId` + `event`."),
    "Crash": obj(
        {"crashId": string("DriveQuant crash id; idempotency key (latest push wins).", minLength=1, maxLength=256),
         "customerId": string("DriveQuant customer id."),
         "driverId": string("DriveQuant (internal) user id."),
         "userId": string("DriveKit user id set by the app."),
         "parameters": obj({"localTripId": string("Temporary trip id generated by the SDK (not the itinId)."),
                            "date": dq_date("Crash date; dates the crash's lake partition"),
                            "tripStartDate": dq_date("Start date of the trip"),
                            "gpsWindowNeg": ref("Numeric"), "gpsWindowPos": ref("Numeric"),
                            "imuWindowNeg": ref("Numeric"), "imuWindowPos": ref("Numeric"),
                            "imuFrequency": ref("Numeric")},
                           additional=True, description="The SDK's crash recording configuration."),
         "probability": ref("Numeric"),
         "status": string("`CONFIRMED` or `UNCONFIRMED`."),
         "latitude": ref("Numeric"), "longitude": ref("Numeric"), "velocity": ref("Numeric")},
        required=("crashId",), additional=True,
        description="A DriveQuant crash push. Only `crashId` is checked on receipt; other fields are optional."),
    "Diagnosis": obj(
        {"userId": string("User unique identifier.", minLength=1, maxLength=256,
                          examples=["john.doe@drivequant.com"]),
         "smartphoneData": obj({k: {"type": "string"} for k in
                                ("phoneModel", "appBuildNumber", "appVersion", "osType", "osVersion", "sdkVersion")},
                               additional=True, description="The phone sending the data."),
         "events": {"type": "array", "items": {"type": "object"},
                    "description": "Diagnosis events (permissions, sensors, user events), kept as JSON."}},
        required=("userId",), additional=True,
        description="A DriveQuant diagnosis push. A push without events is the daily heartbeat (\"no change, "
                    "app alive\"). Idempotency key: `userId` + SHA-256 of the body."),
    "PushAck": obj({"status": {"const": "OK"},
                    "partition": string("Log partition that holds the push.", examples=["p0"]),
                    "offset": integer("Offset of the push in that partition.", minimum=0)},
                   required=("status", "partition", "offset"),
                   description="The push is in the log and fdatasynced: it will not be lost."),
    "Health": obj({"status": string("`ok`, or `degraded` (with a 503) while free disk is below the threshold "
                                    "(pushes then get 503) or the compactor is failing or not advancing.",
                                    enum=["ok", "degraded"]),
                   "reasons": {"type": "array", "items": {"type": "string"},
                               "description": "Why the status is `degraded`, one sentence each (empty when `ok`)."},
                   "compactor": {"description": "The compactor over this receiver's partition (null with "
                                                "`--no-compactor`).",
                                 "anyOf": [{"type": "null"},
                                           obj({"lagRecords": integer("Records of this partition not compacted yet."),
                                                "failures": {"type": ["integer", "null"],
                                                             "description": "Failed steps in a row."},
                                                "lastError": {"type": ["string", "null"],
                                                              "description": "The error of the last failed step."},
                                                "lastStep": {"type": ["object", "null"],
                                                             "description": "The last step that stored records: "
                                                                            "`at` (Unix seconds), `records`, "
                                                                            "`stored`, `failed`, `seconds`."}})]},
                   "partition": string("Log partition of this receiver process.", examples=["p0"]),
                   "nextOffset": integer("Offset the next push will get."),
                   "pending": integer("Pushes waiting for the group commit."),
                   "batches": integer("Group commits done since start."),
                   "records": integer("Pushes committed since start."),
                   "recovery": {"description": "A torn or corrupt log tail cut when this process started "
                                               "(the bytes are kept aside as `savedAs`), or null.",
                                "anyOf": [{"type": "null"},
                                          obj({"segment": string("Segment file."),
                                               "keptBytes": integer("Valid bytes kept."),
                                               "cutBytes": integer("Bytes cut off."),
                                               "reason": string("What was wrong."),
                                               "savedAs": string("File holding the cut bytes.")})]}},
                  required=("status", "partition", "nextOffset", "pending", "batches", "records")),
    "TokenRequest": obj({"grant_type": string("Must be `client_credentials`.", examples=["client_credentials"]),
                         "client_id": string("The teamId (or use HTTP Basic)."),
                         "client_secret": string("The team's pushApiKey (or use HTTP Basic)."),
                         "scope": string("Ignored.")},
                        required=("grant_type",), additional=True),
    "TokenResponse": obj({"access_token": string("Signed token (`at_...`) for `Authorization: Bearer`."),
                          "token_type": {"const": "Bearer"},
                          "expires_in": integer("Lifetime in seconds (`token_ttl_s`, default 3600).")},
                         required=("access_token", "token_type", "expires_in")),
    "TeamCreate": obj({"teamId": _TEAM_ID}, required=("teamId",), additional=True),
    "TeamCreated": obj({"teamId": _TEAM_ID, "pushApiKey": _PUSH_KEY, "adminApiKey": _ADMIN_KEY},
                       required=("teamId", "pushApiKey", "adminApiKey"),
                       description="The new team, enabled, with its keys (stored only as hashes: shown once)."),
    "Team": obj({"teamId": _TEAM_ID, "status": string("Team status.", enum=["ENABLED", "DISABLED"]),
                 "creationDate": dq_date("Creation date")},
                required=("teamId", "status", "creationDate")),
    "TeamStatus": obj({"status": string("The new status.", enum=["ENABLED", "DISABLED"])},
                      required=("status",), additional=True),
    "TeamStatusResult": obj({"status": string("The new status.", enum=["ENABLED", "DISABLED"]),
                             "pushApiKey": _PUSH_KEY, "adminApiKey": _ADMIN_KEY},
                            required=("status",),
                            description="Disabling revokes the team's keys and tokens at once (they get 403). "
                                        "Enabling issues new keys, returned once here; the old keys and every "
                                        "older token stay invalid (401)."),
    "HyperAdminCreate": obj(
        {"userId": string("Unique id (an e-mail passes), at most 128 characters.", pattern=_NAME, maxLength=128),
         "firstname": string("First name, at most 128 characters.", pattern=_NAME, maxLength=128),
         "lastname": string("Last name, at most 128 characters.", pattern=_NAME, maxLength=128),
         "password": string(f"At least 12 characters with a lowercase letter, an uppercase letter, a digit and a "
                            f"special character among `{SPECIALS}`. Stored with scrypt.",
                            pattern=r"^(?=.*[\d])(?=.*[a-z])(?=.*[A-Z])(?=.*[!@#$%^?=+_-]).{12,}$",
                            examples=["PnsPYthv4N?zI%CK"])},
        required=("userId", "firstname", "lastname", "password"), additional=True),
    "HyperAdmin": obj({"userId": {"type": "string"}, "firstname": {"type": "string"},
                       "lastname": {"type": "string"}, "creationDate": dq_date("Creation date (list only)")},
                      required=("userId", "firstname", "lastname")),
    "HyperAdminDeleted": obj({"userId": {"type": "string"}, "deleted": {"const": True}},
                             required=("userId", "deleted")),
    "PushReportItem": obj(
        {"date": string("Receive day (UTC) of the pushes counted.", format="date"),
         "teamId": _TEAM_ID,
         "received": integer("Pushes of this kind received that day and already read by the compactor (pushes "
                             "still waiting in the log are not counted yet), every retry included."),
         "stored": integer("Pushes that became the version in the lake: a new key, or a newer push whose body "
                           "differs from the stored one (an update). A FAILED push later retried successfully "
                           "counts here, on its receive day."),
         "duplicates": integer("Pushes that changed nothing: a newer push with the same body as the stored "
                               "version, or one older than the version in the lake (arrived out of order)."),
         "failed": integer("Pushes of that day that could not be projected and are still FAILED now (a live "
                           "count: it drops when a retry succeeds, a newer good push of the same key arrives, or "
                           "the trip is deleted)."),
         "deleted": integer("Trips report only: `TRIP_DELETION` events received that day (each push counts, "
                            "repeats included)."),
         "discarded": integer("Trips report only: trip pushes received after that trip's deletion, never made "
                              "visible.")},
        required=("date", "teamId", "received", "stored", "duplicates", "failed"),
        description="Counts per receive day and team; counters are committed with the records they count."),
    "PushReport": obj({"startDate": string("First day.", format="date"),
                       "endDate": string("Last day (inclusive).", format="date"),
                       "items": {"type": "array", "items": ref("PushReportItem"),
                                 "description": "One item per day and team with any activity, sorted by day "
                                                "then team."}},
                      required=("startDate", "endDate", "items")),
    "RetryTask": obj({"taskId": string("Task id (24 hex characters).", examples=["6753030831fe9826412bac5c"]),
                      "nbItems": integer("FAILED items queued for re-projection (0: the task is COMPLETED at once).")},
                     required=("taskId", "nbItems")),
    "Task": obj({"taskId": {"type": "string"},
                 "createdAt": dq_date("Creation date"),
                 "completedAt": dq_date("Completion date, null until COMPLETED", nullable=True),
                 "type": string("Task type.", enum=["PUSH_FAILED_TRIPS", "PUSH_FAILED_CRASHES"]),
                 "status": string("`PENDING` (queued), `IN_PROGRESS` (`nbRemainingItems` decreases), `COMPLETED` "
                                  "(`nbRemainingItems` = 0, `completedAt` set). `CANCELED` and `FAILED` are part of "
                                  "DriveQuant's vocabulary; pushlake does not set them today.",
                                  enum=["PENDING", "IN_PROGRESS", "COMPLETED", "CANCELED", "FAILED"]),
                 "nbItems": integer("Items to process."),
                 "nbRemainingItems": integer("Items not processed yet.")},
                required=("taskId", "createdAt", "completedAt", "type", "status", "nbItems", "nbRemainingItems")),
    "QueryRequest": obj({"sql": string("One read-only DuckDB statement over the views "
                                       f"({', '.join(f'`{t}`' for t in TABLES)}).",
                                       minLength=1, examples=["SELECT count(*) AS n FROM trips"]),
                         "teamId": string("Hyper-admin: restrict to one team (404 if unknown). A team key may only "
                                          "give its own team (403 otherwise).")},
                        required=("sql",), additional=True),
    "QueryResult": obj({"columns": {"type": "array", "items": obj({"name": {"type": "string"},
                                                                     "type": string("Arrow type.")},
                                                                    required=("name", "type"))},
                        "rows": {"type": "array", "items": {"type": "object", "additionalProperties": True},
                                 "description": "One object per row, column name to value (dates as strings)."},
                        "rowCount": integer("Rows returned."),
                        "truncated": {"type": "boolean",
                                      "description": "True when the result had more rows than `query_max_rows` "
                                                     "(default 100,000) and was cut."}},
                       required=("columns", "rows", "rowCount", "truncated")),
    "Error": obj({"error": string("Machine-readable code."), "message": string("What went wrong, for a human.")},
                 required=("error", "message")),
    "OAuthError": obj({"error": string("RFC 6749 §5.2 code."), "error_description": {"type": "string"}},
                      required=("error", "error_description")),
}

HEADERS = {
    "RetryAfter": {"description": "Seconds to wait before retrying (1 when overloaded or a reader is at its limit, "
                                  "what remains of the backoff after failed password checks, 30 after a write error, "
                                  "60 when the disk is full).", "schema": {"type": "integer"}},
    "WWWAuthenticate": {"description": "The authentication challenge.", "schema": {"type": "string"}},
    "CacheControl": {"description": "`no-store`: tokens and token errors are never cached.",
                     "schema": {"type": "string"}},
    "Pragma": {"description": "`no-cache`.", "schema": {"type": "string"}},
    "Rows": {"description": "Rows in the result (or in the export).", "schema": {"type": "integer"}},
    "Truncated": {"description": "`true` when the result was cut at the row limit.",
                  "schema": {"type": "string", "enum": ["true", "false"]}},
    "ContentDisposition": {"description": "`attachment; filename=\"<table>.<format>\"`.", "schema": {"type": "string"}},
}


# -- responses shared by several operations -------------------------------------------------------------
def enterprise_401() -> dict:
    return err("Missing or wrong `x-dq-enterprise-api-key` header", "unauthorized")


def reader_errors() -> dict:
    return {
        "401": err("No, unknown or revoked admin key; unknown hyper-admin or wrong password; unsupported scheme",
                   "missing_credentials invalid_credentials"),
        "403": err("The team is disabled; a team key asked for another team; the statement tried something "
                   "a reader may not do (write, file access, settings)", "team_disabled forbidden"),
        "404": err("Hyper-admin: `teamId` names no team", "not_found"),
        "429": err("This reader already runs `query_per_team` (default 2) queries or exports; or, for a "
                   "hyper-admin, too many failed password checks in a row (refused without a check, for 1 s, "
                   "2 s, 4 s... until one succeeds); retry after `Retry-After` seconds", "too_many_requests",
                   {"Retry-After": header_ref("RetryAfter")}),
        "503": err("Every query slot (`query_workers`, default 6) is busy, or too many password checks are "
                   "waiting; retry after `Retry-After` seconds", "overloaded",
                   {"Retry-After": header_ref("RetryAfter")}),
    }


TEAM_PARAM = query_param("teamId", "Only this team. A team key may only give its own team (403 otherwise); "
                                   "for a hyper-admin an unknown team is 404. Default: the key's team, or every team "
                                   "for a hyper-admin.", _TEAM_ID)


def push_operation(op_id: str, summary: str, description: str, schema: str, example: dict) -> dict:
    return op(
        "push", op_id, summary,
        description + " Body: `application/json` (or any `+json` type), optionally gzip or deflate encoded, at "
        "most `--max-body` bytes (default 32 MiB, inflated size). `200` means the raw body is in the log and "
        "fdatasynced; any other status means nothing was stored, and the push should be retried.",
        PUSH_SECURITY,
        {"200": ok("Stored durably.", ref("PushAck")),
         "400": err("Body is not a JSON object, a key field is missing, empty, not a string or longer than 256 "
                    "characters, or the compressed body is broken", "invalid_json missing_key bad_encoding"),
         "401": err("No credentials, unknown or revoked key, invalid or expired token, unsupported scheme",
                    "missing_credentials invalid_credentials invalid_token",
                    {"WWW-Authenticate": header_ref("WWWAuthenticate")}),
         "403": err("The team is disabled", "team_disabled"),
         "413": err("Body (or inflated body) over the size limit", "too_large"),
         "415": err("Content-Type is not JSON, or Content-Encoding is not gzip/deflate/identity",
                    "unsupported_media_type unsupported_encoding"),
         "503": err("Write queue full, free disk below the threshold, or the write failed; retry after "
                    "`Retry-After` seconds", "overloaded disk_full write_failed",
                    {"Retry-After": header_ref("RetryAfter")})},
        body(ref(schema), example=example),
        [{"name": "Content-Encoding", "in": "header", "required": False,
          "description": "`gzip`, `x-gzip` or `deflate` bodies are inflated (bounded); others get 415.",
          "schema": {"type": "string", "enum": ["identity", "gzip", "x-gzip", "deflate"]}}])


def report_operation(op_id: str, what: str, fields: str) -> dict:
    return op(
        "enterprise", op_id, f"Push {what} report",
        f"Per receive day (UTC) and team, the counts of {what} pushes: {fields}. `PushReportItem` says exactly "
        "what each count means. `startDate` and `endDate` are days `yyyy-MM-dd` (inclusive).",
        ENTERPRISE_SECURITY,
        {"200": ok("The counts.", ref("PushReport")),
         "400": err("`startDate`/`endDate` missing, not `yyyy-MM-dd`, or startDate after endDate", "bad_request"),
         "401": enterprise_401(),
         "404": err("`teamId` names no team", "not_found")},
        parameters=[query_param("startDate", "First receive day, `yyyy-MM-dd`.", {"type": "string", "format": "date"},
                                required=True),
                    query_param("endDate", "Last receive day (inclusive), `yyyy-MM-dd`.",
                                {"type": "string", "format": "date"}, required=True),
                    query_param("teamId", "Only this team.", _TEAM_ID)])


def retry_operation(op_id: str, what: str, task_type: str) -> dict:
    return op(
        "enterprise", op_id, f"Retry the FAILED {what}",
        f"Queues a `{task_type}` task that re-projects every {what[:-1]} push currently FAILED (accepted into the "
        "log but not projectable); the compactor runs it asynchronously. Follow it with "
        "`GET /v1/enterprise/task/{taskId}`. No body.",
        ENTERPRISE_SECURITY,
        {"200": ok("The task.", ref("RetryTask")),
         "401": enterprise_401(),
         "409": err(f"A {task_type} task is already PENDING or IN_PROGRESS", "conflict")})


# -- the document -----------------------------------------------------------------------------------
def document() -> dict:
    """The OpenAPI 3.1 document of ``pushlake.api.make_app`` (a fresh dict at each call)."""
    enterprise_body_400 = "Body is not a JSON object"
    paths = {
        "/push/trip": {"post": push_operation(
            "pushTrip", "Push a trip",
            "DriveQuant's trip push. Idempotency key `itinId`: the lake keeps one row per trip, the latest push "
            "wins.", "Trip", {"itinId": "6030ebe4ea60426b34e9b3bf", "userId": "driver-1",
                              "itineraryData": {"startDate": DQ_DATE_EXAMPLE}})},
        "/push/trip/event": {"post": push_operation(
            "pushTripEvent", "Push a trip event (deletion)",
            "A `TRIP_DELETION` is a permanent tombstone for that `itinId` in the pushing team, published before "
            "the `200`: from then on no query returns a row of that trip, whatever the order of arrival, and its "
            "data is physically erased after the retention.", "TripDeletion",
            {"itinId": "6030ebe4ea60426b34e9b3bf", "event": "TRIP_DELETION", "date": DQ_DATE_EXAMPLE})},
        "/push/crash": {"post": push_operation(
            "pushCrash", "Push a crash", "DriveQuant's crash push. Idempotency key `crashId`.", "Crash",
            {"crashId": "c7e7aaf7905721dc7d90b503", "parameters": {"date": DQ_DATE_EXAMPLE}})},
        "/push/diagnosis": {"post": push_operation(
            "pushDiagnosis", "Push a diagnosis",
            "DriveQuant's diagnosis push; an empty one (no events) is the daily heartbeat. Idempotency key "
            "`userId` + SHA-256 of the body.", "Diagnosis",
            {"userId": "john.doe@drivequant.com", "smartphoneData": {"phoneModel": "iPhone 15 Pro"}})},
        "/health": {"get": op(
            "service", "health", "Receiver health",
            "State of this receiver process: its log partition, next offset, group-commit counters and the "
            "compactor's lag. `503` with `status: degraded` and the `reasons` while pushes are refused for lack "
            "of disk space, or while the compactor is failing or not advancing (from `compactor.status`).",
            PUBLIC, {"200": ok("The state.", ref("Health")),
                     "503": ok("Degraded: the same document, with its reasons.", ref("Health"))})},
        "/oauth/token": {"post": op(
            "oauth", "token", "Get an access token (OAuth2 client credentials)",
            "RFC 6749 §4.4. The client is the team: client id = teamId, client secret = pushApiKey, given as "
            "HTTP Basic or as `client_id`/`client_secret` in the form body. The token (`at_...`) is accepted as "
            "`Authorization: Bearer` by the push endpoints until it expires; disabling the team refuses it at "
            "once, and re-enabling (new keys) voids it for good. Errors follow RFC 6749 §5.2.",
            [{"pushBasic": []}, {}],
            {"200": ok("The token.", ref("TokenResponse"),
                       {"Cache-Control": header_ref("CacheControl"), "Pragma": header_ref("Pragma")}),
             "400": err("Body not `application/x-www-form-urlencoded`, `grant_type` missing, `client_id` differs "
                        "from the Basic credentials, or a grant other than `client_credentials`",
                        "invalid_request unsupported_grant_type", {"Cache-Control": header_ref("CacheControl")},
                        schema="OAuthError"),
             "401": err("No client authentication, unknown client, wrong secret, malformed Basic credentials, or "
                        "the team is disabled (`WWW-Authenticate: Basic` when Basic was used)", "invalid_client",
                        {"WWW-Authenticate": header_ref("WWWAuthenticate"),
                         "Cache-Control": header_ref("CacheControl")}, schema="OAuthError")},
            {"required": True, "content": {"application/x-www-form-urlencoded": {
                "schema": ref("TokenRequest"), "example": {"grant_type": "client_credentials"}}}})},
        "/v1/enterprise/team": {"post": op(
            "enterprise", "createTeam", "Create a team",
            "Creates an enabled team and returns its keys once (they are stored as hashes). At most `max_teams` "
            "teams (default 100).", ENTERPRISE_SECURITY,
            {"200": ok("The team and its keys.", ref("TeamCreated")),
             "400": err(enterprise_body_400, "bad_request"),
             "401": enterprise_401(),
             "409": err("A team with that teamId exists", "conflict"),
             "422": err("teamId missing or not a valid team identifier", "unprocessable"),
             "429": err("The team quota is reached", "too_many_requests")},
            body(ref("TeamCreate"), example={"teamId": "acme"}))},
        "/v1/enterprise/teams": {"get": op(
            "enterprise", "listTeams", "List teams", "Every team with its status, oldest first.",
            ENTERPRISE_SECURITY,
            {"200": ok("The teams.", {"type": "array", "items": ref("Team")}),
             "401": enterprise_401()})},
        "/v1/enterprise/teams/{teamId}/status": {"put": op(
            "enterprise", "setTeamStatus", "Enable or disable a team",
            "Disabling revokes the team's push key, admin key and access tokens at once (they get 403, in every "
            "receiver process). Enabling again issues new keys, returned once.", ENTERPRISE_SECURITY,
            {"200": ok("The new status (and new keys when enabling).", ref("TeamStatusResult")),
             "400": err(f"{enterprise_body_400}, or `status` is not ENABLED or DISABLED", "bad_request"),
             "401": enterprise_401(),
             "404": err("No such team", "not_found"),
             "409": err("The team already has that status", "conflict")},
            body(ref("TeamStatus"), example={"status": "DISABLED"}),
            [path_param("teamId", "The team (URL-encoded).")])},
        "/v1/enterprise/hyperadmin": {"post": op(
            "enterprise", "createHyperAdmin", "Create a hyper-admin",
            "A hyper-admin reads every team through `/v1/query` and `/v1/export` with Basic `userId:password`. "
            "At most `max_hyperadmins` (default 10).", ENTERPRISE_SECURITY,
            {"200": ok("The hyper-admin (without the password).", ref("HyperAdmin")),
             "400": err(enterprise_body_400, "bad_request"),
             "401": enterprise_401(),
             "409": err("A hyper-admin with that userId exists", "conflict"),
             "422": err("A name field is missing or invalid, or the password breaks the policy (the message "
                        "lists the missing rules)", "unprocessable"),
             "429": err("The hyper-admin quota is reached", "too_many_requests")},
            body(ref("HyperAdminCreate"), example={"userId": "jane.doe@example.com", "firstname": "Jane",
                                                   "lastname": "Doe", "password": "PnsPYthv4N?zI%CK"}))},
        "/v1/enterprise/hyperadmins": {"get": op(
            "enterprise", "listHyperAdmins", "List hyper-admins", "Every hyper-admin, oldest first.",
            ENTERPRISE_SECURITY,
            {"200": ok("The hyper-admins.", {"type": "array", "items": ref("HyperAdmin")}),
             "401": enterprise_401()})},
        "/v1/enterprise/hyperadmin/{userId}": {"delete": op(
            "enterprise", "deleteHyperAdmin", "Delete a hyper-admin",
            "The account can no longer read, at once.", ENTERPRISE_SECURITY,
            {"200": ok("Deleted.", ref("HyperAdminDeleted")),
             "401": enterprise_401(),
             "404": err("No such hyper-admin", "not_found")},
            parameters=[path_param("userId", "The hyper-admin (URL-encoded).")])},
        "/v1/enterprise/push/trips/report": {"get": report_operation(
            "tripsReport", "trip", "received, stored, duplicates, still FAILED, deleted (TRIP_DELETION events) "
                                   "and discarded (pushed after their deletion)")},
        "/v1/enterprise/push/crashes/report": {"get": report_operation(
            "crashesReport", "crash", "received, stored, duplicates and still FAILED")},
        "/v1/enterprise/push/trips/failed/retry": {"post": retry_operation(
            "retryFailedTrips", "trips", "PUSH_FAILED_TRIPS")},
        "/v1/enterprise/push/crashes/failed/retry": {"post": retry_operation(
            "retryFailedCrashes", "crashes", "PUSH_FAILED_CRASHES")},
        "/v1/enterprise/task/{taskId}": {"get": op(
            "enterprise", "getTask", "Task status", "Progress of a retry task.", ENTERPRISE_SECURITY,
            {"200": ok("The task.", ref("Task")),
             "401": enterprise_401(),
             "404": err("No such task", "not_found")},
            parameters=[path_param("taskId", "The task id returned by a retry call.")])},
        "/v1/query": {"post": op(
            "reads", "query", "Run a SQL query",
            "One read-only DuckDB statement over the lake views, deleted trips excluded. A team's admin key "
            "sees that team only; a hyper-admin sees every team, or one with `teamId`. The result format follows "
            f"`Accept`: `application/json` (default, also for `*/*`), `text/csv`, `{ARROW}` or `{PARQUET}` "
            "(also `application/x-parquet`); the first supported type listed wins (q-values are ignored). The "
            "statement runs in a process of its own that can write no file, is killed at `query_timeout_s` "
            "(default 30 s; 400 `query_timeout`) and cannot use more than `query_memory_limit` (default 1 GB) "
            "plus headroom (400 `out_of_memory`). The result is cut at `query_max_rows` (default 100,000) "
            "and at `query_max_bytes` of body (default 64 MiB; for Parquet the rows' uncompressed size "
            "counts): the rows that fit, `X-Pushlake-Truncated: true` (and `truncated: true` in JSON). "
            "A client that reads nothing for `query_write_timeout_s` (30 s) is cut off.", READ_SECURITY,
            {"200": ok("The result.", headers={"X-Pushlake-Rows": header_ref("Rows"),
                                               "X-Pushlake-Truncated": header_ref("Truncated")},
                       content={"application/json": {"schema": ref("QueryResult")},
                                "text/csv": {"schema": {"type": "string"}},
                                ARROW: {"schema": {"type": "string", "format": "binary"}},
                                PARQUET: {"schema": {"type": "string", "format": "binary"}}}),
             "400": err("Body is not `{\"sql\": \"...\"}`, the statement is invalid, or it ran over the time "
                        "or memory limit", "invalid_request invalid_query query_timeout out_of_memory"),
             **reader_errors(),
             "406": err("`Accept` names no supported format", "not_acceptable")},
            body(ref("QueryRequest"), example={"sql": "SELECT itin_id, distance_m FROM trips LIMIT 10"}))},
        "/v1/export/{table}": {"get": op(
            "reads", "export", "Export a table",
            "Streams one table (deleted trips excluded), ordered by `date`, between two days. Same readers as "
            "`/v1/query`. Errors found before the first byte are JSON; a failure after that cuts the connection "
            "rather than sending a short file.", READ_SECURITY,
            {"200": ok("The table, streamed.",
                       headers={"X-Pushlake-Rows": header_ref("Rows"),
                                "Content-Disposition": header_ref("ContentDisposition")},
                       content={mime: {"schema": {"type": "string"} if fmt != "parquet"
                                       else {"type": "string", "format": "binary"}}
                                for fmt, mime in FORMATS.items()}),
             "400": err("Unknown format, or a date that is not `yyyy-MM-dd`",
                        "invalid_request invalid_query"),
             **reader_errors(),
             "404": err("No such table; or, for a hyper-admin, `teamId` names no team", "not_found")},
            parameters=[path_param("table", "A lake table (another name gets 404).", {"type": "string",
                                                                                      "enum": list(TABLES)}),
                        query_param("format", "Output format.", {"type": "string", "enum": list(FORMATS),
                                                                 "default": "parquet"}),
                        query_param("from", "First day (`date` column, inclusive), `yyyy-MM-dd`.",
                                    {"type": "string", "format": "date"}),
                        query_param("to", "Last day (inclusive), `yyyy-MM-dd`.", {"type": "string", "format": "date"}),
                        TEAM_PARAM])},
        "/openapi.json": {"get": op(
            "service", "openapi", "This document", "The OpenAPI 3.1 description of the API.", PUBLIC,
            {"200": ok("The document.", {"type": "object"})})},
        "/docs": {"get": op(
            "service", "docs", "API documentation page", "This document rendered as one self-contained HTML page.",
            PUBLIC, {"200": ok("HTML.", content={"text/html": {"schema": {"type": "string"}}})})},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "pushlake",
            "version": __version__,
            "summary": "A data lake for telematics push data (DriveQuant push and enterprise services).",
            "description": "Receives DriveQuant's trip, trip-deletion, crash and diagnosis pushes (`/push/*`), "
                           "acknowledging each once it is durable; administers teams, hyper-admins, push reports "
                           f"and retry tasks like DriveQuant's enterprise API (`/v1/enterprise/*`, dates `{DQ_DATE}`);"
                           " and serves team-scoped SQL queries and exports (`/v1/query`, `/v1/export/{table}`). "
                           "Errors are JSON `{error, message}` (OAuth2: `{error, error_description}`).",
            "license": {"name": "see the repository"},
        },
        "tags": [{"name": "push", "description": "What DriveQuant calls (SPEC §3)."},
                 {"name": "oauth", "description": "OAuth2 client credentials for the push endpoints."},
                 {"name": "enterprise", "description": "Teams, hyper-admins, push reports, retry tasks (SPEC §5)."},
                 {"name": "reads", "description": "Team-scoped SQL and exports."},
                 {"name": "service", "description": "Health and this documentation."}],
        "paths": paths,
        "components": {"securitySchemes": SECURITY_SCHEMES, "schemas": SCHEMAS, "headers": HEADERS},
    }


# -- /docs: the document as HTML ------------------------------------------------------------------------
CSS = """
body{font:15px/1.45 system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;color:#222}
h2{border-bottom:1px solid #ccc;margin-top:2.5rem}h3{margin:1.8rem 0 .4rem}
code{background:#f3f3f3;padding:0 .2em;border-radius:3px}
table{border-collapse:collapse;margin:.4rem 0 1rem;width:100%}
td,th{border:1px solid #ddd;padding:.25rem .5rem;vertical-align:top;text-align:left}th{background:#f7f7f7}
.m{display:inline-block;min-width:4.5em;font-weight:bold;text-transform:uppercase}
.get{color:#0a6}.post{color:#06c}.put{color:#a60}.delete{color:#c22}
nav li{list-style:none}nav ul{padding-left:1rem}.muted{color:#777}
"""
METHODS = ("get", "post", "put", "patch", "delete")


def _text(s: str | None) -> str:
    """Escaped text, with `code` spans."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(s or "", quote=False))


def _ref_name(schema: dict | None) -> str:
    """A short human name of a schema: a link for a $ref, else its type."""
    if not schema:
        return ""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{name}">{name}</a>'
    if schema.get("type") == "array":
        return f"array of {_ref_name(schema.get('items'))}"
    if "const" in schema:
        return f"<code>{html.escape(orjson.dumps(schema['const']).decode())}</code>"
    t = schema.get("type", "any")
    out = " | ".join(t) if isinstance(t, list) else str(t)
    if "format" in schema:
        out += f" ({schema['format']})"
    if "enum" in schema:
        out += ": " + ", ".join(f"<code>{html.escape(str(v))}</code>" for v in schema["enum"])
    return out


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    if not rows:
        return ""
    th = "".join(f"<th>{h}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _security(req: list) -> str:
    if not req:
        return "none"
    return " or ".join(" + ".join(f'<a href="#security">{n}</a>' for n in r) or "none" for r in req)


def _operation(path: str, method: str, o: dict) -> str:
    anchor = o.get("operationId", f"{method}-{path}")
    out = [f'<h3 id="{html.escape(anchor)}"><span class="m {method}">{method}</span> <code>{html.escape(path)}</code>'
           f" &mdash; {_text(o.get('summary'))}</h3>",
           f"<p>{_text(o.get('description'))}</p>",
           f"<p><b>Authentication:</b> {_security(o.get('security', []))}</p>"]
    params = [(f"<code>{html.escape(p['name'])}</code>", p["in"], "yes" if p.get("required") else "no",
               _ref_name(p.get("schema")), _text(p.get("description"))) for p in o.get("parameters", [])]
    if params:
        out.append("<p><b>Parameters</b></p>" + _table(("name", "in", "required", "schema", "description"), params))
    rb = o.get("requestBody")
    if rb:
        out.append("<p><b>Request body:</b> " + "; ".join(
            f"<code>{html.escape(ct)}</code> {_ref_name(m.get('schema'))}" for ct, m in rb["content"].items())
            + "</p>")
    rows = []
    for status, r in o["responses"].items():
        content = "<br>".join(f"<code>{html.escape(ct)}</code> {_ref_name(m.get('schema'))}"
                              for ct, m in r.get("content", {}).items())
        headers = ", ".join(f"<code>{html.escape(h)}</code>" for h in r.get("headers", {}))
        rows.append((f"<b>{status}</b>", _text(r["description"]), content, headers))
    out.append("<p><b>Responses</b></p>" + _table(("status", "description", "body", "headers"), rows))
    return "\n".join(out)


def _schema(name: str, s: dict) -> str:
    out = [f'<h3 id="schema-{name}">{name}</h3>']
    if s.get("description"):
        out.append(f"<p>{_text(s['description'])}</p>")
    req = set(s.get("required", ()))
    rows = [(f"<code>{html.escape(p)}</code>", "yes" if p in req else "", _ref_name(ps),
             _text(ps.get("description")))
            for p, ps in s.get("properties", {}).items()]
    out.append(_table(("field", "required", "type", "description"), rows))
    if s.get("type") == "object":
        extra = s.get("additionalProperties", True)
        out.append(f'<p class="muted">{"Other fields are allowed and kept." if extra else "No other fields."}</p>')
    elif not rows:
        out.append(f"<p>Type: {_ref_name(s)}</p>")
    return "\n".join(out)


def render_html(doc: dict) -> str:
    info = doc["info"]
    ops = [(path, m, item[m]) for path, item in doc["paths"].items() for m in METHODS if m in item]
    by_tag: dict[str, list] = {}
    for path, m, o in ops:
        by_tag.setdefault(o.get("tags", ["other"])[0], []).append((path, m, o))
    tag_desc = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}
    nav = "".join(
        f"<li><b>{html.escape(tag)}</b><ul>" + "".join(
            f'<li><a href="#{html.escape(o["operationId"])}"><span class="m {m}">{m}</span> '
            f"{html.escape(path)}</a></li>" for path, m, o in items) + "</ul></li>"
        for tag, items in by_tag.items())
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(info['title'])} "
             f"API</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(info['title'])} API <small class=\"muted\">{html.escape(info['version'])}</small></h1>",
             f"<p>{_text(info.get('description'))}</p>",
             '<p class="muted">Machine-readable: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
             f"{html.escape(doc['openapi'])}).</p>",
             f"<nav><ul>{nav}</ul></nav>"]
    for tag, items in by_tag.items():
        parts.append(f"<h2>{html.escape(tag)}</h2><p>{_text(tag_desc.get(tag))}</p>")
        parts.extend(_operation(path, m, o) for path, m, o in items)
    comps = doc.get("components", {})
    parts.append('<h2 id="security">Authentication</h2>' + _table(
        ("name", "kind", "description"),
        [(f"<code>{n}</code>", _text(s["type"] + (f" {s['scheme']}" if "scheme" in s else "")
                                     + (f" header {s['name']}" if s.get("in") == "header" else "")),
          _text(s.get("description"))) for n, s in comps.get("securitySchemes", {}).items()]))
    parts.append("<h2>Schemas</h2>")
    parts.extend(_schema(n, s) for n, s in comps.get("schemas", {}).items())
    parts.append("</body></html>")
    return "\n".join(parts)


@functools.lru_cache(maxsize=1)
def _json_bytes() -> bytes:
    return orjson.dumps(document())


@functools.lru_cache(maxsize=1)
def _html() -> str:
    return render_html(document())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_json_bytes(), content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=_html(), content_type="text/html")


def setup(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/docs", docs)
