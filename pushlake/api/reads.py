"""Team-scoped reads over HTTP: ``POST /v1/query`` and ``GET /v1/export/{table}``.

A team's admin key reads that team only (a connection confined to its partitions); a hyper-admin
(Basic) reads every team, or one with ``teamId``, through a connection confined to the lake.

Each query runs in a process of its own (``queries.worker``): Landlock makes it unable to write
any file, an rlimit caps its memory, a timer kills it at the deadline, and it encodes the result
itself, within the row and byte limits; this process only forwards the bytes. Exports (fixed
SQL) run the same way, without the time limit (and with a private directory to spill their sort
to), streamed as they are encoded. Every reader holds at most ``query_per_team`` of the
``query_workers`` slots (429 beyond); a client that reads nothing for ``query_write_timeout_s``
is cut off and frees its slot. Hyper-admin password checks (scrypt) run on their own thread,
with a bounded queue (503 beyond), and a user whose checks keep failing is answered 429 without
a check, for exponentially longer, until a check succeeds.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
from aiohttp import web

from ingest.app import AUTH, SETTINGS, auth_error, error
from ingest.auth import AuthError
from pushlake.metrics import M
from queries.export import FORMATS
from queries.worker import ARROW, PARQUET, WORKERS, job_frame, read_frame

from .auth import READERS, PasswordCheck, Principal

LIMITS = web.AppKey("read_limits", object)
log = logging.getLogger("pushlake.reads")


class TooMany(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: float):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def response(self) -> web.Response:
        return error(self.status, self.code, self.message, {"Retry-After": str(max(1, math.ceil(self.retry_after)))})


class Limits:
    """Slots for queries and exports (in all, and per reader), and the password checks."""

    def __init__(self, s):
        self.total, self.per_reader = s.query_workers, s.query_per_team
        self.running: dict[str, int] = {}
        self.busy = 0
        self.passwords = ThreadPoolExecutor(1, thread_name_prefix="password")
        self.password_queue = s.password_checks
        self.password_pending = 0
        self.max_failures = s.password_max_failures
        self.failures: dict[str, tuple[int, float]] = {}  # user -> (failures in a row, refused until)

    def take(self, who: Principal) -> str:
        key = f"{who.kind}:{who.name}"
        if self.running.get(key, 0) >= self.per_reader:
            raise TooMany(429, "too_many_requests", f"{self.per_reader} queries or exports of this reader are "
                          "already running; retry when one has finished", 1)
        if self.busy >= self.total:
            raise TooMany(503, "overloaded", f"all {self.total} query slots are busy; retry shortly", 1)
        self.running[key] = self.running.get(key, 0) + 1
        self.busy += 1
        return key

    def give(self, key: str) -> None:
        self.busy -= 1
        n = self.running.get(key, 1) - 1
        if n:
            self.running[key] = n
        else:
            self.running.pop(key, None)

    def throttled(self, user: str) -> None:
        n, until = self.failures.get(user, (0, 0.0))
        wait = until - time.monotonic()
        if wait > 0:
            raise TooMany(429, "too_many_requests", f"too many failed password checks for '{user}'; retry later", wait)

    def failed(self, user: str) -> None:
        n, _ = self.failures.get(user, (0, 0.0))
        n += 1
        until = time.monotonic() + (min(2.0 ** (n - self.max_failures), 900.0) if n >= self.max_failures else 0.0)
        if len(self.failures) > 10_000:  # forget the oldest users, not a growing map
            for k in list(self.failures)[:5_000]:
                del self.failures[k]
        self.failures[user] = (n, until)

    def close(self) -> None:
        self.passwords.shutdown(wait=False, cancel_futures=True)


async def _principal(request: web.Request) -> Principal:
    """A hyper-admin's password check runs scrypt on its own thread, so neither pushes nor queries
    wait on it; at most ``password_checks`` wait for it (503 beyond), and a user with
    ``password_max_failures`` failures in a row is refused (429) without a check, for 1 s, 2 s,
    4 s... (up to 15 min), until a check succeeds."""
    auth = request.app[READERS]
    try:
        return auth.reader(request.headers.get("Authorization"))
    except PasswordCheck as pc:
        lim: Limits = request.app[LIMITS]
        lim.throttled(pc.user)
        if lim.password_pending >= lim.password_queue:
            raise TooMany(503, "overloaded", "too many password checks waiting; retry shortly", 1) from None
        lim.password_pending += 1
        try:
            ok = await asyncio.get_running_loop().run_in_executor(lim.passwords, auth.admins.verify, pc.user,
                                                                  pc.password)
        finally:
            lim.password_pending -= 1
        if ok:
            lim.failures.pop(pc.user, None)
        else:
            lim.failed(pc.user)
        return auth.remember(pc, ok)


def _scope(request: web.Request, who: Principal, team_param: str | None) -> dict:
    if team_param is not None and not isinstance(team_param, str):
        raise AuthError(400, "invalid_request", "teamId must be a string")
    if who.kind == "team":
        if team_param not in (None, who.team):
            raise AuthError(403, "forbidden", "a team key reads its own team only")
        return {"team": who.team}
    if team_param is not None and request.app[AUTH].team(team_param) is None:
        raise AuthError(404, "not_found", f"unknown team '{team_param}'")
    return {"team": team_param} if team_param else {"sandbox": True}


def _negotiate(accept: str) -> str:
    for part in (p.split(";")[0].strip() for p in accept.split(",")):
        if part in ("application/json", "*/*", "application/*", ""):
            return "application/json"
        if part in ("text/csv", ARROW, PARQUET, "application/x-parquet"):
            return PARQUET if part == "application/x-parquet" else part
    return ""


def _memory_bytes(limit: str) -> int:
    """DuckDB's memory limit ('1GB', '512MiB', ...) in bytes, for the worker's rlimit."""
    units = {"": 1, "b": 1, "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4,
             "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
    t = limit.strip().lower().replace(" ", "")
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * units[t[len(num):]])


async def _write(request: web.Request, resp: web.StreamResponse, data: bytes, timeout: float) -> bool:
    """Write, or cut the connection off if the client reads nothing for ``timeout`` s."""
    try:
        await asyncio.wait_for(resp.write(data), timeout)
        return True
    except asyncio.TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        return False


def _job(s, scope: dict, **kw) -> dict:
    """A job for a query process: what every job carries (where, whose, how much memory), and ``kw``."""
    return {"data_dir": str(s.data_dir), "scope": scope, "memory_limit": s.query_memory_limit,
            "memory_bytes": _memory_bytes(s.query_memory_limit), **kw}


async def _start(job: dict):
    """(reader, writer) of a new query process running ``job``, or the response saying why not.
    On the loop's thread: quick (a datagram to the zygote, which the first call starts), and the
    zygote is tied to this long-lived thread (PR_SET_PDEATHSIG follows the thread that started it)."""
    try:
        sock = WORKERS.submit()
    except OSError as e:
        return _no_workers(e)
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    writer.write(job_frame(job))
    return reader, writer


def _failed(payload: bytes) -> web.Response:
    """The error a query process reported (an X frame) as the answer."""
    e = orjson.loads(payload)
    return error(e["status"], e["error"], e["message"])


def _no_workers(e: OSError) -> web.Response:
    log.error("cannot start a query process: %s", e)
    return error(503, "overloaded", "no query process could be started; retry shortly", {"Retry-After": "1"})


def measured(route: str):
    """Counts and times a read handler's answers by HTTP status (``pushlake.metrics``); an export
    cut off after its first byte counts as 500."""
    def wrap(handler):
        async def wrapped(request: web.Request) -> web.StreamResponse:
            t0 = time.perf_counter()
            status = 500
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except web.HTTPException as e:
                status = e.status
                raise
            finally:
                m = M()
                m.queries.labels(route, str(status)).inc()
                m.query_seconds.labels(route, str(status)).observe(time.perf_counter() - t0)
        wrapped.__name__, wrapped.__doc__ = handler.__name__, handler.__doc__
        return wrapped
    return wrap


@measured("query")
async def query(request: web.Request) -> web.StreamResponse:
    try:
        who = await _principal(request)
        try:
            doc = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error(400, "invalid_request", "body must be JSON: {\"sql\": \"SELECT ...\"}")
        if not isinstance(doc, dict) or not isinstance(doc.get("sql"), str) or not doc["sql"].strip():
            return error(400, "invalid_request", "body must be JSON: {\"sql\": \"SELECT ...\"}")
        scope = _scope(request, who, doc.get("teamId"))
    except AuthError as e:
        return auth_error(e)
    except TooMany as e:
        return e.response()
    mime = _negotiate(request.headers.get("Accept", "application/json"))
    if not mime:
        return error(406, "not_acceptable", "Accept application/json, text/csv, "
                                            f"{ARROW} or {PARQUET}")
    s = request.app[SETTINGS]
    lim: Limits = request.app[LIMITS]
    try:
        slot = lim.take(who)
    except TooMany as e:
        return e.response()
    job = _job(s, scope, sql=doc["sql"], mime=mime, max_rows=s.query_max_rows, max_bytes=s.query_max_bytes,
               timeout=s.query_timeout_s)
    writer = None
    t0 = time.monotonic()
    try:
        started = await _start(job)
        if isinstance(started, web.Response):
            return started
        reader, writer = started
        try:
            kind, payload = await asyncio.wait_for(read_frame(reader), s.query_timeout_s + 5)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            if time.monotonic() - t0 >= s.query_timeout_s * 0.9:
                return error(400, "query_timeout", f"query exceeded the {s.query_timeout_s:g} s limit")
            return error(400, "out_of_memory", f"the query's process died: it ran over its memory limit "
                                               f"({s.query_memory_limit}) or crashed")
        if kind == b"X":
            return _failed(payload)
        head = orjson.loads(payload)
        resp = web.StreamResponse(headers={"X-Pushlake-Truncated": "true" if head["truncated"] else "false",
                                           "X-Pushlake-Rows": str(head["rows"])})
        resp.content_type = mime
        resp.content_length = head["length"]
        await resp.prepare(request)
        while True:
            try:
                kind, chunk = await asyncio.wait_for(read_frame(reader), s.query_write_timeout_s)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                if request.transport is not None:
                    request.transport.abort()  # a cut connection rather than a short body
                return resp
            if kind != b"D":
                break
            if not await _write(request, resp, chunk, s.query_write_timeout_s):
                return resp
        await resp.write_eof()
        return resp
    finally:
        if writer is not None:
            writer.close()
        lim.give(slot)


@measured("export")
async def export(request: web.Request) -> web.StreamResponse:
    table = request.match_info["table"]
    fmt = request.query.get("format", "parquet")
    try:
        who = await _principal(request)
        scope = _scope(request, who, request.query.get("teamId"))
    except AuthError as e:
        return auth_error(e)
    except TooMany as e:
        return e.response()
    if fmt not in FORMATS:
        return error(400, "invalid_request", f"format must be one of {', '.join(FORMATS)}")
    lim: Limits = request.app[LIMITS]
    try:
        slot = lim.take(who)
    except TooMany as e:
        return e.response()
    try:
        return await _export(request, scope, table, fmt)
    finally:
        lim.give(slot)


async def _export(request: web.Request, scope: dict, table: str, fmt: str) -> web.StreamResponse:
    """The export runs in a query process too (fixed SQL, but DuckDB's memory and the encoding stay
    out of this process); it streams chunks as they are encoded, paced by the client."""
    s = request.app[SETTINGS]
    job = _job(s, scope, kind="export", table=table, fmt=fmt, **{"from": request.query.get("from"),
                                                                 "to": request.query.get("to")})
    writer = None
    try:
        started = await _start(job)
        if isinstance(started, web.Response):
            return started
        reader, writer = started
        try:
            kind, payload = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            return error(500, "export_failed", "the export's process died (memory limit?)")
        if kind == b"X":
            return _failed(payload)
        total = orjson.loads(payload)["rows"]
        resp = web.StreamResponse(headers={"Content-Type": FORMATS[fmt], "X-Pushlake-Rows": str(total),
                                           "Content-Disposition": f'attachment; filename="{table}.{fmt}"'})
        await resp.prepare(request)
        while True:
            try:
                kind, chunk = await read_frame(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                kind = b"X"
            if kind == b"E":
                break
            if kind != b"D":  # the client sees a cut connection rather than a silently short file
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if not await _write(request, resp, chunk, s.query_write_timeout_s):
                return resp  # the client stopped reading: cut off (the process ends, its slot is freed)
        await resp.write_eof()
        return resp
    finally:
        if writer is not None:
            writer.close()


def setup(app: web.Application) -> None:
    app[LIMITS] = limits = Limits(app[SETTINGS])

    async def close(app: web.Application) -> None:
        limits.close()
    app.on_cleanup.append(close)
