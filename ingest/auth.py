"""Team authentication for pushes: ``Bearer <push key>`` or ``Basic base64(teamId:pushKey)``.

The receiver keeps the teams in memory and reloads them at most once a second, so a team
created or disabled from the CLI takes effect within a second without any per-request database
read on the hot path.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import time
from dataclasses import dataclass
from pathlib import Path

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


class PushAuth:
    def __init__(self, data_dir: Path, ttl: float = 1.0):
        self.teams = Teams(data_dir)
        self.ttl = ttl
        self._by_id: dict[str, _Team] = {}
        self._by_hash: dict[str, _Team] = {}
        self._loaded = 0.0

    def reload(self) -> None:
        by_id, by_hash = {}, {}
        for r in self.teams.all():
            t = _Team(r.team_id, r.enabled, r.push_key_hash)
            by_id[r.team_id] = t
            by_hash[r.push_key_hash] = t
        self._by_id, self._by_hash, self._loaded = by_id, by_hash, time.monotonic()

    def _fresh(self) -> None:
        if time.monotonic() - self._loaded > self.ttl:
            self.reload()

    def authenticate(self, header: str | None) -> str:
        """Return the team id, or raise AuthError (401 unknown credentials, 403 disabled team)."""
        if not header:
            raise AuthError(401, "missing_credentials", "Authorization header required (Bearer push key or Basic teamId:pushKey)")
        self._fresh()
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            team = self._by_hash.get(hash_key(value))
        elif scheme == "basic" and value:
            try:
                team_id, _, key = base64.b64decode(value, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError(401, "invalid_credentials", "malformed Basic credentials") from None
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
