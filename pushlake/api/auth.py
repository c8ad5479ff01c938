"""Who may read: a team's admin key (its own data) or a hyper-admin (every team).

The admin plane's authentication, above the receiver: it reads the receiver's team cache
(``ingest.auth.PushAuth``, reloaded within 10 ms of a change) and the hyper-admins' store. A
hyper-admin's password is checked with scrypt, which is slow on purpose: ``reader`` raises
``PasswordCheck`` for credentials not checked recently, the caller runs the check where it can wait
(``pushlake.api.reads``: its own thread, bounded, with back-off) and hands the answer to
``remember``. Checked logins are kept for 5 minutes, and dropped at any change of teams or
hyper-admins (a deleted hyper-admin is refused at once).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ingest.auth import AuthError, PushAuth, basic_credentials, split_authorization
from pushlake.hyperadmins import HyperAdmins

LOGIN_TTL_S = 300.0


@dataclass(frozen=True)
class Principal:
    """A reader: a team (sees its own data) or a hyper-admin (sees every team)."""
    kind: str          # "team" | "hyperadmin"
    name: str

    @property
    def team(self) -> str | None:
        return self.name if self.kind == "team" else None


class PasswordCheck(Exception):
    """Hyper-admin credentials that need the (slow, scrypt) password check."""

    def __init__(self, user: str, password: str, digest: str, generation: int):
        super().__init__(user)
        self.user, self.password, self.digest = user, password, digest
        self.generation = generation  # of the team cache when the check began


class ReaderAuth:
    def __init__(self, teams: PushAuth, data_dir: Path):
        self.teams = teams
        self.admins = HyperAdmins(data_dir)
        self._verified: dict[str, tuple[str, float]] = {}   # digest of Basic credentials -> (user, until)
        self._generation = teams.generation

    def close(self) -> None:
        self.admins.close()

    def reader(self, header: str | None) -> Principal:
        """A team's admin key (Bearer) or a hyper-admin's Basic userId:password."""
        if not header:
            raise AuthError(401, "missing_credentials", "Authorization required: Bearer adminApiKey or Basic hyper-admin credentials")
        scheme, value = split_authorization(header)
        if scheme == "bearer":
            team = self.teams.by_admin_key(value)
            if team is None:
                raise self.teams.unknown(AuthError(401, "invalid_credentials", "unknown or revoked admin key"))
            if not team.enabled:
                raise AuthError(403, "team_disabled", f"team '{team.team_id}' is disabled")
            return Principal("team", team.team_id)
        if scheme == "basic":
            user, password = basic_credentials(value)
            digest = hashlib.sha256(value.encode()).hexdigest()
            generation = self.teams.current_generation()  # a change of teams or hyper-admins drops the logins
            if generation != self._generation:
                self._verified.clear()
                self._generation = generation
            hit = self._verified.get(digest)
            if hit is None or hit[1] < time.monotonic():
                raise PasswordCheck(user, password, digest, generation)
            return Principal("hyperadmin", user)
        raise AuthError(401, "invalid_credentials", "unsupported Authorization scheme (use Bearer or Basic)")

    def remember(self, check: PasswordCheck, ok: bool) -> Principal:
        if not ok:
            raise AuthError(401, "invalid_credentials", "unknown hyper-admin or wrong password")
        if check.generation == self.teams.current_generation():
            # not when hyper-admins changed while scrypt ran: a deleted one must not be remembered
            self._verified[check.digest] = (check.user, time.monotonic() + LOGIN_TTL_S)
        return Principal("hyperadmin", check.user)


READERS = web.AppKey("readers", ReaderAuth)


def setup(app: web.Application) -> None:
    from ingest.app import AUTH, SETTINGS
    app[READERS] = ReaderAuth(app[AUTH], app[SETTINGS].data_dir)

    async def close(app: web.Application) -> None:
        app[READERS].close()
    app.on_cleanup.append(close)
