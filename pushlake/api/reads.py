"""Team-scoped reads over HTTP: ``POST /v1/query`` and ``GET /v1/export/{table}``.

A team's admin key reads that team only (a connection confined to its partitions); a hyper-admin
(Basic) reads every team, or one with ``teamId``, through a connection confined to the lake. Each
request gets a fresh connection, so nothing one query does can leak into the next; queries run in
worker threads with a time limit (DuckDB interrupt) and a row limit.
"""
from __future__ import annotations

import asyncio
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import duckdb
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from aiohttp import web

from ingest.app import AUTH, SETTINGS, auth_error, error
from ingest.auth import AuthError, PasswordCheck, Principal
from queries import connect
from queries.export import FORMATS, ExportError, stream

POOL = web.AppKey("query_pool", ThreadPoolExecutor)
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"


class QueryTimeout(Exception):
    pass


async def _principal(request: web.Request) -> Principal:
    """A hyper-admin's password check runs scrypt: in a worker thread, so pushes never wait on it."""
    auth = request.app[AUTH]
    try:
        return auth.reader(request.headers.get("Authorization"))
    except PasswordCheck as pc:
        ok = await asyncio.get_running_loop().run_in_executor(request.app[POOL], auth.admins.verify, pc.user,
                                                              pc.password)
        return auth.remember(pc, ok)


def _scope(request: web.Request, who: Principal, team_param: str | None) -> dict:
    if who.kind == "team":
        if team_param not in (None, who.team):
            raise AuthError(403, "forbidden", "a team key reads its own team only")
        return {"team": who.team}
    if team_param is not None and request.app[AUTH].team(team_param) is None:
        raise AuthError(404, "not_found", f"unknown team '{team_param}'")
    return {"team": team_param} if team_param else {"sandbox": True}


def _connect(request: web.Request, scope: dict):
    s = request.app[SETTINGS]
    return connect(s.data_dir, settings={"memory_limit": s.query_memory_limit, "threads": 1}, **scope)


def _run_query(con, sql: str, max_rows: int, timeout: float) -> tuple[pa.Table, bool]:
    timer = threading.Timer(timeout, con.interrupt)
    timer.start()
    try:
        rel = con.sql(sql)
        if rel is None:
            raise duckdb.InvalidInputException("the statement returns no rows")
        reader = rel.to_arrow_reader(8192)
        batches, n = [], 0
        for b in reader:
            batches.append(b)
            n += b.num_rows
            if n > max_rows:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        raise QueryTimeout(f"query exceeded the {timeout:g} s limit") from None
    finally:
        timer.cancel()
        con.close()
    return table.slice(0, max_rows), table.num_rows > max_rows


def _negotiate(accept: str) -> str:
    for part in (p.split(";")[0].strip() for p in accept.split(",")):
        if part in ("application/json", "*/*", "application/*", ""):
            return "application/json"
        if part in ("text/csv", ARROW, PARQUET, "application/x-parquet"):
            return PARQUET if part == "application/x-parquet" else part
    return ""


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
    mime = _negotiate(request.headers.get("Accept", "application/json"))
    if not mime:
        return error(406, "not_acceptable", "Accept application/json, text/csv, "
                                            f"{ARROW} or {PARQUET}")
    s = request.app[SETTINGS]
    loop = asyncio.get_running_loop()

    def work():
        con = _connect(request, scope)
        return _run_query(con, doc["sql"], s.query_max_rows, s.query_timeout_s)
    try:
        table, truncated = await loop.run_in_executor(request.app[POOL], work)
    except PermissionError as e:
        return error(403, "forbidden", str(e))
    except duckdb.PermissionException as e:
        return error(403, "forbidden", str(e).splitlines()[0])
    except QueryTimeout as e:
        return error(400, "query_timeout", str(e))
    except duckdb.Error as e:
        return error(400, "invalid_query", str(e).splitlines()[0])
    headers = {"X-Pushlake-Truncated": "true" if truncated else "false", "X-Pushlake-Rows": str(table.num_rows)}
    if mime == "application/json":
        body = orjson.dumps({"columns": [{"name": f.name, "type": str(f.type)} for f in table.schema],
                             "rows": table.to_pylist(), "rowCount": table.num_rows, "truncated": truncated},
                            default=str)
    else:
        sink = io.BytesIO()
        if mime == "text/csv":
            pacsv.write_csv(table, sink)
        elif mime == ARROW:
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
        else:
            pq.write_table(table, sink)
        body = sink.getvalue()
    return web.Response(body=body, content_type=mime, headers=headers)


async def export(request: web.Request) -> web.StreamResponse:
    table = request.match_info["table"]
    fmt = request.query.get("format", "parquet")
    try:
        who = await _principal(request)
        scope = _scope(request, who, request.query.get("teamId"))
    except AuthError as e:
        return auth_error(e)
    if fmt not in FORMATS:
        return error(400, "invalid_request", f"format must be one of {', '.join(FORMATS)}")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue(maxsize=4)
    DONE = object()
    started: asyncio.Future = loop.create_future()

    cancelled = threading.Event()

    def put(item) -> None:
        f = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                f.result(timeout=0.5)
                return
            except TimeoutError:
                if cancelled.is_set():
                    f.cancel()
                    raise ConnectionAbortedError("export cancelled: the client went away") from None

    def produce():
        con = None
        try:
            con = _connect(request, scope)
            total, chunks = stream(con, table, fmt, request.query.get("from"), request.query.get("to"))
            loop.call_soon_threadsafe(_settle, started, total, None)
            for chunk in chunks:
                if chunk:
                    put(chunk)
        except ConnectionAbortedError:
            return
        except BaseException as e:  # noqa: BLE001 - reported to the request
            if not started.done():
                loop.call_soon_threadsafe(_settle, started, None, e)
            else:
                try:
                    put(e)
                except ConnectionAbortedError:
                    pass
            return
        finally:
            if con is not None:
                con.close()
        try:
            put(DONE)
        except ConnectionAbortedError:
            pass

    fut = loop.run_in_executor(request.app[POOL], produce)
    try:
        return await _send(request, fut, started, queue, DONE, table, fmt)
    finally:
        cancelled.set()  # a client that went away must not leave the producer blocked on a full queue


async def _send(request, fut, started, queue, DONE, table, fmt) -> web.StreamResponse:
    try:
        total = await started
    except ExportError as e:
        await fut
        status = 404 if str(e).startswith("unknown table") else 400
        return error(status, "not_found" if status == 404 else "invalid_request", str(e))
    except duckdb.Error as e:
        await fut
        return error(400, "invalid_query", str(e).splitlines()[0])
    resp = web.StreamResponse(headers={"Content-Type": FORMATS[fmt], "X-Pushlake-Rows": str(total),
                                       "Content-Disposition": f'attachment; filename="{table}.{fmt}"'})
    await resp.prepare(request)
    while True:
        item = await queue.get()
        if item is DONE:
            break
        if isinstance(item, BaseException):
            raise item  # the client sees a cut connection rather than a silently short file
        await resp.write(item)
    await fut
    await resp.write_eof()
    return resp


def _settle(fut: asyncio.Future, result, exc: BaseException | None) -> None:
    if not fut.done():  # the request may have been cancelled meanwhile
        fut.set_exception(exc) if exc is not None else fut.set_result(result)


def setup(app: web.Application) -> None:
    pool = ThreadPoolExecutor(2, thread_name_prefix="query")
    app[POOL] = pool

    async def close(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)
    app.on_cleanup.append(close)
    app.router.add_post("/v1/query", query)
    app.router.add_get("/v1/export/{table}", export)
