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
from .catalog import Catalog, Commit, DeleteRow, FileRow, NewFile
from .plan import Buffer, Plan
from .project import SampleRows
from .routes import Routes
from .schema import SCHEMAS
from .storage import open_storage

# rows of files a step rewrites for the deletions it projects (beyond: position deletes, rewritten
# by maintenance.apply_deletes); 0 defers every deletion's rewrite (benchmarks, tests)
COW_ROWS = int(os.environ.get("PUSHLAKE_COW_ROWS", 4 << 20))


class Writer:
    def __init__(self, out_dir: Path, catalog: Catalog, cow_rows: int | None = None):
        self.out_dir = Path(out_dir)
        self.cow_rows = COW_ROWS if cow_rows is None else cow_rows
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

    def _rewrite(self, f: FileRow, keys: pa.Array, drop: list[tuple[int, int]]) -> tuple[int, NewFile | None, bool]:
        """Copy-on-write: the file without the rows of these keys and its position deletes (a
        file that holds none of them, found by reading its key columns only, is left alone), a
        row group at a time."""
        touched, new = lf.rewrite_without(self.out_dir, f.tbl, f.team, f.date, f.path, keys, drop)
        return f.id, new, touched

    def _find(self, f: FileRow, keys: pa.Array) -> tuple[FileRow, list[tuple[str, int, int]]]:
        return f, lf.positions_of(self.out_dir, f.tbl, f.path, keys)

    def _cow(self, f: FileRow, drop: list[tuple[int, int]]) -> tuple[int, NewFile | None, bool]:
        return f.id, lf.rewrite_rows(self.out_dir, f.tbl, f.team, f.date, f.path, drop), True

    def _build(self, b: Buffer, parts: list, routes: Routes | None) -> NewFile | None:
        if b.tbl == "trip_samples":
            table = _samples(routes, parts)
        else:
            table = pa.Table.from_pylist([row for rows in parts for row in rows], schema=SCHEMAS[b.tbl])
        return lf.write_file(self.out_dir, b.tbl, b.team, b.date, table) if table.num_rows else None

    def _write(self, p: Plan, routes: Routes | None, meanwhile: Callable[[], None] | None) -> None:
        c, st = p.commit, p.stats
        # a partition rewritten anyway for replaced keys drops its deleted trips in that rewrite
        for part in [q for q in p.delete_keys if q in p.remove_keys]:
            p.remove_keys[part] |= p.delete_keys.pop(part)
        files = {part: self.catalog.partition_files(part.tables, part.team, part.date)
                 for part in (*p.remove_keys, *p.delete_keys)}
        known = self.catalog.deletes_of(f.id for fs in files.values() for f in fs)

        def drop(fid: int) -> list[tuple[int, int]]:
            return [(d.row_start, d.row_count) for d in known.get(fid, ())]
        rewrites, finds = [], []
        for part, keys in p.remove_keys.items():
            karr = pa.array(sorted(keys), pa.string())
            rewrites += [self._pool.submit(self._rewrite, f, karr, drop(f.id)) for f in files[part]]
        for part, keys in p.delete_keys.items():
            karr = pa.array(sorted(keys), pa.string())
            finds += [self._pool.submit(self._find, f, karr) for f in files[part]]
        writes = [self._pool.submit(self._build, b, parts, routes) for b, parts in p.buffers.items()]
        cows = []
        try:
            if meanwhile is not None:
                meanwhile()
        finally:
            # every job ends before this step does: if one failed, the caller must still know
            # every file the others wrote, to remove them
            wait(rewrites + writes + finds)
            if all(j.exception() is None for j in finds):
                cows = self._delete_within_budget(c, [j.result() for j in finds], drop)
                wait(cows)
        for job in rewrites + cows:
            if job.exception() is None:
                fid, new, touched = job.result()
                if touched:
                    c.remove_files.add(fid)
                    c.cow[fid] = len(known.get(fid, ()))
                    if new is not None:
                        c.add_files.append(new)
                    st.files_rewritten += 1
        for job in writes:
            if job.exception() is None and job.result() is not None:
                c.add_files.append(job.result())
                st.files_written += 1
        for job in rewrites + writes + finds + cows:
            if job.exception() is not None:
                raise job.exception()
        failpoints.hit("compactor.after_write")

    def _delete_within_budget(self, c: Commit, found: list[tuple[FileRow, list[tuple[str, int, int]]]],
                              drop: Callable[[int], list[tuple[int, int]]]) -> list:
        """The files holding the step's deleted trips are rewritten now, oldest first, up to
        ``cow_rows`` rows in all (at least one file): a deletion reaches plain Parquet readers
        in the step that projects it, and a mass deletion cannot stall the projection. The other
        files get position deletes, which readers skip until ``maintenance.apply_deletes``."""
        budget = self.cow_rows
        jobs = []
        for f, runs in sorted(((f, r) for f, r in found if r), key=lambda x: x[0].id):
            if budget > 0 and (f.rows <= budget or not jobs):
                budget -= f.rows
                jobs.append(self._pool.submit(self._cow, f, drop(f.id) + [(s, n) for _, s, n in runs]))
            else:
                c.deletes += [DeleteRow(f.id, s, n, f.team, k) for k, s, n in runs]
        return jobs

def _samples(routes: Routes, parts: list[SampleRows]) -> pa.Table:
    cols = dict(zip(SampleRows._fields, zip(*parts)))
    common = {name: pa.array(cols[name], SCHEMAS["trip_samples"].field(name).type) for name in SampleRows.COMMON}
    return routes.samples(list(cols["route"]), common)
