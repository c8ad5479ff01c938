"""The Iceberg mirror: every lake table is also an Iceberg table, ``pushlake.<table>``.

The lake's catalog stays the truth; Iceberg is a second description of the same Parquet files,
for engines that read Iceberg. Nothing is rewritten: each live file is registered where it is
(its home under ``files/``, stable until vacuum deletes it after the retention, so older Iceberg
snapshots stay readable), and a lake commit that replaced files becomes one Iceberg snapshot
that removes the old DataFiles and adds the new ones.

The Iceberg catalog is pyiceberg's SqlCatalog in the lake's own catalog database (``catalog.db``,
or the PostgreSQL one: its two tables beside ours), metadata under the lake's ``iceberg/``
(``<data>/iceberg``, or ``s3://bucket/prefix/iceberg`` for a lake on S3, whose data files are
then registered by their ``s3://`` URIs). pyiceberg's FileIO does not read the AWS_* variables
the way ``lake.storage`` does (no endpoint, and a region it would look up at AWS): the S3
endpoint, region and keys are passed to it as ``s3.*`` properties. Each Iceberg table carries the lake snapshot
it mirrors in a table property (``pushlake.snapshot``) set in the same Iceberg commit as the
files: after a crash the mirror knows exactly where it stands. When the diff since that
snapshot cannot be trusted (vacuum forgot a replaced file first, the lake was rebuilt, the
metadata is lost), the table's file set is reconciled against the catalog's live files.

Erasure: manifests keep column bounds, which would copy trip ids, names and addresses into
metadata that outlives the rows. Only counts are kept (bounds only for the partition columns,
which pyiceberg needs to infer a file's partition); ``expire`` deletes what expired snapshots
leave (manifest lists, manifests, older metadata.json), which pyiceberg never does.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchTableError, ValidationException
import pyarrow.parquet as pq
from pyiceberg.io.pyarrow import (_check_pyarrow_schema_compatible, _ConvertToIcebergWithoutIDs,
                                  compute_statistics_plan, data_file_statistics_from_parquet_metadata,
                                  parquet_path_to_id_mapping, visit_pyarrow)
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat, ManifestContent, ManifestEntry, ManifestEntryStatus
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _ManifestMergeManager, _OverwriteFiles
from pyiceberg.transforms import IdentityTransform
from pyiceberg.typedef import Record
from pyiceberg.utils.concurrent import ExecutorFactory

from pushlake import location

from .catalog import Catalog, FileRow
from .schema import FILE_SCHEMAS, TABLES
from .storage import Storage, open_storage

log = logging.getLogger("pushlake.iceberg")

NAME = "pushlake"          # the catalog's name, and the namespace of the tables
MIRRORED = "pushlake.snapshot"  # table property (and snapshot summary): the lake snapshot mirrored
WAREHOUSE = "iceberg"      # under the data directory
LOCK = ".lock"             # in the warehouse: one writer at a time, across processes

# Set on every table (and put back if changed). Metrics: counts for every column, bounds only
# for the partition columns (pyiceberg infers the partition of a registered file from them):
# no trip id, crash id, name or address is ever copied into a manifest. One previous
# metadata.json is kept (pyiceberg keeps at least one); ``expire`` deletes it too.
TABLE_PROPERTIES = {
    "write.metadata.metrics.default": "counts",
    "write.metadata.metrics.column.team_id": "full",
    "write.metadata.metrics.column.date": "full",
    # manifests uncompressed: the byte scan of ``pushlake erase --verify`` then sees what they hold
    TableProperties.WRITE_AVRO_COMPRESSION: "null",
    TableProperties.METADATA_DELETE_AFTER_COMMIT_ENABLED: "true",
    TableProperties.METADATA_PREVIOUS_VERSIONS_MAX: "1",
    # every sync adds a manifest: merge small ones so that planning a scan stays short
    TableProperties.MANIFEST_MERGE_ENABLED: "true",
    TableProperties.MANIFEST_MIN_MERGE_COUNT: "16",
    # small manifests: removing a file rewrites the manifest that lists it
    TableProperties.MANIFEST_TARGET_SIZE_BYTES: str(256 << 10),
}
PROCESS_NAME = "pl-iceberg"  # what ps and top show for the mirror's process
EVERY_S = 5.0      # the mirror's sync interval under ``serve``
HISTORY_S = 300.0  # Iceberg history kept: each commit rewrites metadata.json with every snapshot kept
MANIFEST_FILES = 200  # files per manifest a commit writes (100-300 KiB with counts only)


def properties(data_dir: Path, catalog_url: str | None = None, lake_url: str | None = None,
               secrets: bool = False) -> dict[str, str]:
    """The kwargs of ``pyiceberg.catalog.load_catalog("pushlake", **props)`` for this lake: its SQL
    catalog in the lake catalog's database (``catalog.db``, or the PostgreSQL one, reached through
    SQLAlchemy's psycopg 3 dialect; Java engines use the same tables as the Iceberg JDBC catalog).
    ``catalog_url`` and ``lake_url``: None asks ``pushlake.location`` (the deployment), ``""``
    the embedded default. For a lake on S3: the warehouse there, and the endpoint and region;
    the keys only with ``secrets`` (the mirror's own use: what ``pushlake iceberg --json``
    prints leaves them to the reader's AWS_* variables, which pyarrow's S3 client reads)."""
    d = Path(data_dir).resolve()
    catalog_url = location.catalog_url(catalog_url)
    storage = open_storage(d, lake_url)
    if catalog_url:
        scheme, sep, rest = catalog_url.partition("://")
        if scheme not in ("postgresql", "postgres") or not sep:
            raise ValueError(f"not a PostgreSQL catalog URL: {scheme}://…")
        uri = f"postgresql+psycopg://{rest}"
    else:
        uri = f"sqlite:///{d}/catalog.db"
    if storage.local:
        return {"type": "sql", "uri": uri, "warehouse": f"file://{d}/{WAREHOUSE}"}
    return {"type": "sql", "uri": uri, "warehouse": storage.uri(WAREHOUSE), **s3_properties(secrets)}


def s3_properties(secrets: bool = False) -> dict[str, str]:
    """pyiceberg's ``s3.*`` FileIO properties from the AWS_* environment (as ``lake.storage``
    reads it): endpoint and region always (else pyiceberg asks AWS where the bucket is), the
    keys with ``secrets``."""
    env = os.environ
    out = {"s3.region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"}
    if env.get("AWS_ENDPOINT_URL"):
        out["s3.endpoint"] = env["AWS_ENDPOINT_URL"]
    if secrets:
        for prop, var in (("s3.access-key-id", "AWS_ACCESS_KEY_ID"), ("s3.secret-access-key", "AWS_SECRET_ACCESS_KEY"),
                          ("s3.session-token", "AWS_SESSION_TOKEN")):
            if env.get(var):
                out[prop] = env[var]
    return out


def iceberg_schema(tbl: str) -> Schema:
    """The Iceberg schema of a lake table: its Parquet files' schema, field ids 1.. in order."""
    return assign_fresh_schema_ids(visit_pyarrow(FILE_SCHEMAS[tbl], _ConvertToIcebergWithoutIDs()))


def partition_spec(schema: Schema) -> PartitionSpec:
    """identity(team_id), identity(date): what every lake file holds exactly one value of."""
    return PartitionSpec(*(PartitionField(source_id=schema.find_field(c).field_id, field_id=1000 + i,
                                          transform=IdentityTransform(), name=c)
                           for i, c in enumerate(("team_id", "date"))))


@dataclass
class TableStatus:
    """What ``status`` says of one Iceberg table."""
    table: str
    snapshot_id: int | None     # the current Iceberg snapshot
    files: int
    rows: int
    mirrored: int               # the lake snapshot it mirrors (0: none yet)
    snapshots: int              # Iceberg snapshots kept
    in_step: bool               # holds the catalog's live files of the latest lake snapshot


class Mirror:
    """Keeps the Iceberg tables in step with the lake's catalog (one per data directory).

    Methods are serialized within the process (a lock) and across processes (a flock in the
    warehouse): the compactor's thread, ``pushlake iceberg --rebuild`` and erase never commit or
    clean at the same time."""

    def __init__(self, data_dir: Path, catalog_url: str | None = None, lake_url: str | None = None):
        """``catalog_url``, ``lake_url``: None is the deployment's (``pushlake.location``)."""
        self.data_dir = Path(data_dir).resolve()
        self.catalog_url = location.catalog_url(catalog_url)
        self.storage: Storage = open_storage(self.data_dir, lake_url)
        self._lake_url = "" if self.storage.local else self.storage.url
        # local: the warehouse itself; on S3 only the lock lives here (a directory of this machine)
        self.warehouse = self.data_dir / WAREHOUSE
        self._iceberg: SqlCatalog | None = None
        self._mutex = threading.Lock()
        self._seen: int | None = None   # the lake snapshot every table was last found in step with

    # -- the catalog ------------------------------------------------------------------------
    def properties(self) -> dict[str, str]:
        """What ``load_catalog`` needs (without S3 keys: see ``properties``)."""
        return properties(self.data_dir, self.catalog_url or "", self._lake_url)

    @property
    def iceberg(self) -> SqlCatalog:
        if self._iceberg is None:
            props = properties(self.data_dir, self.catalog_url or "", self._lake_url, secrets=True)
            # waits for the lake's writers as long as they wait for each other (busy_timeout 30 s)
            uri = props["uri"] + ("" if self.catalog_url else "?timeout=30")
            self._iceberg = SqlCatalog(NAME, **{**props, "uri": uri})
            self._iceberg.create_namespace_if_not_exists(NAME)
        return self._iceberg

    def close(self) -> None:
        if self._iceberg is not None:
            self._iceberg.engine.dispose()
            self._iceberg = None

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _writing(self) -> Iterator[None]:
        with self._mutex:
            self.warehouse.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self.warehouse / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _table(self, tbl: str) -> Table:
        """The Iceberg table, created empty if missing, recreated if its metadata is unreadable
        (a metadata.json lost in a power failure: pyiceberg does not fsync it)."""
        ident = (NAME, tbl)
        try:
            return self.iceberg.load_table(ident)
        except NoSuchTableError:
            pass
        except Exception as e:
            log.warning("Iceberg table %s.%s is unreadable (%s): recreating it from the catalog", NAME, tbl, e)
            self.iceberg.drop_table(ident)  # never purge_table: it would delete the lake's files
        schema = iceberg_schema(tbl)
        return self.iceberg.create_table(
            ident, schema, partition_spec=partition_spec(schema),
            properties={**TABLE_PROPERTIES, MIRRORED: "0",
                        TableProperties.DEFAULT_NAME_MAPPING: schema.name_mapping.model_dump_json()})

    def _uri(self, rel: str) -> str:
        return f"file://{self.data_dir / rel}" if self.storage.local else self.storage.uri(rel)

    # -- sync -------------------------------------------------------------------------------
    def sync(self, catalog: Catalog) -> int:
        """Mirror the catalog's latest snapshot: one Iceberg commit per table that changed since
        the lake snapshot it mirrors (all lake commits since, at once). Returns the number of
        Iceberg commits (0: nothing changed)."""
        if self._seen is not None and _head(catalog) == self._seen:
            return 0
        with self._writing():
            tables = {t: self._table(t) for t in TABLES}
            marks = {t: int(tb.properties.get(MIRRORED, "0")) for t, tb in tables.items()}
            head, changes, live = _changes(catalog, marks)
            commits = 0
            for t, tb in tables.items():
                mark = marks[t]
                if mark == head:
                    continue
                adds = [f for f in changes.get(t, ()) if f.removed is None and f.added > mark]
                removes = [f for f in changes.get(t, ()) if f.removed is not None and f.added <= mark]
                try:
                    if mark > head or _expected(tb, adds, removes) != live.get(t, (0, 0)):
                        raise _Diverged(f"the files since lake snapshot {mark} do not add up to the catalog's")
                    if not adds and not removes:
                        continue  # nothing of this table changed: its mark moves with its next change
                    self._commit(tb, head, [_removal(tb, self._uri(f.path), f) for f in removes],
                                 [(self._uri(f.path), f.team, f.date) for f in adds])
                except (_Diverged, ValidationException) as e:
                    log.warning("Iceberg table %s: %s; reconciling it with the catalog's live files", t, e)
                    self._reconcile(catalog, t)
                commits += 1
            self._seen = head
            return commits

    def _commit(self, tb: Table, head: int, removes: list[DataFile], adds: list[tuple[str, str, str]]) -> None:
        """One Iceberg snapshot: remove these DataFiles, register these files, record ``head``."""
        tx = tb.transaction()
        tx.set_properties({**{k: v for k, v in TABLE_PROPERTIES.items() if tb.properties.get(k) != v},
                           MIRRORED: str(head)})
        if removes or adds:
            op = Operation.OVERWRITE if removes and adds else Operation.DELETE if removes else Operation.APPEND
            with _MirrorCommit(op, tx, tb.io, snapshot_properties={MIRRORED: str(head)}) as c:
                for df in removes:
                    c.delete_data_file(df)
                for df in _data_files(tb, tx, adds):
                    c.append_data_file(df)
        tx.commit_transaction()

    def _reconcile(self, catalog: Catalog, tbl: str) -> None:
        """Make the table's current file set the catalog's live files (the slow, sure path)."""
        tb = self._table(tbl)
        head, files = _live(catalog, tbl)
        want = {self._uri(f.path): f for f in files}
        have = _current_files(tb)
        self._commit(tb, head, [df for p, df in have.items() if p not in want],
                     [(p, f.team, f.date) for p, f in want.items() if p not in have])

    # -- rebuild and expire -----------------------------------------------------------------
    def rebuild(self, catalog: Catalog | None = None) -> int:
        """Drop every table, delete everything under the warehouse, and mirror the catalog's live
        files afresh (one snapshot per table). For a rebuilt lake, or a mirror in doubt."""
        own = catalog is None
        catalog = catalog or Catalog(self.data_dir, readonly=True, url=self.catalog_url or "")
        try:
            with self._writing():
                for t in TABLES:
                    try:
                        self.iceberg.drop_table((NAME, t))  # not purge: the data files are the lake's
                    except NoSuchTableError:
                        pass
                if self.storage.local:
                    for p in self.warehouse.iterdir():
                        if p.name != LOCK:
                            shutil.rmtree(p) if p.is_dir() else p.unlink()
                else:
                    self.storage.delete(self.storage.list_files(WAREHOUSE))
                self._seen = None
                for t in TABLES:
                    self._reconcile(catalog, t)
            return len(TABLES)
        finally:
            if own:
                catalog.close()

    def expire(self, older_than_ts: float) -> int:
        """Expire the Iceberg snapshots taken before ``older_than_ts`` (the current one stays),
        then delete every file under each table's metadata directory that the current
        metadata does not reference: expired snapshots' manifest lists and manifests, previous
        metadata.json files, leftovers of failed commits. Returns the files deleted."""
        deleted = 0
        cutoff = datetime.fromtimestamp(older_than_ts, timezone.utc)
        with self._writing():
            for t in TABLES:
                try:
                    tb = self.iceberg.load_table((NAME, t))
                except NoSuchTableError:
                    continue
                cur = tb.current_snapshot()
                if any(s.timestamp_ms < older_than_ts * 1000 and s.snapshot_id != cur.snapshot_id
                       for s in tb.snapshots()):
                    # older_than, not by_ids: each by_id deep-copies the metadata (O(snapshots²))
                    tb.maintenance.expire_snapshots().older_than(cutoff).commit()  # never the current one
                    tb = self.iceberg.load_table((NAME, t))
                deleted += _delete_unreferenced(tb, None if self.storage.local else self.storage)
        return deleted

    # -- reading ----------------------------------------------------------------------------
    def status(self, catalog: Catalog) -> tuple[int, list[TableStatus]]:
        """The catalog's latest snapshot and each existing table's state (nothing is written)."""
        tables = {}
        for t in TABLES:
            try:
                tables[t] = self.iceberg.load_table((NAME, t))
            except NoSuchTableError:
                pass
        marks = {t: int(tb.properties.get(MIRRORED, "0")) for t, tb in tables.items()}
        head, changes, live = _changes(catalog, marks) if marks else (_head(catalog), {}, {})
        out = []
        for t, tb in tables.items():
            snap = tb.current_snapshot()
            files, rows = _totals(tb)
            # a table that no lake commit since its mark touched is in step, whatever its mark
            pending = [f for f in changes.get(t, ()) if (f.removed is None) != (f.added <= marks[t])]
            out.append(TableStatus(t, snap.snapshot_id if snap else None, files, rows, marks[t], len(tb.snapshots()),
                                   marks[t] <= head and not pending and (files, rows) == live.get(t, (0, 0))))
        return head, out


def mirror_loop(data_dir: Path, stop: threading.Event, every: float = EVERY_S, history_s: float = HISTORY_S) -> None:
    """The compactor's mirror thread: sync every ``every`` seconds, and expire the Iceberg
    snapshots older than ``history_s`` (history to keep: every commit rewrites metadata.json with
    all the snapshots kept, so a long history makes each sync slower). Errors are logged and
    the loop goes on. ``history_s`` must not exceed the lake's retention: an Iceberg snapshot
    older than that may name files vacuum deleted."""
    catalog: Catalog | None = None
    mirror = Mirror(data_dir)
    expire_every = max(every, history_s / 10)
    next_expire = 0.0
    try:
        while not stop.is_set():
            try:
                if catalog is None:
                    catalog = Catalog(data_dir, readonly=True)
                mirror.sync(catalog)
                if time.monotonic() >= next_expire:
                    mirror.expire(time.time() - history_s)
                    next_expire = time.monotonic() + expire_every
            except Exception:
                log.exception("Iceberg mirror: sync failed (retrying in %.0f s)", every)
                mirror.close()
            stop.wait(every)
    finally:
        mirror.close()
        if catalog is not None:
            catalog.close()


def mirror_process(data_dir: str, stop, every: float, history_s: float, log_level: int) -> None:
    """``mirror_loop`` in a process of its own, child of the compactor (spawned): a sync is
    mostly pure-Python metadata copying that holds the GIL, which would slow projection if it
    shared the compactor's process. It dies with the compactor."""
    from pushlake.procs import die_with_parent, exit_with, set_name
    die_with_parent()
    set_name(PROCESS_NAME)
    exit_with(os.getppid())
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    mirror_loop(Path(data_dir), stop, every, history_s)


# -- helpers ----------------------------------------------------------------------------------

class _Diverged(Exception):
    pass


class _Change:
    __slots__ = ("tbl", "team", "date", "path", "rows", "bytes", "added", "removed")

    def __init__(self, tbl, team, date, path, rows, bytes_, added, removed):
        self.tbl, self.team, self.date, self.path = tbl, team, date, path
        self.rows, self.bytes, self.added, self.removed = rows, bytes_, added, removed


def _head(catalog: Catalog) -> int:
    return catalog.db.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0]


@contextmanager
def _read(catalog: Catalog) -> Iterator:
    """One read transaction: the head and the files it reads are of the same snapshot."""
    with catalog.db.read() as c:
        yield c


def _changes(catalog: Catalog, marks: dict[str, int]) -> tuple[int, dict[str, list[_Change]], dict[str, tuple[int, int]]]:
    """(head, per table the files added or removed after its mark, per table (live files, rows))
    in one read transaction. The files table has no index on snapshots: one scan, few rows out."""
    values = ",".join("(?,?)" for _ in marks)
    args = [x for t, m in marks.items() for x in (t, m)]
    with _read(catalog) as c:
        head = c.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0]
        changes: dict[str, list[_Change]] = {}
        for r in c.execute(f"WITH m(tbl, mark) AS (VALUES {values}) SELECT f.tbl, f.team, f.date, f.path, f.rows, "
                           "f.bytes, f.added_snapshot, f.removed_snapshot FROM files f JOIN m ON m.tbl = f.tbl "
                           "WHERE f.added_snapshot > m.mark OR f.removed_snapshot > m.mark", args):
            changes.setdefault(r[0], []).append(_Change(*r))
        live = {t: (n, rows) for t, n, rows in c.execute(
            "SELECT tbl, count(*), CAST(coalesce(sum(rows), 0) AS BIGINT) FROM files WHERE removed_snapshot IS NULL "
            "GROUP BY tbl")}
    return head, changes, live


def _live(catalog: Catalog, tbl: str) -> tuple[int, list[FileRow]]:
    with _read(catalog) as c:
        head = c.execute("SELECT coalesce(max(id), 0) FROM snapshots").fetchone()[0]
        files = [FileRow._make(r) for r in c.execute(
            "SELECT id, tbl, team, date, path, rows, bytes FROM files WHERE removed_snapshot IS NULL AND tbl = ?", (tbl,))]
    return head, files


def _totals(tb: Table) -> tuple[int, int]:
    """(data files, rows) of the current snapshot, from its summary (no manifest is read)."""
    s = tb.current_snapshot()
    if s is None or s.summary is None:
        return 0, 0
    try:
        return int(s.summary["total-data-files"]), int(s.summary["total-records"])
    except (KeyError, ValueError):
        return -1, -1  # unknown: the diff cannot be checked, so the table is reconciled


def _expected(tb: Table, adds: list[_Change], removes: list[_Change]) -> tuple[int, int]:
    n, rows = _totals(tb)
    return n + len(adds) - len(removes), rows + sum(f.rows for f in adds) - sum(f.rows for f in removes)


def _removal(tb: Table, uri: str, f: _Change) -> DataFile:
    """The DataFile to remove, built from the catalog's row: pyiceberg matches DataFiles by path
    (and prunes manifests by partition), and takes the counts for the snapshot summary from it
    (the catalog's rows and bytes are the file's exactly). A path it does not find fails the
    commit, which then reconciles."""
    df = DataFile.from_args(content=DataFileContent.DATA, file_path=uri, file_format=FileFormat.PARQUET,
                            partition=Record(f.team, f.date), record_count=f.rows, file_size_in_bytes=f.bytes)
    df.spec_id = tb.metadata.default_spec_id  # not a field of the struct: set apart
    return df


def _data_files(tb: Table, tx: Transaction, adds: list[tuple[str, str, str]]) -> list[DataFile]:
    """DataFiles of Parquet files registered as they are (uri, team, date), from their footers,
    with the metrics the table properties ask for. It is ``parquet_file_to_data_file`` (what
    ``Transaction.add_files`` calls) with its private parts reused once per commit instead of
    once per file (the statistics plan, the schema check: two thirds of its 4.6 ms a file), no
    duplicate check (which reads every manifest; the catalog's paths are unique) and the
    partition from the catalog rather than inferred from bounds."""
    md = tx.table_metadata
    schema, spec = md.schema(), md.spec()
    plan, mapping = compute_statistics_plan(schema, md.properties), parquet_path_to_id_mapping(schema)
    checked: list = []  # Arrow schemas found compatible (the lake writes one per table)

    def one(add: tuple[str, str, str]) -> DataFile:
        uri, team, date = add
        f = tb.io.new_input(uri)
        with f.open() as stream:
            meta = pq.read_metadata(stream)
        arrow = meta.schema.to_arrow_schema()
        if not any(arrow.equals(a) for a in checked):
            _check_pyarrow_schema_compatible(schema, arrow, format_version=md.format_version)
            checked.append(arrow)
        stats = data_file_statistics_from_parquet_metadata(meta, plan, mapping)
        df = DataFile.from_args(content=DataFileContent.DATA, file_path=uri, file_format=FileFormat.PARQUET,
                                partition=Record(team, date), file_size_in_bytes=len(f), sort_order_id=None,
                                equality_ids=None, key_metadata=None, **stats.to_serialized_dict())
        df.spec_id = spec.spec_id
        return df
    return list(ExecutorFactory.get_or_create().map(one, adds))


def _current_files(tb: Table) -> dict[str, DataFile]:
    """path -> DataFile of the current snapshot, read from its manifests."""
    s = tb.current_snapshot()
    if s is None:
        return {}
    out = {}
    for m in s.manifests(tb.io):
        if m.content == ManifestContent.DATA:
            for e in m.fetch_manifest_entry(tb.io, discard_deleted=True):
                out[e.data_file.file_path] = e.data_file
    return out


class _MirrorCommit(_OverwriteFiles):
    """pyiceberg's overwrite producer (explicit DataFiles removed and added in one snapshot:
    private API, used here only), changed in what makes a commit cost grow with the lake: added
    files go into manifests of ``MANIFEST_FILES`` files in partition order (one manifest of
    every file would be rewritten whole to remove one), manifests that list nothing live any
    more (left by earlier removals) are dropped, and small manifests are merged as
    ``merge_append`` merges them (up to ``commit.manifest.target-size-bytes``), so the manifest
    list does not grow by one per sync."""

    def _manifests(self):
        self._build_delete_files_partition_predicate()  # prunes the manifests read for removals
        deleted = self._deleted_entries()
        spec = self._transaction.table_metadata.spec()
        out = []
        files = sorted(self._added_data_files, key=lambda f: (f.partition[0], f.partition[1]))
        for i in range(0, len(files), MANIFEST_FILES):
            with self.new_manifest_writer(spec=spec) as w:
                for df in files[i:i + MANIFEST_FILES]:
                    w.add(ManifestEntry.from_args(status=ManifestEntryStatus.ADDED, snapshot_id=self._snapshot_id,
                                                  sequence_number=None, file_sequence_number=None, data_file=df))
            out.append(w.to_manifest_file())
        if deleted:  # the removals, recorded in the snapshot that makes them
            with self.new_manifest_writer(spec=spec) as w:
                for e in deleted:
                    w.add_entry(e)
            out.append(w.to_manifest_file())
        return self._process_manifests(out + self._existing_manifests())

    def _process_manifests(self, manifests):
        keep = [m for m in manifests if m.content != ManifestContent.DATA or m.added_snapshot_id == self._snapshot_id
                or (m.added_files_count or 0) + (m.existing_files_count or 0) > 0]
        props = self._transaction.table_metadata.properties
        merger = _ManifestMergeManager(
            target_size_bytes=int(props.get(TableProperties.MANIFEST_TARGET_SIZE_BYTES,
                                            TableProperties.MANIFEST_TARGET_SIZE_BYTES_DEFAULT)),
            min_count_to_merge=int(props.get(TableProperties.MANIFEST_MIN_MERGE_COUNT,
                                             TableProperties.MANIFEST_MIN_MERGE_COUNT_DEFAULT)),
            merge_enabled=props.get(TableProperties.MANIFEST_MERGE_ENABLED, "false") == "true",
            snapshot_producer=self)
        data = [m for m in keep if m.content == ManifestContent.DATA]
        return merger.merge_manifests(data) + [m for m in keep if m.content != ManifestContent.DATA]


def _delete_unreferenced(tb: Table, storage: Storage | None = None) -> int:
    """Delete the files of the table's metadata directory that its current metadata does not
    reference (called under the writer lock: no commit is writing files meanwhile). ``storage``:
    the S3 lake holding the warehouse (None: a local one)."""
    keep = {tb.metadata_location}
    for s in tb.snapshots():
        keep.add(s.manifest_list)
        keep.update(m.manifest_path for m in s.manifests(tb.io))
    if storage is not None:
        root = storage.uri("")
        md_rel = f"{tb.metadata.location.removeprefix(root).strip('/')}/metadata"
        if not tb.metadata.location.startswith(root):
            raise ValueError(f"the Iceberg table's location {tb.metadata.location} is not in the lake {root}")
        gone = [r for r in storage.list_files(md_rel) if storage.uri(r) not in keep]
        storage.delete(gone)
        return len(gone)
    md_dir = Path(tb.metadata.location.removeprefix("file://")) / "metadata"
    if not md_dir.is_dir():
        return 0
    keep = {k.removeprefix("file://") for k in keep}
    n = 0
    for p in md_dir.iterdir():
        if p.is_file() and str(p) not in keep:
            p.unlink()
            n += 1
    return n
