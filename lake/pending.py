"""Deletions acknowledged but not yet compacted, on a lake whose catalog is SQLite.

A receiver must make a TRIP_DELETION visible to readers before its ``200``. Publishing it in the
catalog meant waiting for SQLite's single write lock, which the compactor holds for tens of
milliseconds at each commit: that wait was the deployed receiver's p99 (55-90 ms at max load, 11 ms
without it). So receivers publish into ``pending.db`` beside ``catalog.db``, a file the compactor
never locks for long, and readers read both.

- A row is a deletion a receiver acknowledged: (team, itin_id, part, offset, received_us). Its log
  record, fsynced before the insert, is the durable copy (inserts are not fsynced;
  ``ReceiverLake.republish_tombstones`` re-inserts the log tail's at start-up).
- Rows are appended (no unique key: a trip deleted twice has two rows, readers take the first by
  arrival), so that a commit writes the last pages of the table and of its ``(part, offset)``
  index, not a random leaf per deletion.
- A row is *covered* once the catalog's position of its partition has passed its offset: the
  compactor's step committed its tombstone into the catalog. The compactor then deletes covered
  rows (``prune``); readers ignore covered rows they still see.
- Readers read this file **before** the catalog: a row pruned after the read was covered by a
  commit, which their later catalog snapshot holds; a deletion acknowledged before the read is here
  or already covered.
- The WAL is checkpointed by SQLite after the commit that takes it past 4 MB (its default), by
  a receiver or the compactor: appended rows make that checkpoint small (the pages written since
  the last one; half-load p99 4-6 ms against 3.6-4.4 ms with none). Checkpoints every 64 MB cost
  14-20 ms, and none at all let the WAL grow by 200 MB in 18 s of deletions. Measured under
  ``pushlake serve`` at max load, the WAL stayed under 8 MB.

On PostgreSQL (row locks, several machines) receivers publish into the catalog as before.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Iterable, NamedTuple

from pushlake.sqlite import connect_sqlite, transaction

FILE = "pending.db"
SCHEMA = """
CREATE TABLE IF NOT EXISTS deletions(
  team TEXT NOT NULL, itin_id TEXT NOT NULL, part TEXT NOT NULL, "offset" INTEGER NOT NULL,
  received_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS deletions_at ON deletions(part, "offset");
"""
COLUMNS = 'team, itin_id, part, "offset", received_us'
WAL_LIMIT_BYTES = 16 << 20  # journal_size_limit: a WAL file larger is cut back when it starts over


class Pending(NamedTuple):
    team: str
    itin_id: str
    part: str
    offset: int
    received_us: int


class PendingDeletions:
    """``pending.db`` of a data directory. ``writer``: a receiver or a compactor (creates the file
    at once, so that it exists wherever a catalog does); otherwise it is opened read-only at once if
    it exists (a query process opens its files before its sandbox forbids writes, which SQLite's
    shared-memory file of a WAL database needs), else at the first use after it appears."""

    def __init__(self, data_dir: Path, writer: bool = False):
        self.path = Path(data_dir) / FILE
        self.writer = writer
        self._con: sqlite3.Connection | None = None
        self._connect()

    def _connect(self) -> sqlite3.Connection | None:
        if self._con is None and (self.writer or self.path.exists()):
            con = connect_sqlite(self.path, readonly=not self.writer)
            if self.writer:
                # not fsynced at commit: the log record is the durable copy (see the module's doc)
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
                con.executescript(SCHEMA)
            self._con = con
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def add_tombstones(self, rows: Iterable[tuple]) -> None:
        """Publish deletions, (team, itin_id, part, offset, received_us) rows: what a receiver does
        before its acks (``Catalog.add_tombstones``'s twin)."""
        con = self._connect()
        with transaction(con):
            con.executemany(f"INSERT INTO deletions({COLUMNS}) VALUES (?,?,?,?,?)", rows)

    def _select(self, where: str = "", args: tuple = ()) -> list[Pending]:
        con = self._connect()
        if con is None:
            return []
        return list(map(Pending._make, con.execute(f"SELECT {COLUMNS} FROM deletions {where}", args)))

    def acknowledged(self, team: str | None = None) -> list[tuple[str, str, str, int]]:
        """(team, itin_id, part, offset) of every row, in the order they were added: what readers
        need, as plain tuples (100,000 rows: 75 ms, against 0.35 s as ``Pending``s)."""
        con = self._connect()
        if con is None:
            return []
        q = 'SELECT team, itin_id, part, "offset" FROM deletions'
        return (con.execute(q + " WHERE team = ? ORDER BY rowid", (team,)) if team
                else con.execute(q + " ORDER BY rowid")).fetchall()

    def rows(self, team: str | None = None) -> list[Pending]:
        return self._select("WHERE team = ?", (team,)) if team else self._select()

    def among(self, team: str, itins: Iterable[str]) -> list[Pending]:
        """The rows of these trips of ``team``: one pass over the table (the uncompacted tail),
        matched in SQLite against the list given as one JSON array."""
        wanted = sorted(set(itins))
        if not wanted:
            return []
        return self._select("WHERE team = ? AND itin_id IN (SELECT value FROM json_each(?))", (team, json.dumps(wanted)))

    def received_since(self, since_us: int) -> list[Pending]:
        return self._select("WHERE received_us > ?", (since_us,))

    def count_uncovered(self, positions: dict[str, int]) -> int:
        con = self._connect()
        if con is None:
            return 0
        parts = [p for (p,) in con.execute("SELECT DISTINCT part FROM deletions")]
        return sum(con.execute('SELECT count(*) FROM deletions WHERE part = ? AND "offset" >= ?',
                               (p, positions.get(p, 0))).fetchone()[0] for p in sorted(parts))

    def prune(self, positions: dict[str, int]) -> int:
        """Delete the rows the catalog covers (its positions, as committed); returns how many."""
        con = self._connect()
        n = 0
        with transaction(con):
            for part, next_offset in sorted(positions.items()):
                n += con.execute('DELETE FROM deletions WHERE part = ? AND "offset" < ?', (part, next_offset)).rowcount
        return n

    def changes(self) -> int:
        """``PRAGMA data_version``: moves when a receiver or the compactor committed (0: no file)."""
        con = self._connect()
        return 0 if con is None else con.execute("PRAGMA data_version").fetchone()[0]


def uncovered(rows: list, positions: dict[str, int]) -> list:
    """The rows whose tombstone the catalog (at these positions) does not hold yet: ``Pending``s,
    or ``acknowledged``'s tuples (team, itin_id, part, offset)."""
    return [r for r in rows if r[3] >= positions.get(r[2], 0)]
