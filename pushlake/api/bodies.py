"""The JSON bodies of the API as typed structs: the handlers build them (``msgspec.json.encode``)
and ``openapi.py`` describes them (``msgspec.json.schema_components``), so a body and its schema
cannot drift apart. Response structs forbid unknown fields, so their schemas say
``additionalProperties: false``; request structs describe what the handlers read and allow more.

Some bodies are built outside ``pushlake.api``: the push acknowledgement, ``/health`` and the
``{error, message}`` answers (``ingest/app.py``), and the query result (``queries/worker.py``,
in the query's process). Their structs here describe them, and ``tests/test_openapi.py``
checks real answers against the schemas.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from lake.catalog import Catalog
from lake.schema import TABLES
from pushlake.hyperadmins import NAME, SPECIALS
from pushlake.teams import TEAM_ID

DQ_DATE = "yyyy-MM-dd'T'HH:mm:ss.SSSZ"
DQ_DATE_EXAMPLE = "2025-01-30T07:23:22.000+0000"


def dq_date(description: str) -> Meta:
    return Meta(description=f"{description} (`{DQ_DATE}`, UTC)", examples=[DQ_DATE_EXAMPLE])


def text(description: str, **constraints) -> Meta:
    """A field's prose, and its constraints."""
    return Meta(description=description, **constraints)


class Response(Struct, forbid_unknown_fields=True):
    """Base of the response bodies: exactly the fields they declare."""


TeamId = Annotated[str, Meta(
    description="Team identifier: 1-64 characters, letters, digits, `_`, `.`, `-`, not starting with a symbol "
                "nor ending with `.`; unique whatever the case.", pattern=f"^{TEAM_ID.pattern}$", examples=["acme"])]
TeamState = Literal["ENABLED", "DISABLED"]
PushKey = Annotated[str, Meta(description="The team's push key, shown once: push with it (Bearer, or Basic "
                                          "`teamId:pushApiKey`) and use it as the OAuth2 client secret.",
                              examples=["pk_..."])]
AdminKey = Annotated[str, Meta(description="The team's admin key, shown once: `Bearer` on `/v1/query` and "
                                           "`/v1/export` reads this team's data only.", examples=["ak_..."])]


# -- service --------------------------------------------------------------------------------------
class PushAck(Response):
    """The push is in the log and fdatasynced: it will not be lost."""
    status: Literal["OK"]
    partition: Annotated[str, text("Log partition that holds the push.", examples=["p0"])]
    offset: Annotated[int, text("Offset of the push in that partition.", ge=0)]


class CompactorState(Response):
    """The compactor over this receiver's partition."""
    lagRecords: Annotated[int, text("Records of this partition not compacted yet.")]
    lagSeconds: Annotated[float, text("How long the oldest of them has waited (0 when caught up); over "
                                      "`health_max_lag_s` (300 s) the status is `degraded`.")]
    failures: Annotated[int | None, text("Failed steps in a row.")]
    lastError: Annotated[str | None, text("The error of the last failed step.")]
    lastStep: Annotated[dict[str, Any] | None, text(
        "The last step that stored records: `at` (Unix seconds), `records`, `stored`, `failed`, `seconds`.")]


class Recovery(Response):
    """A torn or corrupt log tail cut when this process started."""
    segment: Annotated[str, text("Segment file.")]
    keptBytes: Annotated[int, text("Valid bytes kept.")]
    cutBytes: Annotated[int, text("Bytes cut off.")]
    reason: Annotated[str, text("What was wrong.")]
    savedAs: Annotated[str, text("File holding the cut bytes.")]


class Health(Response):
    """State of this receiver process."""
    status: Annotated[Literal["ok", "degraded"], text(
        "`ok`, or `degraded` (with a 503) while free disk is below the threshold (pushes then get 503) or the "
        "compactor is failing, not advancing, or far behind (a record waiting over `health_max_lag_s`).")]
    reasons: Annotated[list[str], text("Why the status is `degraded`, one sentence each (empty when `ok`).")]
    compactor: Annotated[CompactorState | None, text(
        "The compactor over this receiver's partition (null with `--no-compactor`).")]
    partition: Annotated[str, text("Log partition of this receiver process.", examples=["p0"])]
    nextOffset: Annotated[int, text("Offset the next push will get.")]
    pending: Annotated[int, text("Pushes waiting for the group commit.")]
    batches: Annotated[int, text("Group commits done since start.")]
    records: Annotated[int, text("Pushes committed since start.")]
    recovery: Annotated[Recovery | None, text(
        "A torn or corrupt log tail cut when this process started (the bytes are kept aside as `savedAs`), or null.")]


class Error(Response):
    error: Annotated[str, text("Machine-readable code.")]
    message: Annotated[str, text("What went wrong, for a human.")]


# -- OAuth2 ---------------------------------------------------------------------------------------
class TokenRequest(Struct):
    grant_type: Annotated[str, text("Must be `client_credentials`.", examples=["client_credentials"])]
    client_id: Annotated[str | UnsetType, text("The teamId (or use HTTP Basic).")] = UNSET
    client_secret: Annotated[str | UnsetType, text("The team's pushApiKey (or use HTTP Basic).")] = UNSET
    scope: Annotated[str | UnsetType, text("Ignored.")] = UNSET


class TokenResponse(Response):
    access_token: Annotated[str, text("Signed token (`at_...`) for `Authorization: Bearer`.")]
    token_type: Literal["Bearer"]
    expires_in: Annotated[int, text("Lifetime in seconds (`token_ttl_s`, default 3600).")]


class OAuthError(Response):
    error: Annotated[str, text("RFC 6749 §5.2 code.")]
    error_description: str


# -- teams ----------------------------------------------------------------------------------------
class TeamCreate(Struct):
    teamId: TeamId


class TeamCreated(Response):
    """The new team, enabled, with its keys (stored only as hashes: shown once)."""
    teamId: TeamId
    pushApiKey: PushKey
    adminApiKey: AdminKey


class Team(Response):
    teamId: TeamId
    status: Annotated[TeamState, text("Team status.")]
    creationDate: Annotated[str, dq_date("Creation date")]


class TeamStatus(Struct):
    status: Annotated[TeamState, text("The new status.")]


class TeamStatusResult(Response):
    """Disabling revokes the team's keys and tokens at once (they get 403). Enabling issues new keys, returned
    once here; the old keys and every older token stay invalid (401)."""
    status: Annotated[TeamState, text("The new status.")]
    pushApiKey: PushKey | UnsetType = UNSET
    adminApiKey: AdminKey | UnsetType = UNSET


# -- hyper-admins ---------------------------------------------------------------------------------
_NAME = f"^{NAME.pattern}$"


class HyperAdminCreate(Struct):
    userId: Annotated[str, text("Unique id (an e-mail passes), at most 128 characters.", pattern=_NAME,
                                max_length=128)]
    firstname: Annotated[str, text("First name, at most 128 characters.", pattern=_NAME, max_length=128)]
    lastname: Annotated[str, text("Last name, at most 128 characters.", pattern=_NAME, max_length=128)]
    password: Annotated[str, text(
        f"At least 12 characters with a lowercase letter, an uppercase letter, a digit and a special character "
        f"among `{SPECIALS}`. Stored with scrypt.",
        pattern=r"^(?=.*[\d])(?=.*[a-z])(?=.*[A-Z])(?=.*[" + SPECIALS.replace("^", r"\^").replace("-", r"\-")
                + "]).{12,}$",
        examples=["PnsPYthv4N?zI%CK"])]


class HyperAdmin(Response):
    userId: str
    firstname: str
    lastname: str
    creationDate: Annotated[str | UnsetType, dq_date("Creation date (list only)")] = UNSET


class HyperAdminDeleted(Response):
    userId: str
    deleted: Literal[True]


# -- push reports ---------------------------------------------------------------------------------
class CrashReportItem(Response):
    """Counts per receive day and team; counters are committed with the records they count."""
    date: Annotated[str, text("Receive day (UTC) of the pushes counted.", extra_json_schema={"format": "date"})]
    teamId: TeamId
    received: Annotated[int, text(
        "Pushes of this kind received that day and already read by the compactor (pushes still waiting in the log "
        "are not counted yet), every retry included.")]
    stored: Annotated[int, text(
        "Pushes that became the version in the lake: a new key, or a newer push whose body differs from the stored "
        "one (an update). A FAILED push later retried successfully counts here, on its receive day.")]
    duplicates: Annotated[int, text(
        "Pushes that changed nothing: a newer push with the same body as the stored version, or one older than the "
        "version in the lake (arrived out of order).")]
    failed: Annotated[int, text(
        "Pushes of that day that could not be projected and are still FAILED now (a live count: it drops when a "
        "retry succeeds, a newer good push of the same key arrives, or the trip is deleted).")]


class TripReportItem(CrashReportItem):
    """Counts per receive day and team; counters are committed with the records they count."""
    deleted: Annotated[int, text(
        "`TRIP_DELETION` events received that day (each push counts, repeats included).")]
    discarded: Annotated[int, text("Trip pushes received after that trip's deletion, never made visible.")]


class DiagnosisReportItem(CrashReportItem):
    """Counts per receive day and team; counters are committed with the records they count. A
    diagnosis's key is its `userId` and the SHA-256 of its body: a push of the same body again is a
    duplicate, any other body is a new diagnosis (stored), never an update."""


_Day = Annotated[str, Meta(extra_json_schema={"format": "date"})]
_ITEMS = "One item per day and team with any activity, sorted by day then team."


class _Report(Response):
    startDate: Annotated[_Day, text("First day.")]
    endDate: Annotated[_Day, text("Last day (inclusive).")]


class TripsReport(_Report):
    items: Annotated[list[TripReportItem], text(_ITEMS)]


class CrashesReport(_Report):
    items: Annotated[list[CrashReportItem], text(_ITEMS)]


class DiagnosesReport(_Report):
    items: Annotated[list[DiagnosisReportItem], text(_ITEMS)]


# -- FAILED items ---------------------------------------------------------------------------------
class FailedPush(Response):
    """A push accepted into the log (it was answered 200) that the compactor could not project."""
    id: Annotated[int, text("The FAILED item's id. A retry that fails again keeps it (with the new `reason` and one "
                            "more `attempts`); a retry that succeeds takes the item off this list.", ge=1)]
    teamId: TeamId
    kind: Annotated[Literal["trip", "crash", "diagnosis"], text("What was pushed.")]
    key: Annotated[str, text("The push's idempotency key: `itinId` (trip), `crashId` (crash), `userId:` + SHA-256 "
                             "of the body (diagnosis).")]
    receivedAt: Annotated[str, dq_date("When the push was received; its receive day is the report's `date`")]
    partition: Annotated[str, text("Log partition that holds the push.", examples=["p0"])]
    offset: Annotated[int, text("Offset of the push in that partition.", ge=0)]
    reason: Annotated[str, text("Why the projection failed the last time, naming the field (and the index in an "
                                "array).", examples=["route.longitude: has 2 samples, route.latitude has 3"])]
    failedAt: Annotated[str, dq_date("When its projection last failed")]
    attempts: Annotated[int, text("Projections of this push that failed: 1, plus one per retry that failed again.",
                                  ge=1)]


class FailedPushes(Response):
    items: Annotated[list[FailedPush], text("The items still FAILED, by id, at most `limit`.")]
    nextAfterId: Annotated[int | None, text(
        "More items may follow: pass this value as `afterId` for the next page. Null on the last page.")]


# -- retry tasks ----------------------------------------------------------------------------------
class RetryTask(Response):
    taskId: Annotated[str, text("Task id (24 hex characters).", examples=["6753030831fe9826412bac5c"])]
    nbItems: Annotated[int, text("FAILED items queued for re-projection (0: the task is COMPLETED at once).")]


class Task(Response):
    """A retry task. Every item ends fixed or still failed: `nbFixedItems + nbStillFailedItems +
    nbRemainingItems = nbItems`."""
    taskId: str
    createdAt: Annotated[str, dq_date("Creation date")]
    completedAt: Annotated[str | None, dq_date("Completion date, null until COMPLETED or FAILED")]
    type: Annotated[Literal[tuple(Catalog.TASK_KINDS)], text("Task type.")]
    status: Annotated[Literal["PENDING", "IN_PROGRESS", "COMPLETED", "CANCELED", "FAILED"], text(
        "`PENDING` (queued), `IN_PROGRESS` (`nbRemainingItems` decreases), `COMPLETED` (every item processed: "
        "`nbRemainingItems` = 0, `completedAt` set; COMPLETED says the task ran to its end, not that every item was "
        "fixed: read `nbStillFailedItems`), `FAILED` (the task itself stopped on an error, see `error`; its "
        "remaining items were not processed). `CANCELED` is part of DriveQuant's vocabulary; pushlake does not set "
        "it.")]
    nbItems: Annotated[int, text("Items to process: the FAILED items of that kind when the task was created.")]
    nbRemainingItems: Annotated[int, text("Items not processed yet.")]
    nbFixedItems: Annotated[int, text(
        "Items processed that are no longer FAILED: re-projected and stored, or settled meanwhile (a newer push of "
        "the same key was stored, or the trip was deleted).")]
    nbStillFailedItems: Annotated[int, text(
        "Items processed that are still FAILED: their projection failed again (each keeps its id, with the new "
        "reason: `GET /v1/enterprise/push/{trips|crashes|diagnoses}/failed`).")]
    error: Annotated[str | None, text("Why the task stopped, when `status` is FAILED; else null.")]


# -- reads ----------------------------------------------------------------------------------------
class QueryRequest(Struct):
    sql: Annotated[str, text(f"One read-only DuckDB statement over the views ({', '.join(f'`{t}`' for t in TABLES)}).",
                             min_length=1, examples=["SELECT count(*) AS n FROM trips"])]
    teamId: Annotated[str | UnsetType, text(
        "Hyper-admin: restrict to one team (404 if unknown). A team key may only give its own team (403 "
        "otherwise).")] = UNSET


class Column(Response):
    name: str
    type: Annotated[str, text("Arrow type.")]


class QueryResult(Response):
    columns: list[Column]
    rows: Annotated[list[dict[str, Any]], text("One object per row, column name to value (dates as strings).")]
    rowCount: Annotated[int, text("Rows returned.")]
    truncated: Annotated[bool, text(
        "True when the result had more rows than `query_max_rows` (default 100,000) and was cut.")]


def encode(body) -> bytes:
    return msgspec.json.encode(body)
