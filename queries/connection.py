"""DuckDB connections over the current snapshot of the lake.

Every view reads an exact file list held in a DuckDB variable (``SET VARIABLE``), so a
statement sees one committed snapshot, never a half-written compaction. Before each statement
the connection checks the catalog (``PRAGMA data_version``, a few microseconds) and, when
something was committed, re-points the variables and reloads the pending tombstones. Trip files
that hold a trip with a pending tombstone are read through an anti-join; all others are read
untouched, so pending deletions cost only where they apply.

With ``team`` the connection is confined: views over that team's files only, external access
disabled, ``allowed_directories`` limited to the team's partitions, configuration locked, one
read-only statement at a time. ``sandbox=True`` applies the same confinement to the whole lake
(every team), for hyper-admins reading over HTTP: all the data, nothing of the host.

The files are read where the lake's storage keeps them (``lake.storage``): under the data
directory, or on an S3-compatible store (``--lake s3://bucket/prefix``). On S3, DuckDB reads
through a read-only s3fs filesystem registered with the connection (DuckDB's own httpfs cannot
be loaded offline, and a filesystem that refuses every write keeps ``COPY TO 's3://…'`` out even
if a statement got past the guard); ``allowed_directories`` then holds the team's S3 prefixes,
which DuckDB checks for ``s3://`` paths as for local ones.
"""
from __future__ import annotations

import datetime
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from lake.catalog import Catalog
from lake.hive import PUBLIC, STORE
from lake.schema import SCHEMAS, TRIP_TABLES
from lake.storage import Storage, open_storage
from pushlake.location import catalog_url

DELETED = "_pushlake_deleted"
BITMAPS = "_pushlake_bitmaps"  # per table: (path, bitmap) of the small files with position deletes
# a file with position deletes of at least this many rows is read alone; smaller ones together
# (a scan per file costs ~0.4 ms however small the file: 120 files of 8,700 rows, 10 % deleted,
# read one by one took 84 ms, together 31 ms, against 21 ms without deletes; 20 files of 1 M
# rows: 196 ms one by one, 267 ms together, against 96 ms)
BIG_ROWS = 256 * 1024
SPILL_MAX = "4GiB"  # what one export may spill to its own directory
HIVE = "hive_partitioning = true, hive_types = {'team': VARCHAR, 'date': DATE}"
_SQL_TYPES = {"string": "VARCHAR", "double": "DOUBLE", "int64": "BIGINT", "int32": "INTEGER", "bool": "BOOLEAN",
              "date32[day]": "DATE", "timestamp[us, tz=UTC]": "TIMESTAMP WITH TIME ZONE"}


def _empty_relation(table: str) -> str:
    """A typed zero-row relation with a table's columns (what reading its files would give):
    what a view reads when its file list is empty. No file stands in, so nothing a query could
    overwrite is ever read by another connection."""
    cols = ", ".join(f'CAST(NULL AS {_SQL_TYPES[str(f.type)]}) AS "{f.name}"' for f in SCHEMAS[table])
    return f"(SELECT {cols} WHERE false)"


class LakeConnection:
    def __init__(self, data_dir: Path | str, team: str | None = None, sandbox: bool = False,
                 settings: dict | None = None, *, catalog: Catalog | None = None, relative: bool = False,
                 spill: bool | str = True, storage: Storage | None = None):
        """``catalog``: an already open read-only catalog to use (a sandboxed worker opens it before
        it gives up the right to open files for writing). ``relative``: file paths are given to
        DuckDB relative to the data directory, which must then be the working directory (a worker
        chdirs there), so that no server path shows in the variables (``getvariable``,
        ``duckdb_variables()``) or in errors about them. (DuckDB resolves ``allowed_directories``
        to absolute paths itself: ``duckdb_settings()`` still shows those.) ``spill``:
        with False a confined connection has no temp directory (nothing is ever written; a query
        that needs more than its memory limit fails); a path: that directory. ``storage``: where
        the Parquet files are (default: the deployment's, ``lake.storage.open_storage``); on S3
        the paths are ``s3://`` URIs whatever ``relative`` says. A sandboxed process must create
        this connection after it gave up its rights: the S3 filesystem starts a thread, and
        Landlock confines only the threads started after it."""
        self.data_dir = Path(data_dir).resolve()
        self.team = team
        self.confined = team is not None or sandbox
        self.relative = relative
        # None: a data directory where nothing was compacted yet; the views are empty until the
        # first commit creates the catalog (a reader creates nothing, see find_catalog)
        self._catalog = catalog if catalog is not None else find_catalog(self.data_dir)
        self._version: int | None = None
        self._tombs: list[tuple[str, str]] = []
        self._shapes: dict[str, tuple] = {}
        self._bitmaps: dict[str, tuple] = {}  # variable -> (file id, rows, ranges) it holds
        self._tmp = None
        self._infos: dict[str, dict] | None = None  # on S3: what the filesystem answers of each file
        self.snapshot = 0
        self.con = duckdb.connect(config={"threads": int(settings["threads"])} if settings and "threads" in settings else {})
        self.storage = storage if storage is not None else open_storage(self.data_dir)
        if self.storage.local:
            root = Path(self.storage.root_uri())
            self._root = Path() if relative else root
            self._path = lambda rel: str(self._root / rel)
        else:
            # before any setting: enable_external_access=false and lock_configuration come later
            fs = self.storage.duckdb_filesystem(read_only=True)
            self._infos = _known_sizes(fs)
            self.con.register_filesystem(fs)
            self._path = self.storage.uri
        # the views read the files' homes (a reader of an older snapshot finds them until vacuum);
        # a confined query may also read the public tree's links to the same live files
        roots = (STORE, PUBLIC)
        for k, v in (settings or {}).items():
            self.con.execute(f"SET {k} = ?", [v])
        if self.confined:
            if isinstance(spill, str):  # a directory the caller owns (an export worker's)
                self.con.execute(f"SET temp_directory = '{_q(spill)}'")
                # an export's sort may spill, but not fill the disk the log shares
                self.con.execute(f"SET max_temp_directory_size = '{SPILL_MAX}'")
            elif spill:
                self._tmp = tempfile.TemporaryDirectory(prefix="pushlake-duckdb-")
                self.con.execute(f"SET temp_directory = '{_q(self._tmp.name)}'")
            else:
                self.con.execute("SET temp_directory = ''")
                self.con.execute("SET max_temp_directory_size = '0B'")
            if team is not None:
                dirs = [f"{self._path(f'{r}/{t}/team={team}')}/" for r in roots for t in SCHEMAS]
            else:
                dirs = [f"{self._path(f'{r}/{t}')}/" for r in roots for t in SCHEMAS]
            self.con.execute("SET allowed_directories = ?", [dirs])
            for k in ("autoinstall_known_extensions", "autoload_known_extensions", "allow_community_extensions"):
                self.con.execute(f"SET {k} = false")  # nothing installed (written) or loaded behind a query
            self.con.execute("SET enable_external_access = false")
        self.con.execute(f"CREATE TEMP TABLE {DELETED}(team_id VARCHAR, itin_id VARCHAR)")
        self.refresh()
        if self.confined:
            self.con.execute("SET lock_configuration = true")

    def _view(self, t: str, lists: dict[str, list[str]], positional: list[bool], small: int) -> None:
        """(Re)create view ``t`` when one of its file lists became empty or non-empty, or its
        files with position deletes changed in number: an empty list reads the typed empty
        relation (DuckDB refuses an empty file list). ``positional``: one per big file with
        position deletes (read alone, its deleted rows skipped by its bitmap), whether it is
        also in a partition filtered by key. ``small``: 0 if no small file has position deletes,
        1 if some do (read together, each row's bitmap found by ``filename``), 2 if one of
        those is also filtered by key."""
        names = [f"pl_{t}"] + ([f"pl_{t}_dirty"] if t in TRIP_TABLES else [])
        shape = (tuple(bool(lists.get(n)) for n in names), tuple(positional), small)
        if self._shapes.get(t) == shape:
            return

        def src(name: str, full: bool) -> str:
            # the partition path is read (hive) so that a filter on date skips whole files before
            # opening them; the path's `team` duplicates team_id and is not shown
            if not full:
                return _empty_relation(t)
            return f"(SELECT * EXCLUDE (team) FROM read_parquet(getvariable('{name}'), {HIVE}))"
        not_deleted = (f"NOT EXISTS (SELECT 1 FROM {DELETED} d WHERE d.team_id = x.team_id "
                       "AND d.itin_id = x.itin_id)")
        parts = [f"SELECT * FROM {src(names[0], shape[0][0])}"]
        if t in TRIP_TABLES:
            parts.append(f"SELECT * FROM {src(names[1], shape[0][1])} x WHERE {not_deleted}")
        # a row set in its file's bitmap is a deleted trip's: skipped by position, at a cost per
        # row far below the join on keys (docs/design.md, "Reading"). A big file is read alone
        # (its bitmap a constant); small ones together, joined to their bitmaps by filename (one
        # scan, not one per file: a scan's fixed cost outweighs a small file's rows; not by
        # file_index, which DuckDB counts after pruning partitions by a filter on date or team)
        for i, by_key in enumerate(positional):
            parts.append(f"SELECT * EXCLUDE (team) FROM read_parquet(getvariable('pl_{t}_p{i}'), {HIVE}) x "
                         f"WHERE get_bit(getvariable('pl_{t}_b{i}'), CAST(file_row_number AS INTEGER)) = 0"
                         + (f" AND {not_deleted}" if by_key else ""))
        if small:
            parts.append(f"SELECT x.* EXCLUDE (team) FROM read_parquet(getvariable('pl_{t}_small'), {HIVE}) x "
                         f"JOIN {BITMAPS}_{t} b ON b.path = x.filename "
                         "WHERE get_bit(b.bits, CAST(x.file_row_number AS INTEGER)) = 0"
                         + (f" AND {not_deleted}" if small == 2 else ""))
        self.con.execute(f"CREATE OR REPLACE VIEW {t} AS {' UNION ALL '.join(parts)}")
        self._shapes[t] = shape

    def _ranges(self, ranges: list[tuple]) -> None:
        """Register ``(file, start, count)`` ranges as the relation ``_pushlake_ranges``."""
        self.con.register("_pushlake_ranges", pa.table({"f": [r[0] for r in ranges], "s": [r[1] for r in ranges],
                                                        "n": [r[2] for r in ranges]}))

    def _bitmap(self, var: str, rows: int, ranges: list[tuple[int, int]]) -> None:
        """``var`` := a bitstring of ``rows`` bits, set on the deleted ranges (built by DuckDB)."""
        self._ranges([(0, s, n) for s, n in ranges])
        try:
            self.con.execute(f"SET VARIABLE {var} = (SELECT bitstring_agg(p, 0, {int(rows) - 1}) FROM "
                             "(SELECT unnest(range(s, s + n)) AS p FROM _pushlake_ranges))")
        finally:
            self.con.unregister("_pushlake_ranges")

    def _bitmaps_table(self, t: str, files: list, deletes: dict[int, list[tuple[int, int]]]) -> None:
        """``_pushlake_bitmaps_<t>``: (the file's path as the view reads it, its bitmap), every
        bitmap as long as the longest of these files (small: at most ``BIG_ROWS`` bits)."""
        self._ranges([(self._path(f.path), s, n) for f in files for s, n in deletes[f.id]])
        try:
            width = max(f.rows for f in files)
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE {BITMAPS}_{t} AS SELECT f AS path, "
                             f"bitstring_agg(p, 0, {int(width) - 1}) AS bits FROM "
                             "(SELECT f, unnest(range(s, s + n)) AS p FROM _pushlake_ranges) GROUP BY f")
        finally:
            self.con.unregister("_pushlake_ranges")

    def refresh(self) -> bool:
        """Point the views at the latest committed snapshot; return whether anything changed."""
        if self._catalog is None:
            if not (self.data_dir / "catalog.db").exists():
                if self._version is not None:
                    return False
                for t in SCHEMAS:
                    self._view(t, {}, [], 0)  # typed and empty
                self._version = -1  # no catalog yet (a real data_version is never negative)
                return True
            self._catalog = _read_only_catalog(self.data_dir)
        v = self._catalog.data_version()
        if v == self._version:
            return False
        snap, files, tombs, dirty, deletes = self._catalog.read_state(self.team)
        lists: dict[str, list[str]] = defaultdict(list)
        positional: dict[str, list] = defaultdict(list)
        for f in files:
            if f.id in deletes:
                positional[f.tbl].append(f)
            else:
                name = f"pl_{f.tbl}_dirty" if (f.tbl in TRIP_TABLES and f.id in dirty) else f"pl_{f.tbl}"
                lists[name].append(self._path(f.path))
            if self._infos is not None:
                key = self.storage.fs_path(f.path)
                if key not in self._infos:
                    _remember(self._infos, key, {"name": key, "size": f.bytes, "type": "file", "LastModified": _WRITTEN})
        bitmaps = {}
        for t in SCHEMAS:
            names = [f"pl_{t}"] + ([f"pl_{t}_dirty"] if t in TRIP_TABLES else [])
            for name in names:
                if lists.get(name):
                    self.con.execute(f"SET VARIABLE {name} = ?", [lists[name]])
                else:
                    self.con.execute(f"RESET VARIABLE {name}")
            small = sorted((f for f in positional[t] if f.rows < BIG_ROWS), key=lambda f: f.id)
            positional[t] = [f for f in positional[t] if f.rows >= BIG_ROWS]
            sig = tuple((f.id, f.rows, tuple(deletes[f.id])) for f in small)
            if small and self._bitmaps.get(f"pl_{t}_small") != sig:
                self.con.execute(f"SET VARIABLE pl_{t}_small = ?", [[self._path(f.path) for f in small]])
                self._bitmaps_table(t, small, deletes)
            if small:
                bitmaps[f"pl_{t}_small"] = sig
            for i, f in enumerate(positional[t]):
                self.con.execute(f"SET VARIABLE pl_{t}_p{i} = ?", [self._path(f.path)])
                ranges = deletes[f.id]
                sig = (f.id, f.rows, tuple(ranges))
                if self._bitmaps.get(f"pl_{t}_b{i}") != sig:
                    self._bitmap(f"pl_{t}_b{i}", f.rows, ranges)
                bitmaps[f"pl_{t}_b{i}"] = sig
            self._view(t, lists, [f.id in dirty for f in positional[t]],
                       (2 if any(f.id in dirty for f in small) else 1) if small else 0)
        for var in set(self._bitmaps) - set(bitmaps):  # and the file of each
            self.con.execute(f"RESET VARIABLE {var}")
            if not var.endswith("_small"):
                self.con.execute(f"RESET VARIABLE {var[:var.rindex('_b')]}_p{var[var.rindex('_b') + 2:]}")
        self._bitmaps = bitmaps
        if tombs != self._tombs:  # most commits apply or add none: no reload
            self.con.execute(f"DELETE FROM {DELETED}")
            if tombs:
                arrow = pa.table({"team_id": [t for t, _ in tombs], "itin_id": [i for _, i in tombs]})
                self.con.register("_pushlake_tombs", arrow)
                self.con.execute(f"INSERT INTO {DELETED} SELECT * FROM _pushlake_tombs")
                self.con.unregister("_pushlake_tombs")
            self._tombs = tombs
        self._version = v
        self.snapshot = snap
        return True

    def _guard(self, query: str) -> None:
        """A confined connection runs one read-only statement at a time (see ``check_read_only``)."""
        if self.confined:
            check_read_only(self.con, query)

    # statements go through refresh() first; everything else is DuckDB's own connection
    def execute(self, query: str, parameters: Any = None):
        self._guard(query)
        return self._on_latest(lambda: self.con.execute(query, parameters))

    def sql(self, query: str, *args, **kw):
        self._guard(query)
        return self._on_latest(lambda: self.con.sql(query, *args, **kw))

    def _on_latest(self, run):
        """Run a statement on the latest snapshot. A file of that snapshot can be gone by the
        time DuckDB opens it (vacuum after a short retention, between our check and the read):
        the statement then runs again on the snapshot that replaced it, instead of failing."""
        self.refresh()
        for attempt in range(3):
            try:
                return run()
            except duckdb.Error as e:
                if attempt == 2 or not _file_gone(e):
                    raise
                self._version = None  # whatever the catalog says, read the file lists again
                self.refresh()

    query = sql

    def table(self, name: str):
        self.refresh()
        return self.con.table(name)

    def close(self) -> None:
        self.con.close()
        if self._catalog is not None:
            self._catalog.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def __getattr__(self, name: str):
        return getattr(self.con, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def open_catalog(data_dir: Path) -> Catalog:
    """The lake's catalog, read-only (created first for a new lake), already open down to its WAL
    index (or its PostgreSQL connection): a process may give up opening files for writing, and
    connecting, right after (``queries.sandbox``). With a PostgreSQL catalog nothing is looked
    for in ``data_dir``: a reader's machine may have an empty one."""
    data_dir = Path(data_dir)
    if catalog_url() is None and not (data_dir / "catalog.db").exists():
        if not data_dir.is_dir():
            raise FileNotFoundError(f"no pushlake data directory at {data_dir}")
        Catalog(data_dir).close()
    cat = Catalog(data_dir, readonly=True)
    cat.data_version()
    return cat


# what a pushlake data directory holds before its first compaction (``serve`` makes the rest)
DATA_DIR_ENTRIES = ("log", "admin.db", "enterprise.key")


def _read_only_catalog(data_dir: Path) -> Catalog:
    cat = Catalog(data_dir, readonly=True)
    cat.data_version()
    return cat


def find_catalog(data_dir: Path | str) -> Catalog | None:
    """The lake's catalog, read-only, for a reader that creates nothing. None for a data directory
    where nothing was compacted yet: an empty one, or one with only pushlake's log and keys. A
    missing directory, or one that holds other things and no catalog (a wrong path), is a
    FileNotFoundError that names it, not an empty lake."""
    data_dir = Path(data_dir)
    if catalog_url() is not None or (data_dir / "catalog.db").exists():
        return _read_only_catalog(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"no pushlake data directory at {data_dir}")
    if any(data_dir.iterdir()) and not any((data_dir / n).exists() for n in DATA_DIR_ENTRIES):
        raise FileNotFoundError(f"no pushlake lake at {data_dir}: it holds no catalog.db (nor a log)")
    return None


def connect(data_dir: Path | str, team: str | None = None, sandbox: bool = False,
            settings: dict | None = None) -> LakeConnection:
    """A DuckDB connection with the lake's views. ``team`` confines it to one team;
    ``sandbox`` confines it to the lake; ``settings`` are DuckDB options (e.g. memory_limit).
    Nothing is created: a missing or foreign ``data_dir`` is a FileNotFoundError. Results turn
    into DataFrames: ``con.sql(q).df()`` (pandas) and ``con.sql(q).pl()`` (Polars)."""
    return LakeConnection(data_dir, team, sandbox, settings)


READ_ONLY_MESSAGE = "a team connection runs a single read-only SELECT statement"


def check_read_only(con: duckdb.DuckDBPyConnection, query: str) -> None:
    """Allow exactly one statement: a SELECT (which includes FROM-first queries, VALUES, DESCRIBE,
    SHOW and SUMMARIZE), or a plain EXPLAIN of one. Everything else is refused with
    PermissionError: COPY, EXPORT, ATTACH, SET/RESET, PRAGMA, CALL, PREPARE/EXECUTE, DDL and DML,
    and EXPLAIN ANALYZE (which runs the statement it explains) or EXPLAIN (options), whatever
    the case, comments or nesting. This is the second wall: the first is that nothing a
    confined connection can reach is writable."""
    try:
        stmts = con.extract_statements(query)
    except duckdb.ParserException:
        raise
    if len(stmts) != 1:
        raise PermissionError(READ_ONLY_MESSAGE)
    st = stmts[0]
    if st.type == duckdb.StatementType.SELECT:
        return
    if st.type != duckdb.StatementType.EXPLAIN:
        raise PermissionError(READ_ONLY_MESSAGE)
    text = st.query
    toks = [off for off, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment]
    words = [text[o:(toks[i + 1] if i + 1 < len(toks) else len(text))].strip().lower() for i, o in enumerate(toks[:2])]
    if len(toks) < 2 or not words[0].startswith("explain") or words[1].startswith(("analy", "(")):
        raise PermissionError(READ_ONLY_MESSAGE + " (EXPLAIN ANALYZE runs the statement: refused)")
    inner = con.extract_statements(text[toks[1]:])
    if len(inner) != 1 or inner[0].type != duckdb.StatementType.SELECT:
        raise PermissionError(READ_ONLY_MESSAGE)


_WRITTEN = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)  # any fixed time: a name is never rewritten


def _known_sizes(fs) -> dict[str, dict]:
    """Make the S3 filesystem answer from the catalog what it knows of the lake's files;
    returns the dict to fill (``bucket/key`` -> s3fs info). DuckDB asks the existence of every
    file of a list when it binds a view and the size and modified time of each file it opens,
    again at each statement: through s3fs, six HEAD requests a file, each a round trip (a
    team with a thousand files: a thousand HEADs before the first row). A lake file never
    changes once written (every file gets a new name) and the catalog records its exact size,
    so no HEAD is needed; a file vacuumed since is found missing at its GET instead. Paths
    the catalog does not name (a glob, a prefix) are asked of S3, once.

    The filesystem is shared by the connections of a process (``Storage.duckdb_filesystem``),
    and so is the dict: sizes are no secret (``allowed_directories`` decides what a connection
    opens, before the filesystem is asked), and what is true of a file is true for everyone."""
    infos = getattr(fs, "_pushlake_infos", None)
    if infos is not None:
        return infos
    from fsspec.asyn import sync_wrapper
    infos = {}
    base = fs._info

    async def _info(path, bucket=None, key=None, refresh=False, version_id=None):
        name = fs._strip_protocol(path)
        if refresh or version_id is not None or name not in infos:
            out = await base(path, bucket, key, refresh=refresh, version_id=version_id)
            if version_id is not None or out.get("type") != "file":
                return out  # a version asked for, or a prefix: as s3fs answers
            _remember(infos, name, out)
        return infos[name]
    fs._info = _info
    fs.info = sync_wrapper(_info, obj=fs)
    fs._pushlake_infos = infos
    return infos


KNOWN_MAX = 1 << 18  # files remembered per process (~100 B each); then it starts again


def _remember(infos: dict[str, dict], name: str, info: dict) -> None:
    if len(infos) >= KNOWN_MAX:  # a long-lived process that has seen many vacuumed files
        infos.clear()
    infos[name] = info


def _file_gone(e: duckdb.Error) -> bool:
    m = str(e)
    if isinstance(e, duckdb.IOException):
        return "No files found that match the pattern" in m or ("Cannot open file" in m and "No such file" in m)
    # on S3, s3fs's error at the GET of an object vacuumed meanwhile, as DuckDB passes it on
    return "FileNotFoundError" in m and "key does not exist" in m


def _q(s: str) -> str:
    return s.replace("'", "''")
