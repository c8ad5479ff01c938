"""``/v1/enterprise/*``: teams, hyper-admins, push reports, FAILED items and their retry, tasks.

Every call needs the enterprise key in ``x-dq-enterprise-api-key`` (compared in constant time).
Dates follow DriveQuant: ``yyyy-MM-dd'T'HH:mm:ss.SSSZ``.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import logging
import re
import secrets
from functools import partial

import orjson
from aiohttp import web

from ingest.app import AUTH, SETTINGS, error
from ingest.record import kind_label
from lake.catalog import Catalog, TaskRunning
from pushlake.config import enterprise_key
from pushlake.hyperadmins import HyperAdmins
from pushlake.teams import NotFound, TeamError, Teams, format_date

from . import bodies as b

log = logging.getLogger("pushlake.enterprise")
ENTERPRISE_KEY = web.AppKey("enterprise_key", str)
ADMIN = web.AppKey("admin_stores", dict)
HEADER = "x-dq-enterprise-api-key"


def json(body, status: int = 200) -> web.Response:
    """A body struct (or a list of them) of ``bodies.py``."""
    return web.Response(body=b.encode(body), status=status, content_type="application/json")


def enterprise(handler):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        given = request.headers.get(HEADER, "")
        if not hmac.compare_digest(given.encode(), request.app[ENTERPRISE_KEY].encode()):
            return error(401, "unauthorized", f"missing or wrong {HEADER} header")
        try:
            return await handler(request)
        except TeamError as e:
            return error(e.status, _code(e.status), str(e))
        except request.app[ADMIN]["teams"].db.Unavailable as e:  # PostgreSQL down: retry, not a bug
            log.warning("%s: the catalog cannot be reached: %s", request.path, (str(e).strip().splitlines() or [""])[0])
            return error(503, "catalog_unavailable", "the catalog cannot be reached; retry later",
                         {"Retry-After": "5"})
    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


def _code(status: int) -> str:
    return {400: "bad_request", 404: "not_found", 409: "conflict", 422: "unprocessable", 429: "too_many_requests"}.get(
        status, "error")


async def _body(request: web.Request) -> dict:
    try:
        doc = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise TeamError("body must be a JSON object") from None
    if not isinstance(doc, dict):
        raise TeamError("body must be a JSON object")
    return doc


async def _run(request: web.Request, fn, *args):
    """SQLite and scrypt work happens off the event loop, one call at a time."""
    return await asyncio.get_running_loop().run_in_executor(request.app[ADMIN]["executor"], partial(fn, *args))


# -- teams ------------------------------------------------------------------------------------------
@enterprise
async def create_team(request: web.Request) -> web.Response:
    doc = await _body(request)
    out = await _run(request, request.app[ADMIN]["teams"].create, doc.get("teamId"), request.app[SETTINGS].max_teams)
    request.app[AUTH].reload()
    return json(b.TeamCreated(**out))


@enterprise
async def list_teams(request: web.Request) -> web.Response:
    rows = await _run(request, request.app[ADMIN]["teams"].all)
    return json([b.Team(teamId=r.team_id, status=r.status, creationDate=r.creation_date()) for r in rows])


@enterprise
async def team_status(request: web.Request) -> web.Response:
    doc = await _body(request)
    status = doc.get("status")
    if status not in ("ENABLED", "DISABLED"):
        raise TeamError("status must be ENABLED or DISABLED")
    out = await _run(request, request.app[ADMIN]["teams"].set_status, request.match_info["teamId"], status)
    request.app[AUTH].reload()  # this process refuses the team's keys and tokens from now on
    return json(b.TeamStatusResult(**out))


# -- hyper-admins -----------------------------------------------------------------------------------
@enterprise
async def create_hyperadmin(request: web.Request) -> web.Response:
    doc = await _body(request)
    out = await _run(request, request.app[ADMIN]["admins"].create, doc.get("userId"), doc.get("firstname"),
                     doc.get("lastname"), doc.get("password"))
    return json(b.HyperAdmin(**out))


@enterprise
async def list_hyperadmins(request: web.Request) -> web.Response:
    return json([b.HyperAdmin(**a) for a in await _run(request, request.app[ADMIN]["admins"].list)])


@enterprise
async def delete_hyperadmin(request: web.Request) -> web.Response:
    await _run(request, request.app[ADMIN]["admins"].delete, request.match_info["userId"])
    request.app[AUTH].reload()
    return json(b.HyperAdminDeleted(userId=request.match_info["userId"], deleted=True))


# -- push reports -----------------------------------------------------------------------------------
# yyyy-MM-dd, or a date-time starting with it (yyyy-MM-dd'T'HH:mm:ss.SSSZ); the whole value must
# match: fromisoformat alone also takes week dates (2025-W01-1) and basic forms (20250101)
DAY = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})(T.*)?", re.S)


def _day(request: web.Request, name: str) -> str:
    v = request.query.get(name)
    if not v:
        raise TeamError(f"{name} is required (yyyy-MM-dd)")
    m = DAY.fullmatch(v)
    try:
        if m is None:
            raise ValueError
        if m[2] is not None:
            dt.datetime.fromisoformat(v)
        return dt.date.fromisoformat(m[1]).isoformat()
    except ValueError:
        raise TeamError(f"{name} must be a date yyyy-MM-dd, got '{v}'") from None


def report_handler(kind: int, item: type[b.CrashReportItem],
                   body: type[b.TripsReport | b.CrashesReport | b.DiagnosesReport]):
    """The report of one kind: the counts ``item`` has, per day and team."""
    fields = item.__struct_fields__

    @enterprise
    async def report(request: web.Request) -> web.Response:
        start, end = _day(request, "startDate"), _day(request, "endDate")
        if start > end:
            raise TeamError("startDate is after endDate")
        team = _team(request)
        rows = await _run(request, request.app[ADMIN]["catalog"]().report, kind, start, end, team)
        return json(body(startDate=start, endDate=end, items=[item(**{k: r[k] for k in fields}) for r in rows]))
    return report


def _team(request: web.Request) -> str | None:
    """The optional ``teamId`` query parameter, which must name a team (404)."""
    team = request.query.get("teamId")
    if team is not None and request.app[AUTH].team(team) is None:
        raise NotFound(f"unknown team '{team}'")
    return team


# -- FAILED items and retry tasks -------------------------------------------------------------------
PAGE_DEFAULT, PAGE_MAX = 100, 1000


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    v = request.query.get(name)
    if v is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", v) or not low <= int(v) <= high:
        raise TeamError(f"{name} must be an integer from {low} to {high}, got '{v}'")
    return int(v)


def failed_handler(kind: int):
    """The FAILED items of one kind, by id, a page at a time."""
    @enterprise
    async def failed(request: web.Request) -> web.Response:
        limit = _int(request, "limit", PAGE_DEFAULT, 1, PAGE_MAX)
        after = _int(request, "afterId", 0, 0, 2**63 - 1)
        team = _team(request)
        # one more than the page: whether a next page exists
        rows = await _run(request, partial(request.app[ADMIN]["catalog"]().failed_items, "FAILED", kind, team, after,
                                           limit + 1))
        page = rows[:limit]
        return json(b.FailedPushes(items=[b.FailedPush(
            id=f.id, teamId=f.team, kind=kind_label(f.kind), key=f.key, receivedAt=format_date(f.received_us / 1e6),
            partition=f.part, offset=f.offset, reason=f.reason, failedAt=format_date(f.failed_at),
            attempts=f.attempts) for f in page], nextAfterId=page[-1].id if len(rows) > limit else None))
    return failed


def retry_handler(task_type: str):
    @enterprise
    async def retry(request: web.Request) -> web.Response:
        try:
            task_id, n = await _run(request, request.app[ADMIN]["catalog"]().create_task, task_type, secrets.token_hex(12))
        except TaskRunning as e:
            return error(409, "conflict", str(e))
        return json(b.RetryTask(taskId=task_id, nbItems=n))
    return retry


@enterprise
async def get_task(request: web.Request) -> web.Response:
    row = await _run(request, request.app[ADMIN]["catalog"]().get_task, request.match_info["taskId"])
    if row is None:
        return error(404, "not_found", f"unknown task '{request.match_info['taskId']}'")
    return json(b.Task(taskId=row.task_id, createdAt=format_date(row.created_at),
                       completedAt=format_date(row.completed_at) if row.completed_at else None, type=row.type,
                       status=row.status, nbItems=row.nb_items, nbRemainingItems=row.nb_remaining,
                       nbFixedItems=row.nb_fixed, nbStillFailedItems=row.nb_still_failed, error=row.error))


def setup(app: web.Application) -> None:
    s = app[SETTINGS]
    from concurrent.futures import ThreadPoolExecutor
    stores: dict = {"executor": ThreadPoolExecutor(1, thread_name_prefix="admin")}

    def catalog() -> Catalog:
        if "cat" not in stores:
            stores["cat"] = Catalog(s.data_dir)
        return stores["cat"]

    stores["teams"] = Teams(s.data_dir)
    for problem in stores["teams"].id_problems():
        log.warning("%s", problem)
    stores["admins"] = HyperAdmins(s.data_dir, s.max_hyperadmins)
    stores["catalog"] = catalog
    app[ADMIN] = stores
    app[ENTERPRISE_KEY] = enterprise_key(s.data_dir)[0]

    async def close(app: web.Application) -> None:
        stores["executor"].shutdown(wait=True)
        stores["teams"].close()
        stores["admins"].close()
        if "cat" in stores:
            stores["cat"].close()
    app.on_cleanup.append(close)
