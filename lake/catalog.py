"""The catalog: snapshots, live files, key index, tombstones, FAILED items and log positions.

SQLite in WAL mode for the embedded default. Everything a compaction changes is committed in
one transaction (files swapped, positions advanced, tombstones marked applied), so a reader sees
either the old lake or the new one, and a crash never loses or doubles a record. The public
methods are the interface a PostgreSQL implementation will provide too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from ingest.record import Kind
from pushlake.sqlite import connect_sqlite, transaction

from .schema import TRIP_TABLES

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots(
  id INTEGER PRIMARY KEY, created_at REAL NOT NULL, operation TEXT NOT NULL, summary TEXT);
CREATE TABLE IF NOT EXISTS files(
  id INTEGER PRIMARY KEY, tbl TEXT NOT NULL, team TEXT NOT NULL, date TEXT NOT NULL,
  path TEXT NOT NULL UNIQUE, rows INTEGER NOT NULL, bytes INTEGER NOT NULL,
  added_snapshot INTEGER NOT NULL, removed_snapshot INTEGER, removed_at REAL);
CREATE INDEX IF NOT EXISTS files_live ON files(tbl, team, date) WHERE removed_snapshot IS NULL;
CREATE TABLE IF NOT EXISTS versions(
  kind INTEGER NOT NULL, team TEXT NOT NULL, key TEXT NOT NULL, received_us INTEGER NOT NULL,
  part TEXT NOT NULL, offset INTEGER NOT NULL, body_sha256 TEXT NOT NULL,
  date TEXT NOT NULL,  -- the partition holding its rows: where copy-on-write looks for them
  PRIMARY KEY(kind, team, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positions(part TEXT PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones(
  team TEXT NOT NULL, itin_id TEXT NOT NULL, part TEXT, offset INTEGER, received_us INTEGER NOT NULL,
  applied_at REAL, log_cleaned INTEGER NOT NULL DEFAULT 0,
  date TEXT,  -- while pending: the partition holding the trip's rows (versions.date), NULL if none
  PRIMARY KEY(team, itin_id)) WITHOUT ROWID;
-- readers scan the pending tombstones with their partitions from this index alone (team is in
-- the key; applied_at is listed so that SQLite sees the index covers the query)
CREATE INDEX IF NOT EXISTS tombstones_pending_at ON tombstones(itin_id, date, applied_at) WHERE applied_at IS NULL;
CREATE TABLE IF NOT EXISTS failed(
  id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, team TEXT NOT NULL, key TEXT NOT NULL,
  part TEXT NOT NULL, offset INTEGER NOT NULL, received_us INTEGER NOT NULL, reason TEXT NOT NULL,
  status TEXT NOT NULL, failed_at REAL NOT NULL, UNIQUE(part, offset));
CREATE INDEX IF NOT EXISTS failed_status ON failed(status, kind);
-- the FAILED items of a key, found when a newer push or a deletion settles them
CREATE INDEX IF NOT EXISTS failed_key ON failed(kind, team, key) WHERE status = 'FAILED';
-- exact push counts per receive day, team and kind, committed with the records they count
CREATE TABLE IF NOT EXISTS push_stats(
  day TEXT NOT NULL, team TEXT NOT NULL, kind INTEGER NOT NULL, received INTEGER NOT NULL DEFAULT 0,
  stored INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
  discarded INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(day, team, kind)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tasks(
  task_id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL, created_at REAL NOT NULL,
  completed_at REAL, nb_items INTEGER NOT NULL, nb_remaining INTEGER NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS task_items(
  task_id TEXT NOT NULL, failed_id INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY(task_id, failed_id)) WITHOUT ROWID;
"""
STAT_FIELDS = ("received", "stored", "duplicates", "discarded", "deleted")

LIVE = "removed_snapshot IS NULL"
FILE_COLUMNS = "id, tbl, team, date, path, rows, bytes"  # a FileRow


class Order(NamedTuple):
    """Where a push is in the log, which is also the order in which pushes of a key win: the
    latest push wins by (received_us, partition, offset)."""
    received_us: int
    part: str
    offset: int


class Version(NamedTuple):
    """The version of a key stored in the lake: its push, its body's hash (a re-push of the same
    body is a duplicate) and the date partition its rows are in (which never changes)."""
    order: Order
    sha256: str
    date: str


# The rows a commit writes and the catalog returns: named tuples, so that they are read by name
# and still go to sqlite3's executemany as they are (the field order is the statements' order).

class Key(NamedTuple):
    """A push's idempotency key within its kind and team (a row of ``Commit.drop_versions``)."""
    kind: int
    team: str
    key: str


class TripRef(NamedTuple):
    """A trip of a team (``Commit.applied``, ``Commit.reclean``, ``tombstones_to_clean``)."""
    team: str
    itin: str


class LogRef(NamedTuple):
    """A record of the log, by partition and offset (``Commit.superseded``)."""
    part: str
    offset: int


class VersionRow(NamedTuple):
    """A row of ``versions``: the version of a key the commit stores."""
    kind: int
    team: str
    key: str
    received_us: int
    part: str
    offset: int
    body_sha256: str
    date: str          # the partition holding its rows


class TombstoneRow(NamedTuple):
    """A trip's deletion: where its TRIP_DELETION is in the log."""
    team: str
    itin_id: str
    part: str
    offset: int
    received_us: int


class FailedRow(NamedTuple):
    """A push that could not be projected, with the reason (stored as a FAILED item)."""
    kind: int
    team: str
    key: str
    part: str
    offset: int
    received_us: int
    reason: str


class ResolvedRow(NamedTuple):
    """A key's good push: its FAILED items received up to ``received_us`` are RESOLVED."""
    kind: int
    team: str
    key: str
    received_us: int


class StatKey(NamedTuple):
    """What push counters are kept per: receive day, team and kind."""
    day: str
    team: str
    kind: int


class TaskDone(NamedTuple):
    """A retry task's items that a commit completes."""
    task_id: str
    failed_ids: list[int]


class FileRow(NamedTuple):
    """A file of the lake, as the catalog lists it."""
    id: int
    tbl: str
    team: str
    date: str
    path: str          # relative to the data directory
    rows: int
    bytes: int


class FileRef(NamedTuple):
    """A removed file, by id and path (``expired_files``)."""
    id: int
    path: str


class FailedItem(NamedTuple):
    """A row of ``failed``: a quarantined push and what became of it."""
    id: int
    kind: int
    team: str
    key: str
    part: str
    offset: int
    received_us: int
    reason: str
    status: str        # FAILED, RESOLVED, SUPERSEDED, DELETED or ERASED
    failed_at: float


class TaskRow(NamedTuple):
    """A retry task (``get_task``)."""
    task_id: str
    type: str
    status: str
    created_at: float
    completed_at: float | None
    nb_items: int
    nb_remaining: int


class NextTask(NamedTuple):
    """The oldest unfinished retry task and the kind of push it retries."""
    task_id: str
    kind: Kind


class TaskItem(NamedTuple):
    """An unfinished item of a task: the FAILED item's id, where its record is, its status now."""
    failed_id: int
    part: str
    offset: int
    status: str


class ReadState(NamedTuple):
    """What a reader needs of one snapshot (``read_state``)."""
    snapshot: int
    files: list[FileRow]
    tombstones: list[TripRef]        # pending
    dirty: set[int]                  # ids of live trip files in a partition with a pending tombstone


@dataclass
class NewFile:
    tbl: str
    team: str
    date: str
    path: str          # relative to the data directory
    rows: int
    bytes: int


@dataclass
class Commit:
    """Everything one compaction step changes, applied atomically by ``Catalog.commit``."""
    operation: str
    positions: dict[str, int] = field(default_factory=dict)
    add_files: list[NewFile] = field(default_factory=list)
    remove_files: set[int] = field(default_factory=set)
    versions: list[VersionRow] = field(default_factory=list)
    drop_versions: list[Key] = field(default_factory=list)
    tombstones: list[TombstoneRow] = field(default_factory=list)
    applied: list[TripRef] = field(default_factory=list)                 # tombstones now applied
    failed: list[FailedRow] = field(default_factory=list)
    resolved: list[ResolvedRow] = field(default_factory=list)
    superseded: list[LogRef] = field(default_factory=list)               # FAILED items now stale
    reclean: set[TripRef] = field(default_factory=set)                   # deleted trips pushed again
    stats: dict[StatKey, list[int]] = field(default_factory=dict)        # -> counts, in STAT_FIELDS order
    task: TaskDone | None = None                                         # retry task, items done
    summary: str = ""
    removed_paths: list[str] = field(default_factory=list)  # filled by the commit: paths of remove_files


class Catalog:
    def __init__(self, data_dir: Path, readonly: bool = False):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "catalog.db"
        if not readonly:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.con = connect_sqlite(self.path, readonly)
        if not readonly:
            self._migrate()
            self.con.executescript(SCHEMA)
        elif "date" not in self._tombstone_columns():
            Catalog(self.data_dir).close()  # an older catalog, not opened by a writer since: migrate it

    def _tombstone_columns(self) -> set[str]:
        return {r[1] for r in self.con.execute("PRAGMA table_info(tombstones)")}

    def _migrate(self) -> None:
        """Catalogs made before tombstones carried their trip's partition get the column, filled
        from the key index for the pending ones (SCHEMA, run next, creates the new index)."""
        cols = self._tombstone_columns()
        if cols and "date" not in cols:
            with self._tx():
                self.con.execute("DROP INDEX IF EXISTS tombstones_pending")
                self.con.execute("ALTER TABLE tombstones ADD COLUMN date TEXT")
                self.con.execute("UPDATE tombstones SET date = (SELECT v.date FROM versions v WHERE v.kind = ? "
                                 "AND v.team = tombstones.team AND v.key = tombstones.itin_id) WHERE applied_at IS NULL",
                                 (Kind.TRIP,))

    def close(self) -> None:
        self.con.close()

    # -- receiver side ------------------------------------------------------------------------
    def add_tombstones(self, rows: Iterable[TombstoneRow]) -> None:
        """Make deletions visible to readers (called by the receiver before it acknowledges)."""
        with self._tx():
            # the trip's partition is recorded with the tombstone, so readers find the files to
            # filter without a join (Catalog.commit keeps it current if a racing step moves the trip)
            self.con.executemany(
                "INSERT OR IGNORE INTO tombstones(team, itin_id, part, offset, received_us, date) "
                "VALUES (?,?,?,?,?, (SELECT date FROM versions WHERE kind = ? AND team = ? AND key = ?))",
                [(*r, Kind.TRIP, r.team, r.itin_id) for r in map(TombstoneRow._make, rows)])

    # -- reader side --------------------------------------------------------------------------
    def data_version(self) -> int:
        return self.con.execute("PRAGMA data_version").fetchone()[0]

    def read_state(self, team: str | None = None) -> ReadState:
        """The snapshot id, its live files, the pending tombstones and the ids of live trip files
        in a partition that holds a trip with a pending tombstone, all read in one transaction."""
        c = self.con
        tf, args = ("AND team = ?", (team,)) if team else ("", ())
        c.execute("BEGIN")
        try:
            snap = c.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0]
            files = list(map(FileRow._make, c.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE {LIVE} {tf}", args)))
            tombs = list(map(TripRef._make, c.execute(f"SELECT team, itin_id FROM tombstones WHERE applied_at IS NULL {tf}",
                                                      args)))
            parts = set(c.execute("SELECT DISTINCT team, date FROM tombstones WHERE applied_at IS NULL "
                                  f"AND date IS NOT NULL {tf}", args)) if tombs else set()
        finally:
            c.execute("COMMIT")
        dirty = {f.id for f in files if f.tbl in TRIP_TABLES and (f.team, f.date) in parts} if parts else set()
        return ReadState(snap, files, tombs, dirty)

    # -- compactor side -----------------------------------------------------------------------
    def positions(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT part, next_offset FROM positions"))

    def versions_of(self, kind: int, team: str, keys: list[str]) -> dict[str, Version]:
        """key -> the version of that key in the lake, for the keys that have one."""
        out = {}
        for chunk in _chunks(keys, 500):
            q = ("SELECT key, received_us, part, offset, body_sha256, date FROM versions WHERE kind=? AND team=? "
                 f"AND key IN ({','.join('?' * len(chunk))})")
            for k, ts, part, off, h, d in self.con.execute(q, (kind, team, *chunk)):
                out[k] = Version(Order(ts, part, off), h, d)
        return out

    def deleted_among(self, team: str, itins: list[str]) -> dict[str, Order]:
        """itin_id -> where its deletion is in the log, for those deleted."""
        out = {}
        for chunk in _chunks(itins, 500):
            q = f"SELECT itin_id, received_us, part, offset FROM tombstones WHERE team=? AND itin_id IN ({','.join('?' * len(chunk))})"
            out.update((itin, Order(ts, part, off)) for itin, ts, part, off in self.con.execute(q, (team, *chunk)))
        return out

    def partition_files(self, tables: tuple[str, ...], team: str, date: str) -> list[FileRow]:
        """The live files of these tables in one partition."""
        tq = ",".join("?" * len(tables))
        return list(map(FileRow._make, self.con.execute(
            f"SELECT {FILE_COLUMNS} FROM files WHERE {LIVE} AND team = ? AND date = ? AND tbl IN ({tq})",
            (team, date, *tables))))

    def live_files(self, tbl: str | None = None) -> list[FileRow]:
        q = f"SELECT {FILE_COLUMNS} FROM files WHERE {LIVE}"
        if tbl:
            return list(map(FileRow._make, self.con.execute(q + " AND tbl = ?", (tbl,))))
        return list(map(FileRow._make, self.con.execute(q)))

    def all_paths(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT path FROM files")}

    def commit(self, c: Commit) -> int:
        now = time.time()
        con = self.con
        # rows in key order: consecutive statements touch neighbouring B-tree pages (a batch of
        # 100,000 deletions in arrival order touched a random page each)
        c.versions.sort(key=lambda v: (v.kind, v.team, v.key))
        c.drop_versions.sort()
        c.tombstones.sort(key=lambda t: (t.team, t.itin_id))
        c.applied.sort()
        c.removed_paths = []
        with self._tx():
            snap = con.execute("INSERT INTO snapshots(created_at, operation, summary) VALUES (?,?,?)",
                               (now, c.operation, c.summary)).lastrowid
            if c.remove_files:
                ids = list(c.remove_files)
                for chunk in _chunks(ids, 500):
                    ph = ",".join("?" * len(chunk))
                    gone = con.execute(f"UPDATE files SET removed_snapshot=?, removed_at=? WHERE {LIVE} AND id IN ({ph}) "
                                       "RETURNING path", (snap, now, *chunk)).fetchall()
                    c.removed_paths += [r[0] for r in gone]
                    if len(gone) != len(chunk):
                        raise CatalogConflict("a file to replace was already replaced (by a merge or a rewrite)")
            con.executemany("INSERT INTO files(tbl, team, date, path, rows, bytes, added_snapshot) VALUES (?,?,?,?,?,?,?)",
                            ((f.tbl, f.team, f.date, f.path, f.rows, f.bytes, snap) for f in c.add_files))
            con.executemany("INSERT OR REPLACE INTO versions(kind, team, key, received_us, part, offset, body_sha256, date) "
                            "VALUES (?,?,?,?,?,?,?,?)", c.versions)
            con.executemany("DELETE FROM versions WHERE kind=? AND team=? AND key=?", c.drop_versions)
            # a trip stored by a step that was planned before its tombstone arrived: readers must
            # look for it where it now is
            con.executemany("UPDATE tombstones SET date=? WHERE team=? AND itin_id=? AND applied_at IS NULL",
                            ((v.date, v.team, v.key) for v in c.versions if v.kind == Kind.TRIP))
            con.executemany("INSERT OR IGNORE INTO tombstones(team, itin_id, part, offset, received_us) VALUES (?,?,?,?,?)",
                            c.tombstones)
            con.executemany("UPDATE tombstones SET applied_at=? WHERE team=? AND itin_id=? AND applied_at IS NULL",
                            ((now, t.team, t.itin) for t in c.applied))
            con.executemany("INSERT OR REPLACE INTO failed(kind, team, key, part, offset, received_us, reason, status, failed_at) "
                            "VALUES (?,?,?,?,?,?,?,'FAILED',?)", ((*f, now) for f in c.failed))
            if con.execute("SELECT 1 FROM failed WHERE status = 'FAILED' LIMIT 1").fetchone():
                # a newer good push resolves older FAILED items of the same key (not newer ones)
                con.executemany("UPDATE failed SET status='RESOLVED' WHERE kind=? AND team=? AND key=? "
                                "AND status='FAILED' AND received_us <= ?", c.resolved)
                # a deleted trip's FAILED items are no longer retriable
                con.executemany("UPDATE failed SET status='DELETED' WHERE kind=? AND team=? AND key=? AND status='FAILED'",
                                ((Kind.TRIP, t.team, t.itin) for t in c.applied))
            con.executemany("UPDATE failed SET status='SUPERSEDED' WHERE part=? AND offset=? AND status='FAILED'",
                            c.superseded)
            # a deleted trip pushed again (a retry) left a record in the log: the cleaner must come back
            con.executemany("UPDATE tombstones SET log_cleaned=0 WHERE team=? AND itin_id=?", c.reclean)
            for (day, team, kind), counts in c.stats.items():
                con.execute("INSERT INTO push_stats(day, team, kind) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                            (day, team, kind))
                con.execute("UPDATE push_stats SET " + ", ".join(f"{f} = {f} + ?" for f in STAT_FIELDS)
                            + " WHERE day=? AND team=? AND kind=?", (*counts, day, team, kind))
            if c.task is not None:
                task_id, done = c.task
                con.executemany("UPDATE task_items SET done=1 WHERE task_id=? AND failed_id=?",
                                ((task_id, i) for i in done))
                left = con.execute("SELECT count(*) FROM task_items WHERE task_id=? AND done=0", (task_id,)).fetchone()[0]
                con.execute("UPDATE tasks SET nb_remaining=?, status=?, completed_at=? WHERE task_id=?",
                            (left, "IN_PROGRESS" if left else "COMPLETED", None if left else now, task_id))
            con.executemany("INSERT INTO positions(part, next_offset) VALUES (?,?) "
                            "ON CONFLICT(part) DO UPDATE SET next_offset=excluded.next_offset", c.positions.items())
        return snap

    # -- maintenance --------------------------------------------------------------------------
    def expired_files(self, older_than: float) -> list[FileRef]:
        return list(map(FileRef._make, self.con.execute(
            "SELECT id, path FROM files WHERE removed_at IS NOT NULL AND removed_at <= ?", (older_than,))))

    def forget_files(self, ids: list[int]) -> None:
        with self._tx():
            for chunk in _chunks(ids, 500):
                self.con.execute(f"DELETE FROM files WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            self.con.execute("DELETE FROM snapshots WHERE id < (SELECT coalesce(min(added_snapshot), 0) FROM files) "
                             "AND id < (SELECT max(id) FROM snapshots)")

    def tombstones_to_clean(self, older_than: float) -> list[TripRef]:
        return list(map(TripRef._make, self.con.execute(
            "SELECT team, itin_id FROM tombstones WHERE applied_at IS NOT NULL AND applied_at <= ? "
            "AND log_cleaned = 0", (older_than,))))

    def mark_log_cleaned(self, rows: list[TripRef]) -> None:
        with self._tx():
            self.con.executemany("UPDATE tombstones SET log_cleaned=1 WHERE team=? AND itin_id=?", rows)
            self.con.executemany("UPDATE failed SET status='ERASED' WHERE kind=? AND team=? AND key=?",
                                 ((Kind.TRIP, team, itin) for team, itin in rows))

    def failed_items(self, status: str | None = "FAILED") -> list[FailedItem]:
        q = "SELECT id, kind, team, key, part, offset, received_us, reason, status, failed_at FROM failed"
        if status:
            return list(map(FailedItem._make, self.con.execute(q + " WHERE status = ? ORDER BY id", (status,))))
        return list(map(FailedItem._make, self.con.execute(q + " ORDER BY id")))

    # -- retry tasks ------------------------------------------------------------------------------
    TASK_KINDS = {"PUSH_FAILED_TRIPS": Kind.TRIP, "PUSH_FAILED_CRASHES": Kind.CRASH}

    def create_task(self, task_type: str, task_id: str) -> tuple[str, int]:
        """Queue a retry of every FAILED item of that kind; TaskRunning if one is unfinished."""
        kind = self.TASK_KINDS[task_type]
        with self._tx():
            if self.con.execute("SELECT 1 FROM tasks WHERE type=? AND status IN ('PENDING','IN_PROGRESS')",
                                (task_type,)).fetchone():
                raise TaskRunning(f"a {task_type} task is already running")
            ids = [r[0] for r in self.con.execute("SELECT id FROM failed WHERE kind=? AND status='FAILED' ORDER BY id",
                                                  (kind,))]
            now = time.time()
            done = not ids
            self.con.execute("INSERT INTO tasks VALUES (?,?,?,?,?,?,?,NULL)",
                             (task_id, task_type, "COMPLETED" if done else "PENDING", now, now if done else None,
                              len(ids), len(ids)))
            self.con.executemany("INSERT INTO task_items(task_id, failed_id) VALUES (?,?)", ((task_id, i) for i in ids))
        return task_id, len(ids)

    def fail_task(self, task_id: str, reason: str) -> None:
        with self._tx():
            self.con.execute("UPDATE tasks SET status='FAILED', error=?, completed_at=? WHERE task_id=?",
                             (reason, time.time(), task_id))

    def get_task(self, task_id: str) -> TaskRow | None:
        r = self.con.execute("SELECT task_id, type, status, created_at, completed_at, nb_items, nb_remaining "
                             "FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        return None if r is None else TaskRow._make(r)

    def next_task(self) -> NextTask | None:
        r = self.con.execute("SELECT task_id, type FROM tasks WHERE status IN ('PENDING','IN_PROGRESS') "
                             "ORDER BY created_at LIMIT 1").fetchone()
        return NextTask(r[0], self.TASK_KINDS[r[1]]) if r else None

    def task_items(self, task_id: str, limit: int) -> list[TaskItem]:
        """The task's unfinished items."""
        return list(map(TaskItem._make, self.con.execute(
            "SELECT f.id, f.part, f.offset, f.status FROM task_items i JOIN failed f ON f.id = i.failed_id "
            "WHERE i.task_id=? AND i.done=0 ORDER BY f.part, f.offset LIMIT ?", (task_id, limit))))

    # -- push reports -------------------------------------------------------------------------------
    def report(self, kind: int, start: str, end: str, team: str | None = None) -> list[dict]:
        """Counts per receive day and team: the stored counters plus the live FAILED count."""
        tq, args = ("", ()) if team is None else (" AND team = ?", (team,))
        rows: dict[tuple[str, str], dict] = {}
        for day, t, *counts in self.con.execute(
                f"SELECT day, team, {', '.join(STAT_FIELDS)} FROM push_stats WHERE kind=? AND day BETWEEN ? AND ?{tq}",
                (kind, start, end, *args)):
            rows[(day, t)] = dict(zip(STAT_FIELDS, counts), failed=0)
        for day, t, n in self.con.execute(
                "SELECT date(received_us / 1000000, 'unixepoch') AS day, team, count(*) FROM failed "
                f"WHERE kind=? AND status='FAILED'{tq} GROUP BY 1, 2 HAVING day BETWEEN ? AND ?",
                (kind, *args, start, end)):
            rows.setdefault((day, t), dict.fromkeys(STAT_FIELDS, 0))["failed"] = n
        return [{"date": d, "teamId": t, **v} for (d, t), v in sorted(rows.items())]

    def _tx(self):
        return transaction(self.con)


class TaskRunning(Exception):
    pass


class CatalogConflict(Exception):
    """A commit would replace files another commit replaced first: nothing was committed."""


def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
