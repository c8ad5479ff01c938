"""The catalog: snapshots, live files, key index, tombstones, FAILED items and log positions.

SQLite in WAL mode for the embedded default (``<data>/catalog.db``), or PostgreSQL when given a
URL (``--catalog`` / ``PUSHLAKE_CATALOG``, resolved by ``pushlake.location``), through ``pushlake.db``:
the same SQL on both, DDL per dialect. Everything a compaction changes is committed in one
transaction (files swapped, positions advanced, tombstones marked applied), so a reader sees either
the old lake or the new one, and a crash never loses or doubles a record.

Several nodes may commit to one PostgreSQL catalog, each for its own log partitions. Commits are
optimistic: a plan records the version of every key it decided on (``Commit.previous``), and the
commit changes a key only if that is still its version, removes a file only if it is still live,
and stores a trip only if no deletion of it appeared meanwhile; otherwise it raises
``CatalogConflict`` and changes nothing, and the step is planned again. A commit made under a
lease (``Catalog.lease``: a node's partitions, or the maintenance jobs) first checks in the same
transaction that the lease is still its own, at the epoch it was granted: a process whose lease
another one took over (it stalled past the lease's expiry) is fenced off (``LeaseLost``).
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple

from ingest.record import Kind
from pushlake.db import POSTGRESQL, SQLITE, Db, is_postgresql, open_db, pg_sql
from pushlake.location import catalog_url

from .pending import PendingDeletions, uncovered
from .schema import TRIP_TABLES

log = logging.getLogger("pushlake.catalog")

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
  resolved_at REAL,  -- see ADDED_COLUMNS
  PRIMARY KEY(team, itin_id)) WITHOUT ROWID;
-- readers scan the pending tombstones with their partitions from this index alone (team is in
-- the key; applied_at is listed so that SQLite sees the index covers the query)
CREATE INDEX IF NOT EXISTS tombstones_pending_at ON tombstones(itin_id, date, applied_at) WHERE applied_at IS NULL;
-- position deletes: rows of a live file that belong to a deleted trip, until the copy-on-write
-- that removes them (readers skip them by position; a merge never takes such a file)
CREATE TABLE IF NOT EXISTS deletes(
  file_id INTEGER NOT NULL, row_start INTEGER NOT NULL, row_count INTEGER NOT NULL,
  team TEXT NOT NULL, itin_id TEXT NOT NULL, PRIMARY KEY(file_id, row_start)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deletes_trip ON deletes(team, itin_id);
-- the deletions readers still filter by key: the compactor has not found their rows yet
CREATE INDEX IF NOT EXISTS tombstones_unresolved ON tombstones(itin_id, date, applied_at, resolved_at)
  WHERE applied_at IS NULL AND resolved_at IS NULL;
CREATE TABLE IF NOT EXISTS failed(
  id INTEGER PRIMARY KEY, kind INTEGER NOT NULL, team TEXT NOT NULL, key TEXT NOT NULL,
  part TEXT NOT NULL, offset INTEGER NOT NULL, received_us INTEGER NOT NULL, reason TEXT NOT NULL,
  status TEXT NOT NULL, failed_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 1, UNIQUE(part, offset));
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
  completed_at REAL, nb_items INTEGER NOT NULL, nb_remaining INTEGER NOT NULL, error TEXT,
  nb_fixed INTEGER NOT NULL DEFAULT 0, nb_still_failed INTEGER NOT NULL DEFAULT 0);
-- still_failed: NULL until the item is done, then 1 if it was still FAILED after its retry, else 0
CREATE TABLE IF NOT EXISTS task_items(
  task_id TEXT NOT NULL, failed_id INTEGER NOT NULL, done INTEGER NOT NULL DEFAULT 0, still_failed INTEGER,
  PRIMARY KEY(task_id, failed_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases(
  name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch INTEGER NOT NULL, expires REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nodes(
  name TEXT PRIMARY KEY, registered_at REAL NOT NULL, seen_at REAL NOT NULL, removed_at REAL);
CREATE TABLE IF NOT EXISTS log_cleaning(
  node TEXT NOT NULL, team TEXT NOT NULL, itin_id TEXT NOT NULL, PRIMARY KEY(node, team, itin_id)) WITHOUT ROWID;
"""
# The same tables on PostgreSQL (created by pushlake at the first open by a writer): BIGINT identity
# keys, DOUBLE PRECISION times, "offset" quoted (a reserved word there), the same partial indexes;
# ``meta`` holds the schema version (for migrations) and the lake's layout (``lake.upgrade``).
# Columns added later come with defaults (``ADD COLUMN IF NOT EXISTS`` at the end), so the version
# stays 1: an older release still runs on the catalog, except for creating a retry task (its INSERT
# into ``tasks`` names no columns); upgrade every node before retrying FAILED items.
PG_SCHEMA_VERSION = 1
PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS snapshots(
  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL,
  operation TEXT NOT NULL, summary TEXT);
CREATE TABLE IF NOT EXISTS files(
  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tbl TEXT NOT NULL, team TEXT NOT NULL,
  date TEXT NOT NULL, path TEXT NOT NULL UNIQUE, rows BIGINT NOT NULL, bytes BIGINT NOT NULL,
  added_snapshot BIGINT NOT NULL, removed_snapshot BIGINT, removed_at DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS files_live ON files(tbl, team, date) WHERE removed_snapshot IS NULL;
CREATE TABLE IF NOT EXISTS versions(
  kind INTEGER NOT NULL, team TEXT NOT NULL, key TEXT NOT NULL, received_us BIGINT NOT NULL,
  part TEXT NOT NULL, "offset" BIGINT NOT NULL, body_sha256 TEXT NOT NULL, date TEXT NOT NULL,
  PRIMARY KEY(kind, team, key));
CREATE TABLE IF NOT EXISTS positions(part TEXT PRIMARY KEY, next_offset BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS tombstones(
  team TEXT NOT NULL, itin_id TEXT NOT NULL, part TEXT, "offset" BIGINT, received_us BIGINT NOT NULL,
  applied_at DOUBLE PRECISION, log_cleaned INTEGER NOT NULL DEFAULT 0, date TEXT,
  PRIMARY KEY(team, itin_id));
CREATE INDEX IF NOT EXISTS tombstones_pending_at ON tombstones(itin_id, date, applied_at) WHERE applied_at IS NULL;
CREATE TABLE IF NOT EXISTS deletes(
  file_id BIGINT NOT NULL, row_start BIGINT NOT NULL, row_count BIGINT NOT NULL,
  team TEXT NOT NULL, itin_id TEXT NOT NULL, PRIMARY KEY(file_id, row_start));
CREATE INDEX IF NOT EXISTS deletes_trip ON deletes(team, itin_id);
CREATE TABLE IF NOT EXISTS failed(
  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, kind INTEGER NOT NULL, team TEXT NOT NULL,
  key TEXT NOT NULL, part TEXT NOT NULL, "offset" BIGINT NOT NULL, received_us BIGINT NOT NULL,
  reason TEXT NOT NULL, status TEXT NOT NULL, failed_at DOUBLE PRECISION NOT NULL,
  attempts BIGINT NOT NULL DEFAULT 1, UNIQUE(part, "offset"));
CREATE INDEX IF NOT EXISTS failed_status ON failed(status, kind);
CREATE INDEX IF NOT EXISTS failed_key ON failed(kind, team, key) WHERE status = 'FAILED';
CREATE TABLE IF NOT EXISTS push_stats(
  day TEXT NOT NULL, team TEXT NOT NULL, kind INTEGER NOT NULL, received BIGINT NOT NULL DEFAULT 0,
  stored BIGINT NOT NULL DEFAULT 0, duplicates BIGINT NOT NULL DEFAULT 0,
  discarded BIGINT NOT NULL DEFAULT 0, deleted BIGINT NOT NULL DEFAULT 0,
  PRIMARY KEY(day, team, kind));
CREATE TABLE IF NOT EXISTS tasks(
  task_id TEXT PRIMARY KEY, type TEXT NOT NULL, status TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
  completed_at DOUBLE PRECISION, nb_items BIGINT NOT NULL, nb_remaining BIGINT NOT NULL, error TEXT,
  nb_fixed BIGINT NOT NULL DEFAULT 0, nb_still_failed BIGINT NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS task_items(
  task_id TEXT NOT NULL, failed_id BIGINT NOT NULL, done INTEGER NOT NULL DEFAULT 0, still_failed INTEGER,
  PRIMARY KEY(task_id, failed_id));
CREATE TABLE IF NOT EXISTS leases(
  name TEXT PRIMARY KEY, holder TEXT NOT NULL, epoch BIGINT NOT NULL, expires DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS nodes(
  name TEXT PRIMARY KEY, registered_at DOUBLE PRECISION NOT NULL, seen_at DOUBLE PRECISION NOT NULL,
  removed_at DOUBLE PRECISION);
CREATE TABLE IF NOT EXISTS log_cleaning(
  node TEXT NOT NULL, team TEXT NOT NULL, itin_id TEXT NOT NULL, PRIMARY KEY(node, team, itin_id));
ALTER TABLE failed ADD COLUMN IF NOT EXISTS attempts BIGINT NOT NULL DEFAULT 1;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS nb_fixed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS nb_still_failed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE task_items ADD COLUMN IF NOT EXISTS still_failed INTEGER;
ALTER TABLE tombstones ADD COLUMN IF NOT EXISTS resolved_at DOUBLE PRECISION;
CREATE INDEX IF NOT EXISTS tombstones_unresolved ON tombstones(itin_id, date, applied_at, resolved_at)
  WHERE applied_at IS NULL AND resolved_at IS NULL;
"""
# columns added to SQLite catalogs after their tables were first released (``Catalog._migrate``;
# PostgreSQL's are the ``ALTER TABLE`` lines of PG_SCHEMA)
ADDED_COLUMNS = {
    "failed": {"attempts": "INTEGER NOT NULL DEFAULT 1"},
    "tasks": {"nb_fixed": "INTEGER NOT NULL DEFAULT 0", "nb_still_failed": "INTEGER NOT NULL DEFAULT 0"},
    "task_items": {"still_failed": "INTEGER"},
    # when the compactor found the trip's rows (position deletes) or that it had none; NULL while
    # only the receiver knows of the deletion (readers then filter by key)
    "tombstones": {"resolved_at": "REAL"},
}
# the receive day (UTC) of a push, per dialect
RECEIVE_DAY = {SQLITE: "date(received_us / 1000000, 'unixepoch')",
               POSTGRESQL: "to_char(to_timestamp(received_us / 1000000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}

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
    failed_at: float   # when its projection last failed
    attempts: int      # projections of it that failed: 1, plus one per retry that failed again


class TaskRow(NamedTuple):
    """A retry task (``get_task``). Once done, each item is fixed (no longer FAILED after its
    retry) or still failed: ``nb_fixed + nb_still_failed + nb_remaining == nb_items``."""
    task_id: str
    type: str
    status: str
    created_at: float
    completed_at: float | None
    nb_items: int
    nb_remaining: int
    nb_fixed: int
    nb_still_failed: int
    error: str | None  # why the task itself stopped (status FAILED), else None


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


class DeleteRow(NamedTuple):
    """A position delete: ``row_count`` rows from ``row_start`` (0-based) of a live file belong
    to a deleted trip; readers skip them until the copy-on-write that removes them."""
    file_id: int
    row_start: int
    row_count: int
    team: str
    itin_id: str


class ReadState(NamedTuple):
    """What a reader needs of one snapshot (``read_state``)."""
    snapshot: int
    files: list[FileRow]
    tombstones: list[TripRef]        # pending and unresolved: filtered by key
    dirty: set[int]                  # ids of live trip files in a partition with such a tombstone
    deletes: dict[int, list[tuple[int, int]]]  # file id -> (row_start, row_count) to skip


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
    applied: list[TripRef] = field(default_factory=list)                 # deletions this step projects
    # position deletes of those whose files are rewritten later (``maintenance.apply_deletes``):
    # their tombstones are resolved now, applied once no position delete of them is left
    deletes: list[DeleteRow] = field(default_factory=list)
    # files this commit removes that had position deletes -> how many it applied (all of them,
    # or the commit conflicts: a rewrite must never bring deleted rows back)
    cow: dict[int, int] = field(default_factory=dict)
    failed: list[FailedRow] = field(default_factory=list)
    resolved: list[ResolvedRow] = field(default_factory=list)
    superseded: list[LogRef] = field(default_factory=list)               # FAILED items now stale
    reclean: set[TripRef] = field(default_factory=set)                   # deleted trips pushed again
    stats: dict[StatKey, list[int]] = field(default_factory=dict)        # -> counts, in STAT_FIELDS order
    task: TaskDone | None = None                                         # retry task, items done
    summary: str = ""
    removed_paths: list[str] = field(default_factory=list)  # filled by the commit: paths of remove_files
    # the version the plan saw of each key it stores or drops, and of each deleted trip (None:
    # none): the commit conflicts if another commit changed one of them meanwhile
    previous: dict[Key, Order | None] = field(default_factory=dict)


class Lease(NamedTuple):
    """A lease held in the catalog: ``epoch`` grows at every change of holder, and a commit
    under the lease checks it (fencing)."""
    name: str
    holder: str
    epoch: int
    ttl: float


class NodeRow(NamedTuple):
    name: str
    registered_at: float
    seen_at: float


class Catalog:
    """The catalog of a lake. ``db`` is its ``pushlake.db.Db``; ``con`` is, on SQLite, the sqlite3
    connection (for PRAGMAs and the callers that predate ``db``) and, on PostgreSQL, the ``Db``
    itself, which executes the same ``?`` SQL."""

    def __init__(self, data_dir: Path, readonly: bool = False, url: str | None = None):
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / "catalog.db"
        self.url = catalog_url(url)
        self.lease: Lease | None = None  # every commit through this object is fenced by it
        # SQLite: the deletions receivers acknowledged that no commit holds yet (``lake.pending``)
        self.pending: PendingDeletions | None = None
        if self.url is not None and not is_postgresql(self.url):
            open_db(self.url)  # raises: not a catalog URL pushlake knows
        if not readonly and self.url is None:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.url is not None:
            self.db: Db = open_db(self.url, readonly)
            self.con = self.db
            if not readonly:
                self._create_pg()
            return
        self.db = open_db(self.path, readonly)
        self.con = self.db.con
        self.pending = PendingDeletions(self.data_dir, writer=not readonly)
        if not readonly:
            self._migrate()
            self.con.executescript(SCHEMA)
        elif "date" not in self._tombstone_columns() or self._missing_columns() or not self.con.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'log_cleaning'").fetchone():
            Catalog(self.data_dir, url="").close()  # an older catalog, not opened by a writer since: migrate it

    @property
    def dialect(self) -> str:
        return self.db.dialect

    def _create_pg(self) -> None:
        """The PostgreSQL schema, created at the first open (migrations will go by ``meta.schema``)."""
        with self.db.schema_tx():
            self.db.executescript(PG_SCHEMA)
            self.db.execute("INSERT INTO meta(key, value) VALUES ('schema', ?) ON CONFLICT DO NOTHING",
                            (PG_SCHEMA_VERSION,))
            v = self.db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0]
        if v > PG_SCHEMA_VERSION:
            raise RuntimeError(f"the catalog's schema is version {v}, newer than this pushlake's "
                               f"({PG_SCHEMA_VERSION}): upgrade pushlake")

    def _tombstone_columns(self) -> set[str]:
        return {r[1] for r in self.con.execute("PRAGMA table_info(tombstones)")}

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        """(table, column, definition) of the ``ADDED_COLUMNS`` an existing SQLite catalog lacks."""
        out = []
        for table, columns in ADDED_COLUMNS.items():
            have = {r[1] for r in self.con.execute(f"PRAGMA table_info({table})")}
            out += [(table, c, d) for c, d in columns.items() if have and c not in have]
        return out

    def _migrate(self) -> None:
        """Catalogs made before tombstones carried their trip's partition get the column, filled
        from the key index for the pending ones (SCHEMA, run next, creates the new index); those
        made before ``ADDED_COLUMNS`` get them, with their defaults."""
        missing = self._missing_columns()
        if missing:
            with self._tx():
                for table, column, definition in missing:
                    self.con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        cols = self._tombstone_columns()
        if cols and "date" not in cols:
            with self._tx():
                self.con.execute("DROP INDEX IF EXISTS tombstones_pending")
                self.con.execute("ALTER TABLE tombstones ADD COLUMN date TEXT")
                self.con.execute("UPDATE tombstones SET date = (SELECT v.date FROM versions v WHERE v.kind = ? "
                                 "AND v.team = tombstones.team AND v.key = tombstones.itin_id) WHERE applied_at IS NULL",
                                 (Kind.TRIP,))

    def close(self) -> None:
        self.db.close()
        if self.pending is not None:
            self.pending.close()

    # -- the lake's layout (lake.upgrade) -------------------------------------------------------
    def layout(self) -> int:
        """The layout version of the lake (0: never recorded). SQLite: ``PRAGMA user_version``."""
        if self.dialect == SQLITE:
            return self.con.execute("PRAGMA user_version").fetchone()[0]
        r = self.db.execute("SELECT value FROM meta WHERE key = 'layout'").fetchone()
        return 0 if r is None else r[0]

    def set_layout(self, n: int) -> None:
        if self.dialect == SQLITE:
            self.con.execute(f"PRAGMA user_version = {int(n)}")
            return
        with self.db.tx():
            self.db.execute("INSERT INTO meta(key, value) VALUES ('layout', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (int(n),))

    # -- receiver side ------------------------------------------------------------------------
    def add_tombstones(self, rows: Iterable[TombstoneRow]) -> None:
        """Make deletions visible to readers (called by the receiver before it acknowledges)."""
        with self._tx():
            # the trip's partition is recorded with the tombstone, so readers find the files to
            # filter without a join (Catalog.commit keeps it current if a racing step moves the trip)
            self.db.executemany(
                'INSERT INTO tombstones(team, itin_id, part, "offset", received_us, date) '
                "VALUES (?,?,?,?,?, (SELECT date FROM versions WHERE kind = ? AND team = ? AND key = ?)) "
                "ON CONFLICT DO NOTHING",
                [(*r, Kind.TRIP, r.team, r.itin_id) for r in map(TombstoneRow._make, rows)])

    # -- reader side --------------------------------------------------------------------------
    def data_version(self) -> int:
        """Changes whenever another connection committed a change (SQLite: ``PRAGMA data_version``;
        PostgreSQL: the change counter every write transaction bumps, own commits included)."""
        return self.db.changes() + (self.pending.changes() if self.pending is not None else 0)

    def read_state(self, team: str | None = None) -> ReadState:
        """The snapshot id, its live files, the pending tombstones and the ids of live trip files
        in a partition that holds a trip with a pending tombstone, all read in one transaction."""
        c = self.db
        tf, args = ("AND team = ?", (team,)) if team else ("", ())
        unresolved = "applied_at IS NULL AND resolved_at IS NULL"
        deletes: dict[int, list[tuple[int, int]]] = {}
        # before the catalog's snapshot: a row pruned meanwhile is in that snapshot (lake.pending)
        acked = self.pending.acknowledged(team) if self.pending is not None else []
        with c.read():
            snap = c.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0]
            files = list(map(FileRow._make, c.execute(f"SELECT {FILE_COLUMNS} FROM files WHERE {LIVE} {tf}", args)))
            tombs = list(map(TripRef._make, c.execute(f"SELECT team, itin_id FROM tombstones WHERE {unresolved} {tf}",
                                                      args)))
            parts = set(c.execute(f"SELECT DISTINCT team, date FROM tombstones WHERE {unresolved} "
                                  f"AND date IS NOT NULL {tf}", args)) if tombs else set()
            for fid, start, n in c.execute(f"SELECT file_id, row_start, row_count FROM deletes WHERE true {tf} "
                                           "ORDER BY file_id, row_start", args):
                deletes.setdefault(fid, []).append((start, n))
            if acked:
                trips = dict.fromkeys((t, i) for t, i, _, _ in uncovered(acked, self.positions()))
                known = set(tombs)
                tombs += map(TripRef._make, (k for k in trips if k not in known))
                parts |= self._trip_partitions(trips)
        dirty = {f.id for f in files if f.tbl in TRIP_TABLES and (f.team, f.date) in parts} if parts else set()
        return ReadState(snap, files, tombs, dirty, deletes)

    def _trip_partitions(self, trips: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """(team, date) of the partitions holding these trips in the snapshot being read (a step
        may have stored one since its deletion's 200): one statement per team, SQLite only."""
        by_team: dict[str, list[str]] = {}
        for team, itin in trips:
            by_team.setdefault(team, []).append(itin)
        return {(team, d) for team, itins in by_team.items() for (d,) in self.db.execute(
            "SELECT DISTINCT date FROM versions WHERE kind = ? AND team = ? "
            "AND key IN (SELECT value FROM json_each(?))", (Kind.TRIP, team, json.dumps(itins)))}

    def deletes_of(self, file_ids: Iterable[int]) -> dict[int, list[DeleteRow]]:
        """The position deletes of these files (those that have some)."""
        out: dict[int, list[DeleteRow]] = {}
        for chunk in _chunks(list(file_ids), 500):
            q = (f"SELECT file_id, row_start, row_count, team, itin_id FROM deletes WHERE file_id IN "
                 f"({','.join('?' * len(chunk))}) ORDER BY file_id, row_start")
            for r in map(DeleteRow._make, self.db.execute(q, chunk)):
                out.setdefault(r.file_id, []).append(r)
        return out

    def files_with_deletes_ids(self) -> set[int]:
        return {r[0] for r in self.db.execute("SELECT DISTINCT file_id FROM deletes")}

    def files_with_deletes(self, max_rows: int, exclude: set[int] = frozenset()) -> list[FileRow]:
        """Live files holding position deletes, those of the oldest deletions first, up to
        ``max_rows`` rows in all (at least one file): the next copy-on-write."""
        out, total = [], 0
        rows = self.db.execute(
            f"SELECT {', '.join('f.' + c for c in FILE_COLUMNS.split(', '))}, min(t.received_us) AS first "
            "FROM deletes d JOIN files f ON f.id = d.file_id "
            "LEFT JOIN tombstones t ON t.team = d.team AND t.itin_id = d.itin_id "
            f"WHERE f.{LIVE} GROUP BY {', '.join('f.' + c for c in FILE_COLUMNS.split(', '))} ORDER BY first, f.id").fetchall()
        for r in rows:
            f = FileRow._make(r[:7])
            if f.id in exclude:
                continue
            if out and total + f.rows > max_rows:
                break
            out.append(f)
            total += f.rows
        return out

    # -- compactor side -----------------------------------------------------------------------
    def positions(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT part, next_offset FROM positions"))

    def versions_of(self, kind: int, team: str, keys: list[str]) -> dict[str, Version]:
        """key -> the version of that key in the lake, for the keys that have one."""
        out = {}
        for chunk in _chunks(keys, 500):
            q = ('SELECT key, received_us, part, "offset", body_sha256, date FROM versions WHERE kind=? AND team=? '
                 f"AND key IN ({','.join('?' * len(chunk))})")
            for k, ts, part, off, h, d in self.db.execute(q, (kind, team, *chunk)):
                out[k] = Version(Order(ts, part, off), h, d)
        return out

    def deleted_among(self, team: str, itins: list[str]) -> dict[str, Order]:
        """itin_id -> where its deletion is in the log, for those deleted."""
        out = {}
        for chunk in _chunks(itins, 500):
            q = ('SELECT itin_id, received_us, part, "offset" FROM tombstones WHERE team=? '
                 f"AND itin_id IN ({','.join('?' * len(chunk))})")
            out.update((itin, Order(ts, part, off)) for itin, ts, part, off in self.db.execute(q, (team, *chunk)))
        if self.pending is not None:  # acknowledged, not yet compacted: the first deletion counts
            for r in self.pending.among(team, itins):
                order = Order(r.received_us, r.part, r.offset)
                out[r.itin_id] = min(order, out.get(r.itin_id, order))
        return out

    def partition_files(self, tables: tuple[str, ...], team: str, date: str) -> list[FileRow]:
        """The live files of these tables in one partition."""
        tq = ",".join("?" * len(tables))
        return list(map(FileRow._make, self.db.execute(
            f"SELECT {FILE_COLUMNS} FROM files WHERE {LIVE} AND team = ? AND date = ? AND tbl IN ({tq})",
            (team, date, *tables))))

    def live_files(self, tbl: str | None = None) -> list[FileRow]:
        q = f"SELECT {FILE_COLUMNS} FROM files WHERE {LIVE}"
        if tbl:
            return list(map(FileRow._make, self.db.execute(q + " AND tbl = ?", (tbl,))))
        return list(map(FileRow._make, self.db.execute(q)))

    def all_paths(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT path FROM files")}

    def commit(self, c: Commit) -> int:
        now = time.time()
        con = self.db
        # rows in key order: consecutive statements touch neighbouring B-tree pages (a batch of
        # 100,000 deletions in arrival order touched a random page each)
        c.versions.sort(key=lambda v: (v.kind, v.team, v.key))
        c.drop_versions.sort()
        c.tombstones.sort(key=lambda t: (t.team, t.itin_id))
        c.applied.sort()
        c.removed_paths = []
        with self._tx():
            if self.lease is not None:
                self._fence(self.lease, now)
            self._check(c)
            snap = con.execute("INSERT INTO snapshots(created_at, operation, summary) VALUES (?,?,?) RETURNING id",
                               (now, c.operation, c.summary)).fetchone()[0]
            if c.remove_files:
                ids = list(c.remove_files)
                for chunk in _chunks(ids, 500):
                    ph = ",".join("?" * len(chunk))
                    gone = con.execute(f"UPDATE files SET removed_snapshot=?, removed_at=? WHERE {LIVE} AND id IN ({ph}) "
                                       "RETURNING path", (snap, now, *chunk)).fetchall()
                    c.removed_paths += [r[0] for r in gone]
                    if len(gone) != len(chunk):
                        raise CatalogConflict("a file to replace was already replaced (by a merge or a rewrite)")
            cowed = self._apply_cow(c)
            self._add_deletes(c)
            con.executemany("INSERT INTO files(tbl, team, date, path, rows, bytes, added_snapshot) VALUES (?,?,?,?,?,?,?)",
                            ((f.tbl, f.team, f.date, f.path, f.rows, f.bytes, snap) for f in c.add_files))
            self._store_versions(c)
            # a trip stored by a step that was planned before its tombstone arrived: readers must
            # look for it where it now is
            con.executemany("UPDATE tombstones SET date=? WHERE team=? AND itin_id=? AND applied_at IS NULL",
                            ((v.date, v.team, v.key) for v in c.versions if v.kind == Kind.TRIP))
            # the step's tombstones, resolved (and applied, unless position deletes remain) in the
            # same statement: one B-tree lookup per deletion where three (insert, resolve, apply)
            # held the catalog's write lock, which receivers wait for to publish deletions
            deferred = {(d.team, d.itin_id) for d in c.deletes}
            applied = {(t.team, t.itin) for t in c.applied}

            def stamped(t: TombstoneRow) -> tuple:  # with (resolved_at, applied_at)
                trip = (t.team, t.itin_id)
                if trip not in applied:
                    return (*t, None, None)
                return (*t, now, None if trip in deferred else now)
            con.executemany('INSERT INTO tombstones(team, itin_id, part, "offset", received_us, resolved_at, applied_at) '
                            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(team, itin_id) DO UPDATE SET "
                            "resolved_at=COALESCE(tombstones.resolved_at, excluded.resolved_at), "
                            "applied_at=COALESCE(tombstones.applied_at, excluded.applied_at)",
                            map(stamped, c.tombstones))
            # deletions applied without their tombstone in this commit (published by a receiver)
            stepped = {(t.team, t.itin_id) for t in c.tombstones}
            rest = [t for t in c.applied if (t.team, t.itin) not in stepped]
            con.executemany("UPDATE tombstones SET resolved_at=? WHERE team=? AND itin_id=? AND resolved_at IS NULL",
                            ((now, t.team, t.itin) for t in rest))
            con.executemany("UPDATE tombstones SET applied_at=? WHERE team=? AND itin_id=? AND applied_at IS NULL",
                            ((now, t.team, t.itin) for t in rest if (t.team, t.itin) not in deferred))
            # deletions whose last position delete this commit's rewrites removed
            con.executemany("UPDATE tombstones SET applied_at=? WHERE team=? AND itin_id=? AND applied_at IS NULL "
                            "AND NOT EXISTS (SELECT 1 FROM deletes d WHERE d.team = tombstones.team "
                            "AND d.itin_id = tombstones.itin_id)", ((now, *t) for t in sorted(cowed)))
            # a record failing again (a retry) keeps its FAILED item, its id, with the new reason
            # and one more attempt; one settled meanwhile (a newer push, a deletion) stays settled
            failed = list({(f.part, f.offset): f for f in c.failed}.values())
            con.executemany('INSERT INTO failed(kind, team, key, part, "offset", received_us, reason, status, failed_at) '
                            "VALUES (?,?,?,?,?,?,?,'FAILED',?) ON CONFLICT(part, \"offset\") DO UPDATE SET "
                            "reason=excluded.reason, failed_at=excluded.failed_at, attempts=failed.attempts + 1 "
                            "WHERE failed.status = 'FAILED'", ((*f, now) for f in failed))
            if con.execute("SELECT 1 FROM failed WHERE status = 'FAILED' LIMIT 1").fetchone():
                # a newer good push resolves older FAILED items of the same key (not newer ones)
                con.executemany("UPDATE failed SET status='RESOLVED' WHERE kind=? AND team=? AND key=? "
                                "AND status='FAILED' AND received_us <= ?", c.resolved)
                # a deleted trip's FAILED items are no longer retriable
                con.executemany("UPDATE failed SET status='DELETED' WHERE kind=? AND team=? AND key=? AND status='FAILED'",
                                ((Kind.TRIP, t.team, t.itin) for t in c.applied))
            con.executemany("UPDATE failed SET status='SUPERSEDED' WHERE part=? AND \"offset\"=? AND status='FAILED'",
                            c.superseded)
            # a deleted trip pushed again (a retry) left a record in the log: the cleaner must come back
            con.executemany("UPDATE tombstones SET log_cleaned=0 WHERE team=? AND itin_id=?", c.reclean)
            con.executemany("DELETE FROM log_cleaning WHERE team=? AND itin_id=?", c.reclean)
            for (day, team, kind), counts in sorted(c.stats.items()):
                con.execute("INSERT INTO push_stats(day, team, kind) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                            (day, team, kind))
                con.execute("UPDATE push_stats SET " + ", ".join(f"{f} = {f} + ?" for f in STAT_FIELDS)
                            + " WHERE day=? AND team=? AND kind=?", (*counts, day, team, kind))
            if c.task is not None:
                self._finish_task_items(c.task, now)
            con.executemany("INSERT INTO positions(part, next_offset) VALUES (?,?) "
                            "ON CONFLICT(part) DO UPDATE SET next_offset=excluded.next_offset", c.positions.items())
        if c.positions and self.pending is not None:
            self._prune_pending(c.positions)
        return snap

    def _prune_pending(self, positions: dict[str, int]) -> None:
        """The acknowledged deletions this commit covers leave ``pending.db``. A failure costs
        nothing but rows readers skip (they are covered) until the next commit prunes them."""
        try:
            self.pending.prune(positions)
        except sqlite3.Error as e:
            log.warning("pending deletions not pruned (%s): the next commit will", e)

    def _apply_cow(self, c: Commit) -> set[tuple[str, str]]:
        """The removed files' position deletes, which their rewrites must have applied, all of
        them: a rewrite planned before a deletion found rows in its file would bring them back.
        Returns the deleted trips they were of."""
        con, trips = self.db, set()
        for chunk in _chunks(sorted(c.remove_files), 500):
            ph = ",".join("?" * len(chunk))
            have = dict(con.execute(f"SELECT file_id, count(*) FROM deletes WHERE file_id IN ({ph}) GROUP BY file_id",
                                    chunk).fetchall())
            if any(c.cow.get(fid, 0) != n for fid, n in have.items()):
                raise CatalogConflict("a file to replace got position deletes its rewrite did not apply")
            if have:
                trips.update(con.execute(f"SELECT DISTINCT team, itin_id FROM deletes WHERE file_id IN ({ph})",
                                         chunk).fetchall())
                con.execute(f"DELETE FROM deletes WHERE file_id IN ({ph})", chunk)
        return {tuple(t) for t in trips}

    def _add_deletes(self, c: Commit) -> None:
        """Position deletes go to live files only (a file replaced since they were found: the
        step is planned again, on the file that replaced it)."""
        if not c.deletes:
            return
        ids = sorted({d.file_id for d in c.deletes})
        if set(ids) & c.remove_files:
            raise ValueError("position deletes for a file this commit removes")
        for chunk in _chunks(ids, 500):
            ph = ",".join("?" * len(chunk))
            live = self.db.execute(f"SELECT count(*) FROM files WHERE {LIVE} AND id IN ({ph})", chunk).fetchone()[0]
            if live != len(chunk):
                raise CatalogConflict("a file holding a deleted trip was replaced meanwhile")
        self.db.executemany("INSERT INTO deletes(file_id, row_start, row_count, team, itin_id) VALUES (?,?,?,?,?) "
                            "ON CONFLICT DO NOTHING", sorted(c.deletes))

    def _finish_task_items(self, task: TaskDone, now: float) -> None:
        """A retry task's items done by this commit (after its FAILED items were updated): each
        is fixed, or still FAILED (re-projected and failed again, or its record not found); the
        task's counts follow, and it is COMPLETED when no item is left, whatever they say."""
        con = self.db
        task_id, done = task
        con.executemany("UPDATE task_items SET done=1, still_failed=coalesce((SELECT 1 FROM failed f "
                        "WHERE f.id = task_items.failed_id AND f.status = 'FAILED'), 0) "
                        "WHERE task_id=? AND failed_id=? AND done=0", ((task_id, i) for i in done))
        left, fixed, still = con.execute(
            "SELECT count(*) FILTER (WHERE done = 0), count(*) FILTER (WHERE done = 1 AND still_failed = 0), "
            "count(*) FILTER (WHERE done = 1 AND still_failed = 1) FROM task_items WHERE task_id=?",
            (task_id,)).fetchone()
        con.execute("UPDATE tasks SET nb_remaining=?, nb_fixed=?, nb_still_failed=?, status=?, completed_at=? "
                    "WHERE task_id=?", (left, fixed, still, "IN_PROGRESS" if left else "COMPLETED",
                                        None if left else now, task_id))

    def _many(self, sql: str, rows: list) -> int:
        """executemany, returning the rows it changed."""
        if not rows:
            return 0
        if self.dialect == SQLITE:
            return self.con.executemany(sql, rows).rowcount
        with self.db.con.cursor() as cur:
            cur.executemany(pg_sql(sql), rows)
            return cur.rowcount

    def _check(self, c: Commit) -> None:
        """What the plan relied on, checked inside the commit's transaction (conflicts between
        nodes; on one machine a receiver's tombstone racing the step that stores its trip)."""
        # a pending tombstone is fine: its deletion is applied later, to this version (the
        # tombstone's partition follows the trip, in commit); an applied one saw no version
        if self._any_trip("SELECT 1 FROM tombstones WHERE (applied_at IS NOT NULL OR resolved_at IS NOT NULL) "
                          "AND team=? AND itin_id IN",
                          [TripRef(v.team, v.key) for v in c.versions if v.kind == Kind.TRIP]):
            raise CatalogConflict("a trip this step stores was deleted meanwhile")
        dropped = {(k.team, k.key) for k in c.drop_versions if k.kind == Kind.TRIP}
        unseen = [t for t in c.applied  # deletions applied to no stored trip: still none stored?
                  if (t.team, t.itin) not in dropped and c.previous.get(Key(Kind.TRIP, t.team, t.itin)) is None]
        if self._any_trip(f"SELECT 1 FROM versions WHERE kind={int(Kind.TRIP)} AND team=? AND key IN", unseen):
            raise CatalogConflict("a trip this step deletes was stored meanwhile by another commit")

    def _any_trip(self, query: str, trips: list[TripRef]) -> bool:
        """Whether ``query`` (ending in ``IN``, bound to a team then its trips) finds a row for
        any of these trips, asked per team, 500 at a time."""
        by_team: dict[str, list[str]] = {}
        for team, itin in trips:
            by_team.setdefault(team, []).append(itin)
        return any(self.db.execute(f"{query} ({','.join('?' * len(chunk))}) LIMIT 1", (team, *chunk)).fetchone()
                   for team, itins in by_team.items() for chunk in _chunks(itins, 500))

    def _store_versions(self, c: Commit) -> None:
        """Each key's new version, or its removal, only if its version is still the one the plan
        saw (``Commit.previous``; a key absent from it: whatever it is, as before)."""
        prev = c.previous
        new, moved, free = [], [], []
        for v in c.versions:
            k = Key(v.kind, v.team, v.key)
            if k not in prev:
                free.append(v)
            elif prev[k] is None:
                new.append(v)
            else:
                moved.append((v.received_us, v.part, v.offset, v.body_sha256, v.date, v.kind, v.team, v.key, *prev[k]))
        self._many('INSERT INTO versions(kind, team, key, received_us, part, "offset", body_sha256, date) '
                   "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(kind, team, key) DO UPDATE SET "
                   'received_us=excluded.received_us, part=excluded.part, "offset"=excluded."offset", '
                   "body_sha256=excluded.body_sha256, date=excluded.date", free)
        if self._many('INSERT INTO versions(kind, team, key, received_us, part, "offset", body_sha256, date) '
                      "VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING", new) != len(new):
            raise CatalogConflict("a key this step stores for the first time was stored meanwhile by another commit")
        if self._many('UPDATE versions SET received_us=?, part=?, "offset"=?, body_sha256=?, date=? '
                      'WHERE kind=? AND team=? AND key=? AND received_us=? AND part=? AND "offset"=?', moved) != len(moved):
            raise CatalogConflict("a key this step replaces was replaced meanwhile by another commit")
        drops = [(*k, *prev[k]) if prev.get(k) else None for k in c.drop_versions]
        loose = [k for k, d in zip(c.drop_versions, drops) if d is None]
        checked = [d for d in drops if d is not None]
        self._many("DELETE FROM versions WHERE kind=? AND team=? AND key=?", loose)
        if self._many('DELETE FROM versions WHERE kind=? AND team=? AND key=? AND received_us=? AND part=? '
                      'AND "offset"=?', checked) != len(checked):
            raise CatalogConflict("a trip this step deletes was replaced meanwhile by another commit")

    # -- leases and nodes (several nodes on one catalog) -------------------------------------------
    def _fence(self, lease: Lease, now: float) -> None:
        if self._many("UPDATE leases SET expires=? WHERE name=? AND holder=? AND epoch=?",
                      [(now + lease.ttl, lease.name, lease.holder, lease.epoch)]) != 1:
            raise LeaseLost(f"lease {lease.name!r} (epoch {lease.epoch}) was taken over by another process")

    def acquire_lease(self, name: str, holder: str, ttl: float, dead: str | None = None) -> Lease | None:
        """The lease, if it is free or expired (its epoch then grows by one), else None.
        ``dead``: a prefix of holder names known to be dead (the caller holds the lock they
        held), whose lease is taken at once instead of after its expiry."""
        now = time.time()
        with self._tx():
            self.db.execute("INSERT INTO leases(name, holder, epoch, expires) VALUES (?,?,0,0) ON CONFLICT DO NOTHING",
                            (name, holder))
            r = self.db.execute("UPDATE leases SET holder=?, epoch=epoch+1, expires=? WHERE name=? AND (expires < ? "
                                "OR substr(holder, 1, ?) = ?) RETURNING epoch",
                                (holder, now + ttl, name, now, *((1, "\x01") if dead is None else (len(dead), dead)))).fetchone()
        return None if r is None else Lease(name, holder, r[0], ttl)

    def renew_lease(self, lease: Lease) -> bool:
        """Extend a lease still held at its epoch (even if it expired: nobody took it)."""
        with self._tx():
            try:
                self._fence(lease, time.time())
            except LeaseLost:
                return False
        return True

    def release_lease(self, lease: Lease) -> None:
        with self._tx():
            self.db.execute("UPDATE leases SET expires=0 WHERE name=? AND holder=? AND epoch=?",
                            (lease.name, lease.holder, lease.epoch))

    def leases(self) -> list[tuple[str, str, int, float]]:
        """(name, holder, epoch, expires) of every lease."""
        return [tuple(r) for r in self.db.execute("SELECT name, holder, epoch, expires FROM leases ORDER BY name")]

    def register_node(self, name: str) -> None:
        """A node takes part in log cleaning from now on (``erase --verify`` waits for it)."""
        now = time.time()
        with self._tx():
            self.db.execute("INSERT INTO nodes(name, registered_at, seen_at) VALUES (?,?,?) ON CONFLICT(name) "
                            "DO UPDATE SET seen_at=excluded.seen_at, removed_at=NULL", (name, now, now))

    def remove_node(self, name: str) -> bool:
        """A node taken out of the cluster (its log drained): no longer waited for by erasure."""
        with self._tx():
            n = self._many("UPDATE nodes SET removed_at=? WHERE name=? AND removed_at IS NULL", [(time.time(), name)])
            self.db.execute("UPDATE tombstones SET log_cleaned=1 WHERE log_cleaned=0 AND applied_at IS NOT NULL "
                            f"AND {_ALL_CLEANED}")
        return n == 1

    def nodes(self) -> list[NodeRow]:
        return list(map(NodeRow._make, self.db.execute(
            "SELECT name, registered_at, seen_at FROM nodes WHERE removed_at IS NULL ORDER BY name")))

    def uncleaned_nodes(self, team: str, itin: str) -> list[str]:
        """The nodes whose log may still hold records of this deleted trip."""
        return [r[0] for r in self.db.execute(
            "SELECT n.name FROM nodes n WHERE n.removed_at IS NULL AND NOT EXISTS (SELECT 1 FROM log_cleaning c "
            "WHERE c.node = n.name AND c.team = ? AND c.itin_id = ?) AND EXISTS (SELECT 1 FROM tombstones t "
            "WHERE t.team = ? AND t.itin_id = ? AND t.log_cleaned = 0) ORDER BY n.name", (team, itin, team, itin))]

    # -- maintenance --------------------------------------------------------------------------
    def expired_files(self, older_than: float) -> list[FileRef]:
        return list(map(FileRef._make, self.db.execute(
            "SELECT id, path FROM files WHERE removed_at IS NOT NULL AND removed_at <= ?", (older_than,))))

    def forget_files(self, ids: list[int]) -> None:
        with self._tx():
            for chunk in _chunks(ids, 500):
                self.db.execute(f"DELETE FROM files WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            self.db.execute("DELETE FROM snapshots WHERE id < (SELECT coalesce(min(added_snapshot), 0) FROM files) "
                             "AND id < (SELECT max(id) FROM snapshots)")

    def tombstones_to_clean(self, older_than: float, node: str = "") -> list[TripRef]:
        """Deleted trips this node's log cleaner has yet to remove from its log."""
        return list(map(TripRef._make, self.db.execute(
            "SELECT team, itin_id FROM tombstones t WHERE applied_at IS NOT NULL AND applied_at <= ? "
            "AND log_cleaned = 0 AND NOT EXISTS (SELECT 1 FROM log_cleaning c WHERE c.node = ? AND c.team = t.team "
            "AND c.itin_id = t.itin_id)", (older_than, node))))

    def mark_log_cleaned(self, rows: list[TripRef], node: str = "") -> None:
        """This node's log holds no record of these trips any more; a trip is ``log_cleaned``
        once every node of the cluster has cleaned it."""
        with self._tx():
            self.db.executemany("INSERT INTO log_cleaning(node, team, itin_id) VALUES (?,?,?) ON CONFLICT DO NOTHING",
                                [(node, *r) for r in rows])
            self.db.executemany(f"UPDATE tombstones SET log_cleaned=1 WHERE team=? AND itin_id=? AND {_ALL_CLEANED}",
                                rows)
            self.db.executemany("UPDATE failed SET status='ERASED' WHERE kind=? AND team=? AND key=?",
                                 ((Kind.TRIP, team, itin) for team, itin in rows))

    def deletion_waiting(self, within_s: float = 5.0) -> bool:
        """Whether a deletion published in the last ``within_s`` seconds waits for the compactor's
        step (an older one waits for a node that is down or behind: nothing to yield to)."""
        since = int((time.time() - within_s) * 1e6)
        if self.pending is not None and uncovered(self.pending.received_since(since), self.positions()):
            return True
        return self.db.execute("SELECT 1 FROM tombstones WHERE applied_at IS NULL AND resolved_at IS NULL "
                               "AND received_us > ? LIMIT 1", (since,)).fetchone() is not None

    def health_counts(self) -> tuple[int, int]:
        """(FAILED items, pending tombstones): the compactor's gauges and the status page's."""
        failed = self.db.execute("SELECT count(*) FROM failed WHERE status = 'FAILED'").fetchone()[0]
        pending = self.db.execute("SELECT count(*) FROM tombstones WHERE applied_at IS NULL").fetchone()[0]
        if self.pending is not None:
            pending += self.pending.count_uncovered(self.positions())
        return int(failed), int(pending)

    def failed_items(self, status: str | None = "FAILED", kind: int | None = None, team: str | None = None,
                     after_id: int = 0, limit: int | None = None) -> list[FailedItem]:
        """The items of ``failed`` by id (any status with ``status=None``), of one kind and team
        if given; a page of them with ``after_id`` (the last id of the previous page) and ``limit``."""
        where, args = ["id > ?"], [after_id]
        for column, value in (("status", status), ("kind", kind), ("team", team)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        q = ('SELECT id, kind, team, key, part, "offset", received_us, reason, status, failed_at, attempts FROM failed '
             f"WHERE {' AND '.join(where)} ORDER BY id")
        if limit is not None:
            q += " LIMIT ?"
            args.append(limit)
        return list(map(FailedItem._make, self.db.execute(q, tuple(args))))

    # -- retry tasks ------------------------------------------------------------------------------
    TASK_KINDS = {"PUSH_FAILED_TRIPS": Kind.TRIP, "PUSH_FAILED_CRASHES": Kind.CRASH,
                  "PUSH_FAILED_DIAGNOSES": Kind.DIAGNOSIS}

    def create_task(self, task_type: str, task_id: str) -> tuple[str, int]:
        """Queue a retry of every FAILED item of that kind; TaskRunning if one is unfinished."""
        kind = self.TASK_KINDS[task_type]
        with self._tx():
            if self.db.execute("SELECT 1 FROM tasks WHERE type=? AND status IN ('PENDING','IN_PROGRESS')",
                                (task_type,)).fetchone():
                raise TaskRunning(f"a {task_type} task is already running")
            ids = [r[0] for r in self.db.execute("SELECT id FROM failed WHERE kind=? AND status='FAILED' ORDER BY id",
                                                  (kind,))]
            now = time.time()
            done = not ids
            self.db.execute("INSERT INTO tasks(task_id, type, status, created_at, completed_at, nb_items, nb_remaining) "
                            "VALUES (?,?,?,?,?,?,?)", (task_id, task_type, "COMPLETED" if done else "PENDING", now,
                                                       now if done else None, len(ids), len(ids)))
            self.db.executemany("INSERT INTO task_items(task_id, failed_id) VALUES (?,?)", ((task_id, i) for i in ids))
        return task_id, len(ids)

    def fail_task(self, task_id: str, reason: str) -> None:
        with self._tx():
            self.db.execute("UPDATE tasks SET status='FAILED', error=?, completed_at=? WHERE task_id=?",
                             (reason, time.time(), task_id))

    def get_task(self, task_id: str) -> TaskRow | None:
        r = self.db.execute("SELECT task_id, type, status, created_at, completed_at, nb_items, nb_remaining, nb_fixed, "
                            "nb_still_failed, error FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        return None if r is None else TaskRow._make(r)

    def next_task(self, parts: list[str] | None = None) -> NextTask | None:
        """The oldest unfinished task (with ``parts``: with unfinished items in these log
        partitions, those of the node asking: each node retries the items of its own log)."""
        if parts is None:
            r = self.db.execute("SELECT task_id, type FROM tasks WHERE status IN ('PENDING','IN_PROGRESS') "
                                "ORDER BY created_at LIMIT 1").fetchone()
        elif not parts:
            r = None
        else:
            r = self.db.execute(
                "SELECT t.task_id, t.type FROM tasks t WHERE t.status IN ('PENDING','IN_PROGRESS') AND EXISTS ("
                "SELECT 1 FROM task_items i JOIN failed f ON f.id = i.failed_id WHERE i.task_id = t.task_id "
                f"AND i.done = 0 AND f.part IN ({','.join('?' * len(parts))})) ORDER BY t.created_at LIMIT 1",
                tuple(parts)).fetchone()
        return NextTask(r[0], self.TASK_KINDS[r[1]]) if r else None

    def task_items(self, task_id: str, limit: int, parts: list[str] | None = None) -> list[TaskItem]:
        """The task's unfinished items (in these log partitions only, if given)."""
        pq, args = ("", ()) if parts is None else (f" AND f.part IN ({','.join('?' * len(parts))})", tuple(parts))
        if parts is not None and not parts:
            return []
        return list(map(TaskItem._make, self.db.execute(
            'SELECT f.id, f.part, f."offset", f.status FROM task_items i JOIN failed f ON f.id = i.failed_id '
            f'WHERE i.task_id=? AND i.done=0{pq} ORDER BY f.part, f."offset" LIMIT ?', (task_id, *args, limit))))

    # -- push reports -------------------------------------------------------------------------------
    def report(self, kind: int, start: str, end: str, team: str | None = None) -> list[dict]:
        """Counts per receive day and team: the stored counters plus the live FAILED count."""
        tq, args = ("", ()) if team is None else (" AND team = ?", (team,))
        rows: dict[tuple[str, str], dict] = {}
        for day, t, *counts in self.db.execute(
                f"SELECT day, team, {', '.join(STAT_FIELDS)} FROM push_stats WHERE kind=? AND day BETWEEN ? AND ?{tq}",
                (kind, start, end, *args)):
            rows[(day, t)] = dict(zip(STAT_FIELDS, counts), failed=0)
        for day, t, n in self.db.execute(
                f"SELECT day, team, count(*) FROM (SELECT {RECEIVE_DAY[self.dialect]} AS day, team FROM failed "
                f"WHERE kind=? AND status='FAILED'{tq}) f WHERE day BETWEEN ? AND ? GROUP BY day, team",
                (kind, *args, start, end)):
            rows.setdefault((day, t), dict.fromkeys(STAT_FIELDS, 0))["failed"] = n
        return [{"date": d, "teamId": t, **v} for (d, t), v in sorted(rows.items())]

    def _tx(self):
        return self.db.tx()


class TaskRunning(Exception):
    pass


class CatalogConflict(Exception):
    """A commit found what its plan relied on changed by another commit (a file it replaces
    already replaced, a key's version changed, a trip it stores deleted): nothing was committed,
    and the step is planned again."""


class LeaseLost(Exception):
    """A commit under a lease that another process has taken over: nothing was committed."""


# every node of the cluster has cleaned the trip of tombstone ``tombstones`` (no nodes: the
# embedded default before its compactor registered, cleaned by whoever cleans)
_ALL_CLEANED = ("NOT EXISTS (SELECT 1 FROM nodes n WHERE n.removed_at IS NULL AND NOT EXISTS (SELECT 1 FROM "
                "log_cleaning c WHERE c.node = n.name AND c.team = tombstones.team AND c.itin_id = tombstones.itin_id))")


def _chunks(seq: list, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]
