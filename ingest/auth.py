"""Who is calling: teams (push key, OAuth2 access token, admin key) and hyper-admins.

Teams are held in memory and reloaded when ``admin.db`` changes (``PRAGMA data_version``, checked
at most every 10 ms), so a team disabled by any process is refused by every receiver within 10 ms,
and at once by the process that disabled it, with no per-request query on the hot path.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from pathlib import Path

from pushlake import tokens
from pushlake.hyperadmins import HyperAdmins
from pushlake.teams import Teams, hash_key


class AuthError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class _Team:
    team_id: str
    enabled: bool
    push_hash: str
    admin_hash: str
    keys_issued_at: float


@dataclass(frozen=True)
class Principal:
    """A reader: a team (sees its own data) or a hyper-admin (sees every team)."""
    kind: str          # "team" | "hyperadmin"
    name: str

    @property
    def team(self) -> str | None:
        return self.name if self.kind == "team" else None


class PushAuth:
    def __init__(self, data_dir: Path):
        self.teams = Teams(data_dir)
        self.admins = HyperAdmins(data_dir)
        self.secret = tokens.load_secret(data_dir)
        self._by_id: dict[str, _Team] = {}
        self._by_push: dict[str, _Team] = {}
        self._by_admin: dict[str, _Team] = {}
        self._verified: dict[str, tuple[str, float]] = {}   # hyper-admin credentials already checked
        self._version: int | None = None
        self._next_check = 0.0
        self.check_every = 0.01  # a change made by another process is seen within 10 ms

    def close(self) -> None:
        self.teams.close()
        self.admins.close()

    def reload(self) -> None:
        # the version is read first: a change committed while we read counts as unseen
        version = self.teams.data_version()
        by_id, by_push, by_admin = {}, {}, {}
        for r in self.teams.all():
            t = _Team(r.team_id, r.enabled, r.push_key_hash, r.admin_key_hash, r.keys_issued_at)
            by_id[r.team_id], by_push[r.push_key_hash], by_admin[r.admin_key_hash] = t, t, t
        self._by_id, self._by_push, self._by_admin = by_id, by_push, by_admin
        self._verified.clear()
        self._version = version

    def _fresh(self) -> None:
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.check_every
        if self.teams.data_version() != self._version:
            self.reload()

    def team(self, team_id: str) -> _Team | None:
        self._fresh()
        return self._by_id.get(team_id)

    def authenticate(self, header: str | None) -> str:
        """The pushing team: push key or access token (Bearer), or Basic teamId:pushKey.
        401 for unknown credentials, 403 for a disabled team."""
        if not header:
            raise AuthError(401, "missing_credentials", "Authorization header required (Bearer push key or token, or Basic teamId:pushKey)")
        self._fresh()
        scheme, value = _split(header)
        if scheme == "bearer":
            if value.startswith(tokens.PREFIX):
                claims = tokens.check(self.secret, value)
                team = self._by_id.get(claims[0]) if claims else None
                if team is not None and round(team.keys_issued_at, 6) != claims[1]:
                    team = None  # issued under keys that were replaced since
                if team is None:
                    raise AuthError(401, "invalid_token", "access token is invalid or expired")
            else:
                team = self._by_push.get(hash_key(value))
        elif scheme == "basic":
            team_id, key = _basic(value)
            team = self._by_id.get(team_id)
            if team is not None and not hmac.compare_digest(team.push_hash, hash_key(key)):
                team = None
        else:
            raise AuthError(401, "invalid_credentials", "unsupported Authorization scheme (use Bearer or Basic)")
        if team is None:
            raise AuthError(401, "invalid_credentials", "unknown or revoked push key")
        if not team.enabled:
            raise AuthError(403, "team_disabled", f"team '{team.team_id}' is disabled")
        return team.team_id

    def client_credentials(self, team_id: str, key: str) -> _Team:
        """OAuth2 client authentication: the team id and its push key."""
        self._fresh()
        team = self._by_id.get(team_id)
        if team is None or not hmac.compare_digest(team.push_hash, hash_key(key)):
            raise AuthError(401, "invalid_client", "unknown client or wrong secret")
        if not team.enabled:
            raise AuthError(401, "invalid_client", f"team '{team_id}' is disabled")
        return team

    def reader(self, header: str | None) -> Principal:
        """A team's admin key (Bearer) or a hyper-admin's Basic userId:password. Uncached Basic
        credentials raise ``PasswordCheck``: the caller runs the slow check where it can wait
        (a worker thread) and hands the answer to ``remember``."""
        if not header:
            raise AuthError(401, "missing_credentials", "Authorization required: Bearer adminApiKey or Basic hyper-admin credentials")
        self._fresh()
        scheme, value = _split(header)
        if scheme == "bearer":
            team = self._by_admin.get(hash_key(value))
            if team is None:
                raise AuthError(401, "invalid_credentials", "unknown or revoked admin key")
            if not team.enabled:
                raise AuthError(403, "team_disabled", f"team '{team.team_id}' is disabled")
            return Principal("team", team.team_id)
        if scheme == "basic":
            user, password = _basic(value)
            digest = hashlib.sha256(value.encode()).hexdigest()
            hit = self._verified.get(digest)
            if hit is None or hit[1] < time.monotonic():
                raise PasswordCheck(user, password, digest)
            return Principal("hyperadmin", user)
        raise AuthError(401, "invalid_credentials", "unsupported Authorization scheme (use Bearer or Basic)")


    def remember(self, check: "PasswordCheck", ok: bool) -> Principal:
        if not ok:
            raise AuthError(401, "invalid_credentials", "unknown hyper-admin or wrong password")
        self._verified[check.digest] = (check.user, time.monotonic() + 300)
        return Principal("hyperadmin", check.user)


class PasswordCheck(Exception):
    """Hyper-admin credentials that need the (slow, scrypt) password check."""

    def __init__(self, user: str, password: str, digest: str):
        super().__init__(user)
        self.user, self.password, self.digest = user, password, digest


def _split(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if not value:
        raise AuthError(401, "invalid_credentials", "empty credentials")
    return scheme.lower(), value


def _basic(value: str) -> tuple[str, str]:
    try:
        user, sep, secret = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise AuthError(401, "invalid_credentials", "malformed Basic credentials") from None
    if not sep:
        raise AuthError(401, "invalid_credentials", "malformed Basic credentials")
    return user, secret
