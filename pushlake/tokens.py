"""OAuth2 client-credentials access tokens (RFC 6749 §4.4), self-contained and HMAC-signed.

A token carries the team, the time its keys were issued and its expiry, signed with a secret kept
in ``data/oauth.secret`` or, when the teams live in PostgreSQL, in its table ``oauth_secret`` (one
secret for every node: a token issued by one is accepted by all). Checking one needs no database
read, so every receiver process can do it on the hot path; disabling a team refuses its tokens
through the team's status, and enabling it again issues new keys (a new ``keys_issued_at``), which
voids every older token.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

import orjson

from pushlake.db import POSTGRESQL, Db, is_postgresql, open_db
from pushlake.location import catalog_url

PREFIX = "at_"

PG_SECRET = """
CREATE TABLE IF NOT EXISTS oauth_secret(one INTEGER PRIMARY KEY CHECK (one = 1), secret TEXT NOT NULL)
"""


def load_secret(data_dir: Path, db: Db | None = None) -> bytes:
    """The signing secret, made at the first call. ``db``: the admin stores' database (a
    PostgreSQL one holds the secret; with SQLite it is the file ``data/oauth.secret``); none: the
    deployment's (``pushlake.location``: a PostgreSQL catalog holds it, else the file)."""
    if db is None and is_postgresql(catalog_url()):
        own = open_db(catalog_url())
        try:
            return load_secret(data_dir, own)
        finally:
            own.close()
    if db is not None and db.dialect == POSTGRESQL:
        with db.schema_tx():  # first writer wins, every node reads back the same secret
            db.executescript(PG_SECRET)
            db.execute("INSERT INTO oauth_secret VALUES (1, ?) ON CONFLICT DO NOTHING", (secrets.token_hex(32),))
            return bytes.fromhex(db.execute("SELECT secret FROM oauth_secret").fetchone()[0])
    path = Path(data_dir) / "oauth.secret"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".oauth.secret.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # first writer wins if two processes race
    except FileExistsError:
        pass
    os.unlink(tmp)
    return bytes.fromhex(path.read_text().strip())


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def issue(secret: bytes, team: str, keys_issued_at: float, ttl: int) -> tuple[str, int]:
    payload = _b64(orjson.dumps({"t": team, "k": round(keys_issued_at, 6), "e": int(time.time()) + ttl}))
    sig = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    return f"{PREFIX}{payload}.{sig}", ttl


def check(secret: bytes, token: str) -> tuple[str, float] | None:
    """(team, keys_issued_at) of a valid, unexpired token; None otherwise."""
    if not token.startswith(PREFIX):
        return None
    payload, _, sig = token[len(PREFIX):].partition(".")
    good = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(good, sig):
        return None
    try:
        claims = orjson.loads(_unb64(payload))
    except (ValueError, orjson.JSONDecodeError):
        return None
    if claims.get("e", 0) <= time.time():
        return None
    return claims["t"], claims["k"]
