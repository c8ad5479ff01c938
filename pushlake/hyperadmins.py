"""Hyper-admins: accounts that may read every team. Passwords are stored with scrypt (salted,
deliberately slow) and checked against DriveQuant's documented policy. They live beside the teams:
``data/admin.db``, or the PostgreSQL database every node shares (``HyperAdmins(data_dir,
url="postgresql://...")``, see ``pushlake.teams``)."""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from pathlib import Path
from typing import Callable

from pushlake.db import POSTGRESQL

from .teams import Conflict, Invalid, NotFound, QuotaExceeded, format_date, open_admin_db, write_tx

SCHEMA = """
CREATE TABLE IF NOT EXISTS hyperadmins(
  user_id TEXT PRIMARY KEY, firstname TEXT NOT NULL, lastname TEXT NOT NULL,
  salt BLOB NOT NULL, pw_hash BLOB NOT NULL, created_at REAL NOT NULL);
"""

# the documented class: ' -_' is the range space..underscore. Matched with ``fullmatch`` (``$``
# would let a final newline through)
NAME = re.compile(r"[A-Za-z0-9 -_]+")
SPECIALS = "!@#$%^?=+_-"
POLICY: list[tuple[str, Callable[[str], object]]] = [
    ("at least 12 characters", lambda pw: len(pw) >= 12),
    ("at least one lowercase letter", re.compile(r"[a-z]").search),
    ("at least one uppercase letter", re.compile(r"[A-Z]").search),
    ("at least one digit", re.compile(r"[0-9]").search),  # not \d, which takes any Unicode digit
    (f"at least one special character among {SPECIALS}", re.compile(r"[!@#$%^?=+_-]").search),
]
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "dklen": 32}


def password_problems(password: str) -> list[str]:
    return [rule for rule, passes in POLICY if not passes(password)]


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, maxmem=64 << 20, **SCRYPT)


class HyperAdmins:
    def __init__(self, data_dir: Path, quota: int = 10, url: str | None = None):
        self.db = open_admin_db(data_dir, url, SCHEMA)
        self.con = self.db if self.db.dialect == POSTGRESQL else self.db.con
        self.quota = quota
        self._lock = threading.Lock()

    def close(self) -> None:
        self.db.close()

    def create(self, user_id, firstname, lastname, password) -> dict:
        for field, v in (("userId", user_id), ("firstname", firstname), ("lastname", lastname)):
            if not isinstance(v, str) or not NAME.fullmatch(v) or len(v) > 128:
                raise Invalid(f"{field} is required and must match {NAME.pattern} (at most 128 characters)")
        if ":" in user_id:
            raise Invalid("userId cannot contain ':' (it separates user and password in Basic credentials)")
        if not isinstance(password, str):
            raise Invalid("password is required")
        problems = password_problems(password)
        if problems:
            raise Invalid("password needs " + ", ".join(problems))
        salt = secrets.token_bytes(16)
        pw = _hash(password, salt)
        now = time.time()
        with write_tx(self.db):
            if self.db.execute("SELECT count(*) FROM hyperadmins").fetchone()[0] >= self.quota:
                raise QuotaExceeded(f"at most {self.quota} hyper-admins")
            try:
                self.db.execute("INSERT INTO hyperadmins VALUES (?,?,?,?,?,?)",
                                (user_id, firstname, lastname, salt, pw, now))
            except self.db.IntegrityError:
                raise Conflict(f"hyper-admin '{user_id}' already exists") from None
        return {"userId": user_id, "firstname": firstname, "lastname": lastname}

    def list(self) -> list[dict]:
        return [{"userId": u, "firstname": f, "lastname": l, "creationDate": format_date(c)}
                for u, f, l, c in self.db.execute(
                    "SELECT user_id, firstname, lastname, created_at FROM hyperadmins ORDER BY created_at, user_id")]

    def delete(self, user_id: str) -> None:
        with write_tx(self.db):
            if self.db.execute("DELETE FROM hyperadmins WHERE user_id = ?", (user_id,)).rowcount == 0:
                raise NotFound(f"unknown hyper-admin '{user_id}'")

    def verify(self, user_id: str, password: str) -> bool:
        with self._lock:  # called from worker threads; the connection is not shared concurrently
            row = self.db.execute("SELECT salt, pw_hash FROM hyperadmins WHERE user_id = ?", (user_id,)).fetchone()
        if row is None:
            _hash(password, b"0" * 16)  # same cost whether or not the user exists
            return False
        return hmac.compare_digest(_hash(password, bytes(row[0])), bytes(row[1]))
