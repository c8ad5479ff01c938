"""What operators read: ``GET /metrics`` (Prometheus) and who may read it and the status page.

Both are protected like the enterprise API, in the ways the callers can send it:
- the enterprise key in ``x-dq-enterprise-api-key`` (scripts, as for ``/v1/enterprise/*``);
- ``Authorization: Bearer <enterprise key>`` (Prometheus' ``authorization`` scrape setting);
- HTTP Basic: a hyper-admin's ``userId:password`` (a person in a browser, whose login prompt
  a 401 with ``WWW-Authenticate: Basic`` brings up), or ``enterprise:<enterprise key>``.
Team keys are refused (403): the metrics name every team.
"""
from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from ingest.app import auth_error, error
from ingest.auth import AuthError, basic_credentials, split_authorization
from pushlake import metrics

from .enterprise import ENTERPRISE_KEY, HEADER
from .reads import TooMany, _principal

CHALLENGE = {"WWW-Authenticate": 'Basic realm="pushlake operators", charset="UTF-8"'}
ENTERPRISE_USER = "enterprise"


def _is_key(request: web.Request, given: str) -> bool:
    return hmac.compare_digest(given.encode(), request.app[ENTERPRISE_KEY].encode())


async def operator(request: web.Request) -> str | web.Response:
    """The operator's name (``enterprise`` or the hyper-admin's userId), or the response that
    refuses the request (401 with a Basic challenge, 403 for a team's key, 429/503 while
    password checks are throttled)."""
    if HEADER in request.headers:
        if _is_key(request, request.headers[HEADER]):
            return ENTERPRISE_USER
        return error(401, "unauthorized", f"wrong {HEADER} header", CHALLENGE)
    header = request.headers.get("Authorization")
    if not header:
        return error(401, "missing_credentials", f"the enterprise key ({HEADER}, or Bearer) or a hyper-admin's "
                                                 "Basic credentials are required", CHALLENGE)
    try:
        scheme, value = split_authorization(header)
        if scheme == "bearer" and _is_key(request, value):
            return ENTERPRISE_USER
        if scheme == "basic":
            user, password = basic_credentials(value)
            if user == ENTERPRISE_USER and _is_key(request, password):
                return ENTERPRISE_USER
        who = await _principal(request)
    except AuthError as e:
        resp = auth_error(e)
        if e.status == 401:
            resp.headers.update(CHALLENGE)
        return resp
    except TooMany as e:
        return e.response()
    if who.kind != "hyperadmin":
        return error(403, "forbidden", "a team's key cannot read the operators' pages (they show every team)")
    return who.name


async def metrics_handler(request: web.Request) -> web.StreamResponse:
    """Every process's values (receivers, compactor), gathered off the event loop: reading the
    processes' files takes milliseconds that pushes must not wait for."""
    who = await operator(request)
    if isinstance(who, web.StreamResponse):
        return who
    body = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE, "Cache-Control": "no-store"})
