"""Teams and their keys (``data/admin.db``, or the PostgreSQL database every node shares:
``Teams(data_dir, url="postgresql://...")``; by default the deployment's, ``pushlake.location``). Keys are random tokens stored only as SHA-256
hashes; they are shown once, when created.

The same SQL runs on both (``pushlake.db``); on PostgreSQL pushlake creates the tables at the first
open (``PG_ADMIN_SCHEMA``, one process at a time) and every write of the admin stores (teams,
hyper-admins) bumps ``pushlake_admin_changes``, which ``changes()`` reads: the receivers' team caches
reload on a change of *these* stores, not at every commit of a catalog in the same database."""
from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pushlake.db import POSTGRESQL, Db, is_postgresql, open_db
from pushlake.location import catalog_url

# The whole id must match (``fullmatch``: ``$`` would let a final newline through). An id is a
# directory name in the lake (``team=<id>``): ASCII letters, digits, '_', '.', '-' only (no '/',
# '=', '%', no '.'/'..'), starting with a letter or digit and not ending with '.' (Windows and SMB
# drop a trailing dot, which would merge ``a.`` into ``a``). Ids that differ only by case are
# refused too (``create``): case-insensitive filesystems and object-store consoles merge them.
TEAM_ID = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9_-])?")
TEAM_ID_RULE = ("teamId must be 1-64 characters: ASCII letters, digits, '_', '.', '-', starting with a letter "
                "or digit and not ending with '.'")


def valid_team_id(team_id) -> bool:
    return isinstance(team_id, str) and TEAM_ID.fullmatch(team_id) is not None

SCHEMA = """
CREATE TABLE IF NOT EXISTS teams(
  team_id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at REAL NOT NULL,
  push_key_hash TEXT NOT NULL, admin_key_hash TEXT NOT NULL, keys_issued_at REAL NOT NULL);
"""


# PostgreSQL: REAL there is 4 bytes (SQLite's is 8), BLOB is BYTEA; ids compare and sort bytewise
# (COLLATE "C") as in SQLite
PG_ADMIN_SCHEMA = """
CREATE TABLE IF NOT EXISTS teams(
  team_id TEXT COLLATE "C" PRIMARY KEY, status TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  push_key_hash TEXT NOT NULL, admin_key_hash TEXT NOT NULL, keys_issued_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS hyperadmins(
  user_id TEXT COLLATE "C" PRIMARY KEY, firstname TEXT NOT NULL, lastname TEXT NOT NULL,
  salt BYTEA NOT NULL, pw_hash BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS pushlake_admin_changes(one INTEGER PRIMARY KEY CHECK (one = 1), n BIGINT NOT NULL);
INSERT INTO pushlake_admin_changes VALUES (1, 0) ON CONFLICT DO NOTHING;
"""

COLS = "team_id, status, created_at, push_key_hash, admin_key_hash, keys_issued_at"


def open_admin_db(data_dir: Path, url: str | None, sqlite_schema: str) -> Db:
    """The admin stores' database: ``<data>/admin.db`` (``sqlite_schema`` run on it, as always) or
    the PostgreSQL database at ``url`` (its tables created at the first open). ``url=None``: the
    deployment's catalog (``pushlake.location``); ``""``: admin.db whatever the environment says."""
    url = catalog_url(url)
    if url is not None and is_postgresql(url):
        db = open_db(url)
        with db.schema_tx():
            db.executescript(PG_ADMIN_SCHEMA)
        return db
    if url:
        open_db(url)  # raises: not a URL pushlake knows
    Path(data_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    db = open_db(Path(data_dir) / "admin.db")
    db.executescript(sqlite_schema)
    return db


@contextmanager
def write_tx(db: Db) -> Iterator[Db]:
    """A write transaction of the admin stores; on PostgreSQL it also counts the change."""
    with db.tx():
        if db.dialect == POSTGRESQL:
            db.execute("UPDATE pushlake_admin_changes SET n = n + 1")
        yield db


def admin_changes(db: Db) -> int:
    """Changes whenever any connection (process, node) commits to the admin stores."""
    if db.dialect == POSTGRESQL:
        return db.execute("SELECT n FROM pushlake_admin_changes").fetchone()[0]
    return db.changes()  # PRAGMA data_version of admin.db


class TeamError(Exception):
    """An administration request that cannot be done (teams and hyper-admins alike); ``status``
    is its HTTP answer."""
    status = 400


class Invalid(TeamError):
    status = 422


class Conflict(TeamError):
    status = 409


class QuotaExceeded(TeamError):
    status = 429


class NotFound(TeamError):
    status = 404


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class TeamRow:
    team_id: str
    status: str
    created_at: float
    push_key_hash: str
    admin_key_hash: str
    keys_issued_at: float

    @property
    def enabled(self) -> bool:
        return self.status == "ENABLED"

    def creation_date(self) -> str:
        return format_date(self.created_at)


def format_date(ts: float) -> str:
    """DriveQuant's ``yyyy-MM-dd'T'HH:mm:ss.SSSZ``."""
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}+0000"


class Teams:
    """``db`` is the ``pushlake.db.Db``; ``con`` is, on SQLite, the sqlite3 connection of admin.db
    and, on PostgreSQL, the ``Db`` itself (which executes the same ``?`` SQL)."""

    def __init__(self, data_dir: Path, url: str | None = None):
        self.db = open_admin_db(data_dir, url, SCHEMA)
        self.con = self.db if self.db.dialect == POSTGRESQL else self.db.con

    def close(self) -> None:
        self.db.close()

    def _new_keys(self) -> tuple[str, str]:
        return "pk_" + secrets.token_urlsafe(24), "ak_" + secrets.token_urlsafe(24)

    def create(self, team_id: str, quota: int | None = None) -> dict:
        if not valid_team_id(team_id):
            raise Invalid(TEAM_ID_RULE)
        push, admin = self._new_keys()
        now = time.time()
        # SQLite: BEGIN IMMEDIATE; PostgreSQL: the change counters' row locks. Either way two
        # processes cannot both pass the checks
        with write_tx(self.db):
            # ids are ASCII, so SQLite's lower() (ASCII-only) compares them case-insensitively
            same = self.db.execute("SELECT team_id FROM teams WHERE lower(team_id) = lower(?)", (team_id,)).fetchone()
            if same and same[0] == team_id:
                raise Conflict(f"team '{team_id}' already exists")
            if same:
                raise Conflict(f"team '{team_id}' differs from the existing team '{same[0]}' only by case "
                               "(they would share a directory on case-insensitive storage)")
            if quota is not None and self.db.execute("SELECT count(*) FROM teams").fetchone()[0] >= quota:
                raise QuotaExceeded(f"at most {quota} teams")
            try:
                self.db.execute("INSERT INTO teams VALUES (?,?,?,?,?,?)",
                                (team_id, "ENABLED", now, hash_key(push), hash_key(admin), now))
            except self.db.IntegrityError:
                raise Conflict(f"team '{team_id}' already exists") from None
        return {"teamId": team_id, "pushApiKey": push, "adminApiKey": admin}

    def get(self, team_id: str) -> TeamRow | None:
        r = self.db.execute(f"SELECT {COLS} FROM teams WHERE team_id = ?", (team_id,)).fetchone()
        return TeamRow(*r) if r else None

    def all(self) -> list[TeamRow]:
        return [TeamRow(*r) for r in self.db.execute(f"SELECT {COLS} FROM teams ORDER BY created_at, team_id")]

    def id_problems(self) -> list[str]:
        """Team ids an older release let in that the rules now refuse (a final newline, a final
        dot, case twins): they keep working, but their lake directories are unsafe, so they are
        reported (``serve`` logs them) for the operator to migrate."""
        out, seen = [], {}
        for r in self.all():
            if not valid_team_id(r.team_id):
                out.append(f"team id {r.team_id!r} does not follow the team id rules (an older release accepted it): "
                           "its lake directory may break reads of all teams")
            twin = seen.setdefault(r.team_id.lower(), r.team_id)
            if twin != r.team_id:
                out.append(f"team ids {twin!r} and {r.team_id!r} differ only by case: their lake directories merge "
                           "on case-insensitive storage")
        return out

    def changes(self) -> int:
        """Changes whenever another connection (process, node) commits to the admin stores
        (SQLite: ``PRAGMA data_version`` of admin.db; PostgreSQL: ``pushlake_admin_changes``)."""
        return admin_changes(self.db)

    data_version = changes  # its older name

    def set_status(self, team_id: str, status: str) -> dict:
        """Disabling revokes the keys at once; enabling again issues new keys (returned once)."""
        if status not in ("ENABLED", "DISABLED"):
            raise TeamError("status must be ENABLED or DISABLED")
        with write_tx(self.db):
            row = self.get(team_id)
            if row is None:
                raise NotFound(f"unknown team '{team_id}'")
            if row.status == status:
                raise Conflict(f"team '{team_id}' is already {status}")
            out: dict = {"status": status}
            if status == "DISABLED":
                # the hashes stay so that a revoked key is answered 403 (team disabled), not 401
                self.db.execute("UPDATE teams SET status='DISABLED' WHERE team_id=?", (team_id,))
            else:
                push, admin = self._new_keys()
                self.db.execute("UPDATE teams SET status='ENABLED', push_key_hash=?, admin_key_hash=?, keys_issued_at=? "
                                "WHERE team_id=?", (hash_key(push), hash_key(admin), time.time(), team_id))
                out.update(pushApiKey=push, adminApiKey=admin)
        return out
