"""Applying a plan: copy-on-write of the files holding replaced or deleted keys, one new file per
table, team and date, then the catalog commit.

Files are written and fsynced first, then one catalog transaction commits them with everything
else the plan decided (log positions included), then the hive tree links the new files and drops
the replaced ones (``lake.hive``): a crash leaves only orphan files, removed on the next start,
or a tree behind its catalog, reconciled on the next start. If the commit fails, the files just written are removed at once, so that a step
retried every few seconds does not fill the disk with orphans. Arrow and Parquet release the
GIL: files are rewritten, built and written on a thread pool. Files are read and written through
the lake's storage (``lake.storage``: the data directory or S3).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable

import pyarrow as pa

from pushlake import failpoints

from . import files as lf
from . import hive
from .catalog import Catalog, FileRow, NewFile
from .plan import Buffer, Plan
from .project import SampleRows
from .routes import Routes
from .schema import SCHEMAS
from .storage import open_storage


class Writer:
    def __init__(self, out_dir: Path, catalog: Catalog):
        self.out_dir = Path(out_dir)
        self.catalog = catalog
        self.storage = open_storage(self.out_dir)
        self._pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="compactor-write")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def write_and_commit(self, p: Plan, routes: Routes | None, failpoint: str = "compactor.before_commit",
                         meanwhile: Callable[[], None] | None = None) -> None:
        """Write the plan's files, then commit it. ``meanwhile`` runs on this thread while the
        pool writes (the compactor reads its next batch then)."""
        try:
            self._write(p, routes, meanwhile)
            failpoints.hit(failpoint)
        except BaseException:
            self.storage.discard([f.path for f in p.commit.add_files])
            raise
        p.stats.links_seconds = hive.commit_and_publish(self.out_dir, self.catalog, p.commit)

    def _rewrite(self, f: FileRow, keys: pa.Array) -> tuple[int, NewFile | None, bool]:
        """Copy-on-write: the file without the rows of these keys (a file that holds none of
        them, found by reading its key columns only, is left alone), a row group at a time."""
        touched, new = lf.rewrite_without(self.out_dir, f.tbl, f.team, f.date, f.path, keys)
        return f.id, new, touched

    def _build(self, b: Buffer, parts: list, routes: Routes | None) -> NewFile | None:
        if b.tbl == "trip_samples":
            table = _samples(routes, parts)
        else:
            table = pa.Table.from_pylist([row for rows in parts for row in rows], schema=SCHEMAS[b.tbl])
        return lf.write_file(self.out_dir, b.tbl, b.team, b.date, table) if table.num_rows else None

    def _write(self, p: Plan, routes: Routes | None, meanwhile: Callable[[], None] | None) -> None:
        c, st = p.commit, p.stats
        rewrites = []
        for part, keys in p.remove_keys.items():
            karr = pa.array(sorted(keys), pa.string())
            rewrites += [self._pool.submit(self._rewrite, f, karr)
                         for f in self.catalog.partition_files(part.tables, part.team, part.date)]
        writes = [self._pool.submit(self._build, b, parts, routes) for b, parts in p.buffers.items()]
        try:
            if meanwhile is not None:
                meanwhile()
        finally:
            # every job ends before this step does: if one failed, the caller must still know
            # every file the others wrote, to remove them
            wait(rewrites + writes)
        for job in rewrites:
            if job.exception() is None:
                fid, new, touched = job.result()
                if touched:
                    c.remove_files.add(fid)
                    if new is not None:
                        c.add_files.append(new)
                    st.files_rewritten += 1
        for job in writes:
            if job.exception() is None and job.result() is not None:
                c.add_files.append(job.result())
                st.files_written += 1
        for job in rewrites + writes:
            if job.exception() is not None:
                raise job.exception()
        failpoints.hit("compactor.after_write")


def _samples(routes: Routes, parts: list[SampleRows]) -> pa.Table:
    cols = dict(zip(SampleRows._fields, zip(*parts)))
    common = {name: pa.array(cols[name], SCHEMAS["trip_samples"].field(name).type) for name in SampleRows.COMMON}
    return routes.samples(list(cols["route"]), common)
