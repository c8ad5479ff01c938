"""``POST /oauth/token``: OAuth2 client credentials (RFC 6749 §4.4), client = team id, secret =
push key, given in the form body or as HTTP Basic. Errors follow §5.2."""
from __future__ import annotations

from aiohttp import web

from ingest.app import AUTH, SETTINGS
from ingest.auth import RETRY_S, AuthError, basic_credentials
from pushlake import tokens

from .bodies import OAuthError, TokenResponse, encode

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(body, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=encode(body), status=status, headers=headers, content_type="application/json",
                        charset="utf-8")


def _error(status: int, code: str, description: str, basic: bool = False) -> web.Response:
    headers = dict(NO_STORE)
    if status == 401 and basic:
        headers["WWW-Authenticate"] = 'Basic realm="pushlake"'
    return _json(OAuthError(error=code, error_description=description), status, headers)


async def token(request: web.Request) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        return _error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    form = await request.post()
    grant = form.get("grant_type")
    if not grant:
        return _error(400, "invalid_request", "grant_type is required")
    header = request.headers.get("Authorization")
    basic = bool(header and header.lower().startswith("basic "))
    try:
        if basic:
            client_id, secret = basic_credentials(header.split(" ", 1)[1].strip())
            if "client_secret" in form:
                return _error(400, "invalid_request", "use one client authentication method: Basic or the body")
            if "client_id" in form and form["client_id"] != client_id:
                return _error(400, "invalid_request", "client_id in the body differs from the Basic credentials")
        else:
            client_id, secret = form.get("client_id"), form.get("client_secret")
            if not client_id or not secret:
                return _error(401, "invalid_client", "client authentication required (client_id and client_secret, "
                                                     "or HTTP Basic)")
        if grant != "client_credentials":
            return _error(400, "unsupported_grant_type", "only grant_type=client_credentials is supported")
        team = request.app[AUTH].client_credentials(client_id, secret)
    except AuthError as e:
        if e.status == 503:  # the catalog cannot be reached to check these credentials
            return _json(OAuthError(error="temporarily_unavailable", error_description=e.message), 503,
                         {**NO_STORE, "Retry-After": str(int(RETRY_S))})
        return _error(401, "invalid_client", e.message, basic)
    ttl = request.app[SETTINGS].token_ttl_s
    access, expires = tokens.issue(request.app[AUTH].secret, team.team_id, team.keys_issued_at, ttl)
    return _json(TokenResponse(access_token=access, token_type="Bearer", expires_in=expires), headers=dict(NO_STORE))
