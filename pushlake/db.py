"""One small interface over the two databases a pushlake store can live in: SQLite (the embedded
default, opened as ``pushlake.sqlite`` opens it) and PostgreSQL (psycopg 3, for several machines).

pushlake's SQL is written once, with ``?`` placeholders, in the dialect both accept (``INSERT ...
ON CONFLICT``, ``RETURNING``, the column ``"offset"`` quoted); ``Db`` translates the placeholders
to psycopg's ``%s``. What differs (DDL, a few expressions) is chosen by ``Db.dialect``.

- ``execute(sql, params) -> cursor`` and ``executemany(sql, rows)``; rows come back as tuples.
- ``tx()``: a write transaction. SQLite: BEGIN IMMEDIATE (one writer at a time), as
  ``pushlake.sqlite.transaction``. PostgreSQL: BEGIN, then the first statement bumps the change
  counter, whose row lock also makes write transactions take turns as SQLite's do (so ids handed
  out inside a transaction, snapshot ids among them, are in commit order); ROLLBACK on any error.
- ``read()``: a read transaction: several statements see one snapshot (PostgreSQL: REPEATABLE READ).
- ``changes() -> int``: cheap, per statement, "did anything change since I last looked".
  SQLite: ``PRAGMA data_version``; PostgreSQL: the one-row counter every ``tx()`` bumps.
- ``IntegrityError``: the exceptions a violated constraint raises (``except db.IntegrityError:``):
  sqlite3's, or psycopg's (``UniqueViolation`` among them).
- ``Unavailable``: the exceptions of a database that cannot be reached (psycopg's
  ``OperationalError``; none on SQLite, a local file). A PostgreSQL connection that broke is
  replaced at the next statement outside a transaction (and a transaction or ``changes()`` that
  finds it broken begins again on a new one), so a store survives an outage of the server: its
  calls fail while the server is away and work again when it is back.

The lowest layer (see docs/architecture.md): it imports nothing of pushlake's but ``pushlake.sqlite``.
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from pushlake.sqlite import connect_sqlite, transaction

SQLITE, POSTGRESQL = "sqlite", "postgresql"
PG_SCHEMES = ("postgresql://", "postgres://")

# the change counter of a PostgreSQL database (one per database, shared by every store in it)
PG_COUNTER = """
CREATE TABLE IF NOT EXISTS pushlake_changes(one INTEGER PRIMARY KEY CHECK (one = 1), n BIGINT NOT NULL);
INSERT INTO pushlake_changes VALUES (1, 0) ON CONFLICT DO NOTHING;
"""
# libpq options unless the URL sets them: a server that vanished (host down, network cut) is
# found out in about half a minute instead of the kernel's quarter of an hour
PG_CONNECT = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3, "tcp_user_timeout": 30_000}
PG_SCHEMA_LOCK = 0x7075_7368  # pg_advisory_xact_lock key: one process at a time creates or migrates


def is_postgresql(url: str | None) -> bool:
    return bool(url) and url.startswith(PG_SCHEMES)


def check_url(url: str) -> None:
    """ValueError unless ``url`` is a database URL pushlake knows (the message shows no password)."""
    if not is_postgresql(url):
        raise ValueError(f"unsupported catalog URL {redact(url)!r}: postgresql://user@host:port/db")


def open_db(target: str | Path, readonly: bool = False) -> "Db":
    """A PostgreSQL URL (``postgresql://user@host:port/db``) or the path of a SQLite file."""
    if isinstance(target, str) and is_postgresql(target):
        return PostgresDb(target, readonly)
    if isinstance(target, str) and "://" in target:
        check_url(target)
    return SqliteDb(Path(target), readonly)


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    cred, _, host = rest.rpartition("@")
    return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url


class Db:
    dialect: str
    readonly: bool
    IntegrityError: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)
    Unavailable: tuple[type[Exception], ...] = ()

    def execute(self, sql: str, params: Iterable[Any] = ()) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        raise NotImplementedError

    def executescript(self, script: str) -> None:
        """DDL: statements separated by ``;`` (no parameters)."""
        raise NotImplementedError

    def tx(self):
        raise NotImplementedError

    def read(self):
        raise NotImplementedError

    def changes(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class SqliteDb(Db):
    """SQLite as ``pushlake.sqlite`` opens it; ``con`` is the sqlite3 connection itself."""
    dialect = SQLITE

    def __init__(self, path: Path, readonly: bool = False):
        self.path, self.readonly = path, readonly
        self.con: sqlite3.Connection = connect_sqlite(path, readonly)
        # straight to sqlite3: no wrapper call per statement on the embedded default
        self.execute = self.con.execute
        self.executemany = self.con.executemany
        self.executescript = self.con.executescript

    def tx(self):
        return transaction(self.con)

    @contextmanager
    def read(self) -> Iterator["SqliteDb"]:
        self.con.execute("BEGIN")
        try:
            yield self
        finally:
            self.con.execute("COMMIT")

    def changes(self) -> int:
        return self.con.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        self.con.close()


_SQL: dict[str, str] = {}


def pg_sql(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (pushlake's SQL holds no literal ``?`` nor ``%``)."""
    out = _SQL.get(sql)
    if out is None:
        assert "%" not in sql, f"a literal % in SQL meant for psycopg: {sql!r}"
        out = _SQL[sql] = sql.replace("?", "%s")
    return out


class PostgresDb(Db):
    """psycopg 3, one autocommit connection with explicit transactions.

    A connection the server or the network broke (``closed``) is replaced by a new one at the
    next statement or transaction begun outside a transaction: the stores a long-lived process
    holds (the receiver's team cache and tombstone sink, the compactor's catalog) work again
    when PostgreSQL is back, without being reopened. Inside a transaction a broken connection
    stays an error: the transaction is lost, and its caller must see it."""
    dialect = POSTGRESQL

    def __init__(self, url: str, readonly: bool = False):
        import psycopg

        self.url, self.readonly = url, readonly
        self._psycopg = psycopg
        self.IntegrityError = (psycopg.IntegrityError,)
        self.Unavailable = (psycopg.OperationalError, psycopg.InterfaceError)
        self._depth = 0  # transactions of ours open on the connection (0 or 1)
        self._closed_by_us = False
        self.con = self._connect()
        if not readonly:
            with self.schema_tx():
                self.executescript(PG_COUNTER)

    def _connect(self):
        con = self._psycopg.connect(self.url, autocommit=True, application_name=_app_name(),
                                    **{k: v for k, v in PG_CONNECT.items() if k not in self.url})
        if self.readonly:
            con.execute("SET default_transaction_read_only = on")
        return con

    def _live(self):
        """The connection, a new one if the last one broke (outside a transaction only)."""
        con = self.con
        if con.closed and not self._depth and not self._closed_by_us:
            self.con = con = self._connect()
        return con

    def execute(self, sql: str, params: Iterable[Any] = ()):
        return self._live().execute(pg_sql(sql), tuple(params) if params else None)

    def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        with self._live().cursor() as cur:
            cur.executemany(pg_sql(sql), rows)

    def executescript(self, script: str) -> None:
        con = self._live()
        for stmt in _statements(script):
            con.execute(stmt)

    def _in_tx(self) -> bool:
        return self.con.info.transaction_status != self._psycopg.pq.TransactionStatus.IDLE

    def _begin(self, begin: str) -> None:
        """BEGIN, on a new connection if the one we had broke unnoticed while idle (the server
        restarted, the network cut it): nothing was done on it yet, so beginning again is safe."""
        try:
            self._live().execute(begin)
        except self.Unavailable:
            if not self.con.closed or self._closed_by_us:
                raise
            self._live().execute(begin)

    @contextmanager
    def _transaction(self, begin: str, first: str | None = None) -> Iterator["PostgresDb"]:
        self._begin(begin)
        self._depth += 1
        try:
            try:
                if first:
                    self.con.execute(first)
                yield self
            except BaseException:
                if not self.con.closed and self._in_tx():
                    self.con.execute("ROLLBACK")
                raise
            try:
                self.con.execute("COMMIT")
            except BaseException:
                if not self.con.closed and self._in_tx():
                    self.con.execute("ROLLBACK")  # nothing of it is committed: callers may undo their files
                raise
        finally:
            self._depth -= 1

    def tx(self):
        return self._transaction("BEGIN", "UPDATE pushlake_changes SET n = n + 1")

    def schema_tx(self):
        """A transaction for DDL, one process at a time (concurrent CREATE ... IF NOT EXISTS of
        one table can fail in PostgreSQL)."""
        return self._transaction("BEGIN", f"SELECT pg_advisory_xact_lock({PG_SCHEMA_LOCK})")

    def read(self):
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def changes(self) -> int:
        try:
            return self._live().execute("SELECT n FROM pushlake_changes").fetchone()[0]
        except self.Unavailable:
            if not self.con.closed or self._closed_by_us:
                raise
            return self._live().execute("SELECT n FROM pushlake_changes").fetchone()[0]  # a read: safe to redo

    def close(self) -> None:
        self._closed_by_us = True
        self.con.close()


def _statements(script: str) -> list[str]:
    lines = [ln.split("--", 1)[0] for ln in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _app_name() -> str:
    return f"pushlake-{os.getpid()}"
