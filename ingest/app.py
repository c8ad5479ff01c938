"""The push receiver: authenticate, check, append to the log, and answer 200 once durable.

Nothing on this path waits for anything but the group commit: no parsing beyond the key
fields, no catalog access (teams are cached by ``PushAuth``; deletions are published through
the ``Lake`` the service hands in), no projection.
"""
from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
import zlib
from http import HTTPStatus
from typing import Callable, NamedTuple, Protocol

import orjson
from aiohttp import web
from aiohttp.web_urldispatcher import _default_expect_handler as _aiohttp_expect

from pushlake.config import Settings
from pushlake.metrics import M

from .auth import RETRY_S, AuthError, PushAuth
from .groupcommit import GroupCommit, Item, NotPublished, Overloaded, WriteFailed
from .keys import ROUTES, MissingKey, NotJson, deleted_itin, key_of, parse_keys
from .log import LogWriter, partition_name
from .record import Kind

log = logging.getLogger("pushlake.receiver")
refused = logging.getLogger("pushlake.refused")  # one line per refused push: team, route, reason

SETTINGS = web.AppKey("settings", Settings)
COMMIT = web.AppKey("commit", GroupCommit)
AUTH = web.AppKey("auth", PushAuth)
STATE = web.AppKey("state", dict)


class Lake(Protocol):
    """What the receiver needs of the lake, handed to ``build_app`` by the layer above (the
    service gives ``lake.receiver.ReceiverLake``): the receiver never opens the catalog itself."""

    def compacted_up_to(self, part: str) -> int: ...
    def republish_tombstones(self, part: str) -> int: ...
    def tombstone_sink(self, part: str) -> Callable[[int, list[Item]], None]: ...
    def compactor_health(self, part: str, next_offset: int) -> tuple[list[str], dict]: ...


LAKE = web.AppKey("lake", Lake)
# an error response's code and message, kept on it for make_handler (plain keys before aiohttp 3.12)
_KEY = getattr(web, "ResponseKey", lambda name, t: name)
CODE, MESSAGE = _KEY("code", str), _KEY("message", str)
ACCEPTED_ENCODINGS = {"identity", "gzip", "x-gzip", "deflate"}
NOT_PUBLISHED_RETRY_S = 5  # Retry-After of a deletion refused while the catalog is unreachable


def is_deletion(item: Item) -> bool:
    """A TRIP_DELETION push: the one kind whose ack waits for the catalog (its tombstone)."""
    return item.kind == Kind.EVENT and deleted_itin(item.key) is not None


def error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    resp = web.json_response({"error": code, "message": message}, status=status, headers=headers,
                             dumps=lambda o: orjson.dumps(o).decode())
    resp[CODE], resp[MESSAGE] = code, message  # for the refusal's log line and metrics
    return resp


def auth_error(e: AuthError) -> web.Response:
    """401 (with the schemes we accept) or 403 for credentials that do not pass; 503 with
    Retry-After for credentials that cannot be checked now (the catalog is unreachable)."""
    headers = {"WWW-Authenticate": 'Bearer realm="pushlake", Basic realm="pushlake"'} if e.status == 401 else None
    if e.status == 503:
        headers = {"Retry-After": str(int(RETRY_S))}
    return error(e.status, e.code, e.message, headers)


def ok(payload: dict) -> web.Response:
    return web.Response(body=orjson.dumps(payload), content_type="application/json")


GZIP_MAGIC = b"\x1f\x8b"
MAX_GZIP_MEMBERS = 1000  # each member costs a few µs of Python: 1.6 M empty ones in 32 MiB took 3 s


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """The whole decompressed body, with a bound on its total size, so that a gzip bomb (in one
    member or spread over several) cannot inflate past the limit (OverflowError).

    A gzip (or x-gzip) body is a series of members (RFC 1952 §2.2): every one is inflated, in
    order, as ``gzip -d`` does, up to ``MAX_GZIP_MEMBERS``. A deflate body is one zlib stream
    (RFC 1950). A stream that does not end, or any byte after the last one, is a zlib.error
    (400): a push is never acknowledged with part of its body dropped."""
    gz = encoding in ("gzip", "x-gzip")
    wbits = 16 + zlib.MAX_WBITS if gz else zlib.MAX_WBITS
    view = memoryview(body)
    pieces: list[bytes] = []
    size = pos = 0
    for member in range(MAX_GZIP_MEMBERS):
        d = zlib.decompressobj(wbits)
        # the first member gets the whole body in one call (the usual single-member push: no
        # copy); later ones get growing slices, so that what zlib copies aside after a member
        # ends (unused_data) stays small however many members follow
        step = len(view) if member == 0 else 512
        while not d.eof:
            if pos >= len(view):
                raise zlib.error("truncated stream")
            chunk = view[pos:pos + step]
            pos += len(chunk)
            step = min(step * 2, 1 << 16)
            piece = d.decompress(chunk, limit + 1 - size)  # more than that is over the limit anyway
            size += len(piece)
            if size > limit:
                raise OverflowError
            pieces.append(piece)
        pos -= len(d.unused_data)
        if pos == len(view):
            return pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if not gz or view[pos:pos + 2] != GZIP_MAGIC:
            raise zlib.error(f"{len(view) - pos} bytes after the end of the {'gzip' if gz else 'zlib'} stream")
    raise zlib.error(f"more than {MAX_GZIP_MEMBERS} gzip members")


def _not_published() -> web.Response:
    return error(503, "catalog_unavailable", "the catalog cannot be reached to publish the deletion; retry later",
                 {"Retry-After": str(NOT_PUBLISHED_RETRY_S)})


def _overloaded() -> web.Response:
    return error(503, "overloaded", "write queue is full; retry later", {"Retry-After": "1"})


# -- errors aiohttp makes itself (unknown route, wrong method, body over client_max_size, an
# exception in a handler) get the same JSON shape as ours: {"error": code, "message": text}
ERROR_CODES = {413: "too_large", 500: "internal_error"}
KEEP_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


def error_code(status: int) -> str:
    """``not_found``, ``method_not_allowed``...: the reason phrase in snake case."""
    if status in ERROR_CODES:
        return ERROR_CODES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def json_http_error(request: web.BaseRequest, e: web.HTTPException) -> web.Response:
    allow = e.headers.get("Allow")
    if e.status == 404:
        message = f"no resource at {request.path} (the API is described at /openapi.json)"
    elif e.status == 405:
        message = f"{request.method} is not allowed on {request.path}; allowed: {allow or 'none'}"
    elif e.status == 413:
        message = f"body exceeds the {request.app[SETTINGS].max_body_bytes}-byte limit"
    elif e.text and not e.text.startswith(f"{e.status}: "):  # aiohttp's own text, when it says more
        message = e.text
    else:
        message = e.reason
    headers = {h: e.headers[h] for h in KEEP_HEADERS if h in e.headers}
    return error(e.status, error_code(e.status), message, headers or None)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if request.writer.output_size > 0:
            # aiohttp would write the exception as a second response (see below)
            raise RuntimeError(f"HTTP {e.status} raised after the answer had begun") from e
        if e.status < 400:
            raise
        return json_http_error(request, e)
    except ConnectionError:
        raise  # the client went away: aiohttp drops the connection quietly
    except Exception:
        if request.writer.output_size > 0:
            # a streamed answer has begun (an export): a second response would be written into
            # its body; aiohttp logs the error and cuts the connection, so the client sees it fail
            raise
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error(500, "internal_error", "internal server error (logged by the server)")


async def expect_json(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's Expect handling (100-continue), with a JSON 417 for other expectations: the
    Expect handler runs before the middlewares, so ``json_errors`` cannot see its error."""
    try:
        return await _aiohttp_expect(request)
    except web.HTTPException as e:
        return json_http_error(request, e)


async def _json_expectations(app: web.Application) -> None:
    """Every route of the app (its modules add theirs after ``build_app``) gets ``expect_json``.
    aiohttp offers this only per route (``expect_handler=``), hence the attribute."""
    for route in app.router.routes():
        if getattr(route, "_expect_handler", None) is _aiohttp_expect:
            route._expect_handler = expect_json


def make_handler(kind: int):
    """The push route of ``kind``: ``_push`` answers, this counts and times the answer and logs
    a refusal with its team, route and reason (``pushlake.metrics``; the logger
    ``pushlake.refused``)."""
    label = Kind(kind).label
    push = _push_handler(kind)
    counted: dict[tuple[str, int, str], object] = {}  # label children, looked up once each

    def count(team: str, status: int, code: str) -> None:
        child = counted.get((team, status, code))
        if child is None:
            child = counted[(team, status, code)] = M().pushes.labels(team, label, str(status), code)
        child.inc()

    async def handler(request: web.Request) -> web.StreamResponse:
        t0 = time.perf_counter()
        who = {"team": ""}
        try:
            resp = await push(request, who)
        except web.HTTPException as e:  # aiohttp's own refusals (e.g. a body over the limit)
            count(who["team"], e.status, error_code(e.status))
            raise
        except Exception:
            count(who["team"], 500, "internal_error")
            raise
        if resp.status == 200:
            count(who["team"], 200, "ok")
            ack.observe(time.perf_counter() - t0)
        else:
            code = resp.get(CODE, "error")
            count(who["team"], resp.status, code)
            refused.info("refused %s %s: %d %s (team %s): %s", request.method, request.path, resp.status, code,
                         who["team"] or "-", resp.get(MESSAGE, ""),
                         extra={"team": who["team"] or None, "route": request.path, "status": resp.status,
                                "code": code, "reason": resp.get(MESSAGE, ""), "remote": request.remote})
        return resp

    ack = M().ack.labels(label)
    return handler


def _push_handler(kind: int):
    async def handler(request: web.Request, who: dict) -> web.StreamResponse:
        s: Settings = request.app[SETTINGS]
        try:
            team = request.app[AUTH].authenticate(request.headers.get("Authorization"))
        except AuthError as e:
            who["team"] = e.team
            return auth_error(e)
        who["team"] = team
        if request.content_type != "application/json" and not request.content_type.endswith("+json"):
            return error(415, "unsupported_media_type",
                         f"Content-Type must be application/json, got '{request.content_type}'")
        if request.content_length is not None and request.content_length > s.max_body_bytes:
            return error(413, "too_large", f"body exceeds the {s.max_body_bytes}-byte limit")
        # two Content-Encoding headers are one list (RFC 9110 §5.3), like "gzip, gzip": refused
        encoding = ", ".join(request.headers.getall("Content-Encoding", ["identity"])).strip().lower()
        if encoding not in ACCEPTED_ENCODINGS:
            return error(415, "unsupported_encoding", f"Content-Encoding '{encoding}' is not supported (use gzip)")
        if request.app[COMMIT].full(request.content_length or 0):
            return _overloaded()
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error(413, "too_large", f"body exceeds the {s.max_body_bytes}-byte limit")
        if encoding != "identity":
            try:
                body = inflate(body, encoding, s.max_body_bytes)
            except OverflowError:
                return error(413, "too_large", f"decompressed body exceeds the {s.max_body_bytes}-byte limit")
            except zlib.error as e:
                return error(400, "bad_encoding", f"body is not valid {encoding}: {e}")
        try:
            key = key_of(kind, parse_keys(body), body)
        except NotJson as e:
            return error(400, "invalid_json", str(e))
        except MissingKey as e:
            return error(400, "missing_key", str(e))
        if kind == Kind.EVENT and deleted_itin(key) is not None and (
                request.app[COMMIT].publishing_hangs or not request.app[AUTH].reachable()):
            return _not_published()  # refused before the log: a 503 that changes nothing
        state = request.app[STATE]
        if state["disk_low"]:
            return error(503, "disk_full", "free disk space is below the safety threshold; retry later",
                         {"Retry-After": "60"})
        item = Item(kind, time.time_ns() // 1000, team, key, body)
        try:
            offset = await request.app[COMMIT].submit(item)
        except Overloaded:
            return _overloaded()
        except NotPublished:
            # the outage began between the check above and the publication: the record is in the
            # log (fsynced) and the compactor will apply it, as it will the client's retry (a
            # deletion is idempotent); what is missing is the tombstone that hides the trip from
            # readers from the ack on, so there is no ack
            return _not_published()
        except WriteFailed as e:
            return error(503, "write_failed", f"could not store the push durably ({e}); retry later",
                         {"Retry-After": "30"})
        return ok({"status": "OK", "partition": request.app[COMMIT].writer.partition, "offset": offset})
    return handler


async def health(request: web.Request) -> web.Response:
    """``ok``, or ``degraded`` with its reasons and a 503 (for load balancers): low disk, or a
    compactor failing or not advancing over this receiver's partition (from its status file)."""
    s: Settings = request.app[SETTINGS]
    gc = request.app[COMMIT]
    rec = request.app[STATE].get("recovery")
    reasons = ["free disk space is below the safety threshold"] if request.app[STATE]["disk_low"] else []
    compactor = None
    if s.compactor:
        problems, compactor = compactor_view(request.app)
        reasons += problems
    body = {"status": "degraded" if reasons else "ok", "reasons": reasons,
            "partition": gc.writer.partition, "nextOffset": gc.writer.next_offset,
            "pending": gc.pending, "batches": gc.batches, "records": gc.records, "compactor": compactor,
            "recovery": None if rec is None else {"segment": rec.segment, "keptBytes": rec.kept_bytes,
                                                  "cutBytes": rec.cut_bytes, "reason": rec.reason,
                                                  "savedAs": rec.saved_as}}
    return web.Response(body=orjson.dumps(body), content_type="application/json", status=503 if reasons else 200)


async def _watch_disk(app: web.Application) -> None:
    """Every second: the free disk (503 below ``--min-free``) and the gauges of this receiver's
    partition (free disk, the compactor's lag, degraded), which ``GET /metrics`` reads."""
    s = app[SETTINGS]
    m = M()
    while True:
        try:
            free = shutil.disk_usage(s.data_dir).free
        except OSError:
            free = None
        low = free is None or free < s.min_free_bytes
        if low != app[STATE]["disk_low"]:
            log.warning("free disk %s the threshold of %d bytes", "below" if low else "back above", s.min_free_bytes)
        app[STATE]["disk_low"] = low
        if free is not None:
            m.disk_free.set(free)
        try:
            _measure_lag(app, m)
        except Exception:  # noqa: BLE001 - a gauge is never worth stopping the disk watch
            log.debug("could not measure the compactor's lag", exc_info=True)
        await asyncio.sleep(1.0)


def compactor_view(app: web.Application) -> tuple[list[str], dict]:
    """What is wrong with the compactor over this receiver's partition, and its lag: records not
    yet projected, and how long the oldest of them has waited (``lagSeconds``; counted from this
    receiver's start for a record received before it). Waiting over ``health_max_lag_s`` is a
    problem of its own: a compactor that advances, but too slowly to catch up."""
    gc = app[COMMIT]
    problems, compactor = app[LAKE].compactor_health(gc.writer.partition, gc.writer.next_offset)
    behind = compactor["lagRecords"]
    waited = 0.0
    if behind:
        since = gc.received_at(gc.writer.next_offset - behind) or app[STATE]["started_at"]
        waited = max(0.0, time.time() - since)
    compactor["lagSeconds"] = round(waited, 3)
    limit = app[SETTINGS].health_max_lag_s
    if waited > limit and not problems:
        problems.append(f"compactor far behind: {behind} record(s) waiting, the oldest for {waited:.0f} s "
                        f"(more than {limit:.0f} s)")
    return problems, compactor


def _measure_lag(app: web.Application, m) -> None:
    part = app[COMMIT].writer.partition
    problems: list[str] = []
    if app[SETTINGS].compactor:
        problems, compactor = compactor_view(app)
        m.lag_records.labels(part).set(compactor["lagRecords"])
        m.lag_seconds.labels(part).set(compactor["lagSeconds"])
    m.degraded.labels(part).set(1 if problems or app[STATE]["disk_low"] else 0)


class ReceiverRoute(NamedTuple):
    method: str
    path: str
    handler: Callable


# what the receiver serves, one push route per kind of ``ingest.keys.ROUTES`` and /health; the
# API's route table (pushlake/api/routes.py) documents each of these by method and path
RECEIVER_ROUTES: list[ReceiverRoute] = [
    *(ReceiverRoute("post", f"/push/{segment}", make_handler(kind)) for segment, (kind, _) in ROUTES.items()),
    ReceiverRoute("get", "/health", health)]


def add_routes(app: web.Application, routes) -> None:
    """Register routes given as anything with ``method``, ``path`` and ``handler`` (the API's
    route table uses it too); a GET answers HEAD as well."""
    for r in routes:
        if r.method == "get":
            app.router.add_get(r.path, r.handler)
        else:
            app.router.add_route(r.method.upper(), r.path, r.handler)


def build_app(settings: Settings, partition: int = 0, *, lake: Lake) -> web.Application:
    """The receiver of log partition ``p<partition>``; ``lake`` publishes its deletions and
    tells where the compactor is (see ``Lake``)."""
    # we inflate bodies ourselves: bounded, and unknown encodings get a JSON 415, not a parser error
    app = web.Application(client_max_size=settings.max_body_bytes + 1, handler_args={"auto_decompress": False},
                          middlewares=[json_errors])
    app[SETTINGS] = settings
    app[STATE] = {"disk_low": False, "started_at": time.time()}
    app[AUTH] = PushAuth(settings.data_dir)
    app[LAKE] = lake

    async def startup(app: web.Application) -> None:
        writer = LogWriter(settings.data_dir, partition, settings.segment_bytes, settings.segment_age_s,
                           floor=lake.compacted_up_to(partition_name(partition)))
        lake.republish_tombstones(writer.partition)
        gc = GroupCommit(writer, lake.tombstone_sink(writer.partition),
                         settings.max_pending_requests, settings.max_pending_bytes, needs_sink=is_deletion)
        gc.start()
        app[COMMIT] = gc
        app[STATE]["disk_low"] = shutil.disk_usage(settings.data_dir).free < settings.min_free_bytes
        app[STATE]["disk_task"] = asyncio.get_running_loop().create_task(_watch_disk(app))
        if writer.recovery:
            app[STATE]["recovery"] = writer.recovery  # shown by /health until the next restart

    async def cleanup(app: web.Application) -> None:
        app[STATE]["disk_task"].cancel()
        await app[COMMIT].close()
        app[AUTH].close()

    app.on_startup.append(_json_expectations)
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    add_routes(app, RECEIVER_ROUTES)
    return app
