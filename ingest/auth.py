"""Which team is pushing: push key, OAuth2 access token, or Basic teamId:pushKey.

Teams are held in memory and reloaded when the admin stores change (``Teams.changes()``: ``PRAGMA
data_version`` of ``admin.db``, or on PostgreSQL the admin stores' change counter; checked at most
every 10 ms), so a team disabled by any process (on any node sharing the PostgreSQL database) is
refused by every receiver within 10 ms, and at once by the process that disabled it, with no
per-request query on the hot path. The same cache answers the admin plane's lookups of a team
(``team``, ``by_admin_key``); who may *read* (admin keys, hyper-admins) is decided above the
receiver, in ``pushlake.api.auth``.

When the admin stores cannot be reached (PostgreSQL down or cut off) the
cache keeps serving what it holds: known keys and tokens are accepted or refused as before, and
credentials it cannot check (not in the cache) get 503 with Retry-After, not 401: a client must
retry them, not drop its key. On PostgreSQL the store is asked on a thread of its own and a request
waits at most ``CHECK_TIMEOUT_S`` for it (a server that hangs counts as down); while it is down it
is asked again every ``RETRY_S``, and the outage is logged once when it begins and once when it ends.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError
from dataclasses import dataclass
from pathlib import Path

from pushlake import tokens
from pushlake.teams import Teams, hash_key

log = logging.getLogger("pushlake.auth")
RETRY_S = 1.0  # how often an unreachable admin store is asked again (and the client's Retry-After)
CHECK_TIMEOUT_S = 0.5  # a check that takes longer counts as an outage (the event loop waits no longer)
# a deletion is taken without asking the store again if it answered this recently: asking before
# every deletion cost a round trip per request (small deletions, 64 clients: 3,500 req/s instead of
# 10,000 on SQLite); an outage that began within it is the case a failed publication handles
REACHABLE_FRESH_S = 0.25
RELOAD_TIMEOUT_S = 5.0


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str, team: str = ""):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.team = team  # the team the credentials proved (a disabled one), for logs and metrics


def unavailable() -> AuthError:
    return AuthError(503, "catalog_unavailable", "the catalog holding the teams cannot be reached to check "
                                                 "these credentials; retry later")


@dataclass
class CachedTeam:
    team_id: str
    enabled: bool
    push_hash: str
    admin_hash: str
    keys_issued_at: float


class PushAuth:
    def __init__(self, data_dir: Path, url: str | None = None):
        self.teams = Teams(data_dir, url=url)
        self.secret = tokens.load_secret(data_dir, self.teams.db)
        self._by_id: dict[str, CachedTeam] = {}
        self._by_push: dict[str, CachedTeam] = {}
        self._by_admin: dict[str, CachedTeam] = {}
        self.generation = 0  # counts reloads: caches built on this one (e.g. of logins) drop theirs
        self._version: int | None = None
        self._next_check = 0.0
        self.check_every = 0.01  # a change made by another process is seen within 10 ms
        self.down_since: float | None = None  # the admin store could not be reached since (time.time())
        # PostgreSQL: the store is asked on this thread (see _fresh); SQLite: on the caller's
        self._checker = ThreadPoolExecutor(1, thread_name_prefix="teams") if self.teams.db.Unavailable else None
        self._probe: Future | None = None
        self._retry_at = 0.0  # while down, the next probe is sent from then on
        self._ok_at = float("-inf")  # when the store last answered (time.monotonic())
        # loaded now, not at the first request: a node that had authenticated nobody before a
        # catalog outage would otherwise refuse every push of it with 503
        self.reload()

    def close(self) -> None:
        if self._checker is not None:
            busy = self._probe is not None and not self._probe.done()
            self._checker.shutdown(wait=not busy, cancel_futures=True)
            if busy:
                return  # its thread is stuck in a call to an unreachable server: leave the connection to it
        self.teams.close()

    def _load(self) -> tuple:
        # the version is read first: a change committed while we read counts as unseen
        version = self.teams.changes()
        by_id, by_push, by_admin = {}, {}, {}
        for r in self.teams.all():
            t = CachedTeam(r.team_id, r.enabled, r.push_key_hash, r.admin_key_hash, r.keys_issued_at)
            by_id[r.team_id], by_push[r.push_key_hash], by_admin[r.admin_key_hash] = t, t, t
        return version, by_id, by_push, by_admin

    def _apply(self, loaded: tuple) -> None:
        self._version, self._by_id, self._by_push, self._by_admin = loaded
        self.generation += 1

    def _changed(self) -> tuple | None:
        """The new cache if the admin stores changed since it was loaded (else None)."""
        return self._load() if self.teams.changes() != self._version else None

    def reload(self) -> None:
        """Load the cache now (after a change this process made)."""
        if self._checker is None:
            self._apply(self._load())
            return
        try:
            self._apply(self._checker.submit(self._load).result(timeout=RELOAD_TIMEOUT_S))
        except (TimeoutError, *self.teams.db.Unavailable) as e:
            self._down(e)

    def _down(self, e: BaseException) -> None:
        self._retry_at = time.monotonic() + RETRY_S
        if self.down_since is None:
            self.down_since = time.time()
            why = (str(e).strip().splitlines() or [""])[0] or f"no answer within {CHECK_TIMEOUT_S} s"
            log.error("the teams' store cannot be reached (%s): serving the %d cached team(s), "
                      "unknown credentials get 503", why, len(self._by_id))

    def _up(self) -> None:
        if self.down_since is not None:
            log.warning("the teams' store is reachable again (after %.1f s)", time.time() - self.down_since)
            self.down_since = None

    def _fresh(self, wait: bool = False) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_every
        if self._checker is None:  # SQLite: a local file, asked here
            loaded = self._changed()
            if loaded is not None:
                self._apply(loaded)
            return
        # PostgreSQL: asked on the checker thread, waited for at most CHECK_TIMEOUT_S, so that a
        # server that hangs (not only one that refuses) never holds the event loop. While it is
        # down a probe is sent every RETRY_S, and requests do not wait for it (``wait``: they do,
        # at most CHECK_TIMEOUT_S too)
        if self._probe is None:
            if self.down_since is not None and now < self._retry_at:
                return
            self._probe = self._checker.submit(self._changed)
        if self.down_since is None or wait:
            try:
                self._probe.result(timeout=CHECK_TIMEOUT_S)
            except TimeoutError as e:
                self._down(e)
                return  # the probe goes on; its answer is taken at a later check
            except Exception:  # noqa: BLE001 - taken below
                pass
        elif not self._probe.done():
            return
        probe, self._probe = self._probe, None
        try:
            loaded = probe.result()
        except self.teams.db.Unavailable as e:
            self._down(e)
            return
        if loaded is not None and (self._version is None or loaded[0] >= self._version):
            self._apply(loaded)  # (not when a reload() since then loaded a newer one)
        self._ok_at = time.monotonic()
        self._up()

    def reachable(self) -> bool:
        """Whether the admin stores' database (on PostgreSQL the catalog's) answers now, asked
        afresh (waiting at most CHECK_TIMEOUT_S; while it is down, at most every RETRY_S). Asked
        before a deletion is written: one the catalog cannot take is refused before it reaches
        the log (an answer of the last ``REACHABLE_FRESH_S`` is taken as it is). SQLite, a local
        file: always."""
        if self._checker is None:
            return True
        if self.down_since is None and time.monotonic() - self._ok_at < REACHABLE_FRESH_S:
            return True
        self._next_check = 0.0
        self._fresh(wait=True)
        return self.down_since is None

    def unknown(self, error: AuthError) -> AuthError:
        """What to answer for credentials the cache does not know: ``error``, or 503 while the
        store that might know them cannot be asked."""
        return unavailable() if self.down_since is not None or self._version is None else error

    def current_generation(self) -> int:
        """The generation of the cache, reloaded first if the admin stores changed."""
        self._fresh()
        return self.generation

    def team(self, team_id: str) -> CachedTeam | None:
        self._fresh()
        return self._by_id.get(team_id)

    def by_admin_key(self, key: str) -> CachedTeam | None:
        self._fresh()
        return self._by_admin.get(hash_key(key))

    def authenticate(self, header: str | None) -> str:
        """The pushing team: push key or access token (Bearer), or Basic teamId:pushKey.
        401 for unknown credentials, 403 for a disabled team."""
        if not header:
            raise AuthError(401, "missing_credentials", "Authorization header required (Bearer push key or token, or Basic teamId:pushKey)")
        self._fresh()
        scheme, value = split_authorization(header)
        if scheme == "bearer":
            if value.startswith(tokens.PREFIX):
                claims = tokens.check(self.secret, value)
                team = self._by_id.get(claims[0]) if claims else None
                if team is not None and round(team.keys_issued_at, 6) != claims[1]:
                    team = None  # issued under keys that were replaced since
                if team is None:
                    bad = AuthError(401, "invalid_token", "access token is invalid or expired")
                    raise self.unknown(bad) if claims else bad
            else:
                team = self._by_push.get(hash_key(value))
        elif scheme == "basic":
            team_id, key = basic_credentials(value)
            team = self._by_id.get(team_id)
            if team is not None and not hmac.compare_digest(team.push_hash, hash_key(key)):
                team = None
        else:
            raise AuthError(401, "invalid_credentials", "unsupported Authorization scheme (use Bearer or Basic)")
        if team is None:
            raise self.unknown(AuthError(401, "invalid_credentials", "unknown or revoked push key"))
        if not team.enabled:
            raise AuthError(403, "team_disabled", f"team '{team.team_id}' is disabled", team.team_id)
        return team.team_id

    def client_credentials(self, team_id: str, key: str) -> CachedTeam:
        """OAuth2 client authentication: the team id and its push key."""
        self._fresh()
        team = self._by_id.get(team_id)
        if team is None or not hmac.compare_digest(team.push_hash, hash_key(key)):
            raise self.unknown(AuthError(401, "invalid_client", "unknown client or wrong secret"))
        if not team.enabled:
            raise AuthError(401, "invalid_client", f"team '{team_id}' is disabled")
        return team


def split_authorization(header: str) -> tuple[str, str]:
    """(scheme in lower case, credentials) of an Authorization header."""
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if not value:
        raise AuthError(401, "invalid_credentials", "empty credentials")
    return scheme.lower(), value


def basic_credentials(value: str) -> tuple[str, str]:
    """(user, secret) of Basic credentials."""
    try:
        user, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError(401, "invalid_credentials", "malformed Basic credentials") from None
    if not sep:
        raise AuthError(401, "invalid_credentials", "malformed Basic credentials")
    return user, secret
