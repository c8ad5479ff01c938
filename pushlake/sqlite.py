"""SQLite as every pushlake store opens it (the catalog, ``admin.db``): WAL, full fsync at
commit, secure delete, owner-only files, and one transaction helper.

The lowest layer (see docs/architecture.md): it imports nothing of pushlake's.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def connect_sqlite(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None,
                              check_same_thread=False)
    else:
        # created owner-only before SQLite opens it: it gives its -wal and -shm files the mode of
        # the database file (catalog.db and admin.db hold every team's data and keys)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA secure_delete=ON")  # erased keys do not linger in free pages
    con.execute("PRAGMA busy_timeout=30000")
    return con


class transaction:
    """``with transaction(con):`` BEGIN IMMEDIATE, then COMMIT, or ROLLBACK on any error (a failed
    COMMIT included, so that nothing of it stays half-applied). Used by every SQLite store."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self):
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, et, e, tb):
        if et is not None:
            self.con.execute("ROLLBACK")
            return False
        try:
            self.con.execute("COMMIT")
        except BaseException:
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")  # nothing of it is committed: callers may undo their files
            raise
        return False
