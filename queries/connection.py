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
"""
from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from lake.catalog import Catalog
from lake.files import empty_file, ensure_empty_files
from lake.schema import SCHEMAS, TRIP_TABLES

DELETED = "_pushlake_deleted"
READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
HIVE = "hive_partitioning = true, hive_types = {'team': VARCHAR, 'date': DATE}"


class LakeConnection:
    def __init__(self, data_dir: Path | str, team: str | None = None, sandbox: bool = False,
                 settings: dict | None = None):
        self.data_dir = Path(data_dir).resolve()
        if not (self.data_dir / "catalog.db").exists():
            if not self.data_dir.is_dir():
                raise FileNotFoundError(f"no pushlake data directory at {self.data_dir}")
            Catalog(self.data_dir).close()
        if not all(empty_file(self.data_dir, t).exists() for t in SCHEMAS):
            ensure_empty_files(self.data_dir)
        self.team = team
        self.confined = team is not None or sandbox
        self._catalog = Catalog(self.data_dir, readonly=True)
        self._version: int | None = None
        self._tombs: list[tuple[str, str]] = []
        self.snapshot = 0
        self.con = duckdb.connect()
        lake = self.data_dir / "lake"
        for k, v in (settings or {}).items():
            self.con.execute(f"SET {k} = ?", [v])
        if self.confined:
            self._tmp = tempfile.TemporaryDirectory(prefix="pushlake-duckdb-")
            if team is not None:
                dirs = [f"{lake / t / f'team={team}'}/" for t in SCHEMAS] + [f"{lake / '_empty'}/"]
            else:
                dirs = [f"{lake / t}/" for t in SCHEMAS] + [f"{lake / '_empty'}/"]
            self.con.execute(f"SET temp_directory = '{_q(self._tmp.name)}'")
            self.con.execute("SET allowed_directories = ?", [dirs])
            self.con.execute("SET enable_external_access = false")
        self.con.execute(f"CREATE TEMP TABLE {DELETED}(team_id VARCHAR, itin_id VARCHAR)")
        self.refresh()
        for t in SCHEMAS:
            # the partition path is read (hive) so that a filter on date skips whole files before
            # opening them; the path's `team` duplicates team_id and is not shown
            src = f"(SELECT * EXCLUDE (team) FROM read_parquet(getvariable('pl_{t}'), {HIVE}))"
            if t in TRIP_TABLES:
                dirty = f"(SELECT * EXCLUDE (team) FROM read_parquet(getvariable('pl_{t}_dirty'), {HIVE}))"
                self.con.execute(
                    f"CREATE VIEW {t} AS SELECT * FROM {src} UNION ALL "
                    f"SELECT * FROM {dirty} x WHERE NOT EXISTS "
                    f"(SELECT 1 FROM {DELETED} d WHERE d.team_id = x.team_id AND d.itin_id = x.itin_id)")
            else:
                self.con.execute(f"CREATE VIEW {t} AS SELECT * FROM {src}")
        if self.confined:
            self.con.execute("SET lock_configuration = true")

    def refresh(self) -> bool:
        """Point the views at the latest committed snapshot; return whether anything changed."""
        v = self._catalog.data_version()
        if v == self._version:
            return False
        snap, files, tombs, dirty = self._catalog.read_state(self.team)
        lists: dict[str, list[str]] = defaultdict(list)
        for fid, tbl, team, date, path, rows in files:
            name = f"pl_{tbl}_dirty" if (tbl in TRIP_TABLES and fid in dirty) else f"pl_{tbl}"
            lists[name].append(str(self.data_dir / path))
        for t in SCHEMAS:
            names = [f"pl_{t}"] + ([f"pl_{t}_dirty"] if t in TRIP_TABLES else [])
            for name in names:
                self.con.execute(f"SET VARIABLE {name} = ?", [lists.get(name) or [str(empty_file(self.data_dir, t))]])
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
        """A team connection runs one read-only statement at a time: no COPY ... TO (which
        could write inside the team's own directories), no SET, ATTACH, INSTALL or DDL."""
        if not self.confined:
            return
        stmts = self.con.extract_statements(query)
        if len(stmts) != 1 or stmts[0].type not in READ_ONLY:
            raise PermissionError("a team connection runs a single read-only SELECT statement")

    # statements go through refresh() first; everything else is DuckDB's own connection
    def execute(self, query: str, parameters: Any = None):
        self._guard(query)
        self.refresh()
        return self.con.execute(query, parameters)

    def sql(self, query: str, *args, **kw):
        self._guard(query)
        self.refresh()
        return self.con.sql(query, *args, **kw)

    query = sql

    def table(self, name: str):
        self.refresh()
        return self.con.table(name)

    def close(self) -> None:
        self.con.close()
        self._catalog.close()
        if self.confined:
            self._tmp.cleanup()

    def __getattr__(self, name: str):
        return getattr(self.con, name)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def connect(data_dir: Path | str, team: str | None = None, sandbox: bool = False,
            settings: dict | None = None) -> LakeConnection:
    """A DuckDB connection with the lake's views (SPEC §6). ``team`` confines it to one team;
    ``sandbox`` confines it to the lake; ``settings`` are DuckDB options (e.g. memory_limit)."""
    return LakeConnection(data_dir, team, sandbox, settings)


def _q(s: str) -> str:
    return s.replace("'", "''")
