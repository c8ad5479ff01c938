"""Keeping the lake small and the disk clean: merging small files, vacuum of replaced files
after the retention, removal of orphans of an interrupted compaction.

Each job commits on its own (a merge is its own snapshot), so each runs beside the projection
or between its steps; a commit that finds its input files already replaced by a concurrent step
fails cleanly (``CatalogConflict``) and is redone later. The log cleaner is ``lake.cleaner``.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from pushlake import location

from . import files as lf
from . import hive
from .catalog import Catalog, Commit, FileRow
from .storage import open_storage

log = logging.getLogger("pushlake.compactor")

ORPHAN_GRACE_S = 3600.0  # shared catalog: a file not in it is another node's until this old


def _older(st, rel: str, limit: float) -> bool:
    try:
        return st.mtime(rel) < limit
    except FileNotFoundError:
        return False  # gone meanwhile (another node's maintenance)


def remove_orphans(out_dir: Path, catalog: Catalog, now: float | None = None) -> int:
    """Files of the store the catalog does not know: left by a compaction that crashed before
    its commit. On the embedded default (run under the compactor lock, before any step) every
    such file is one. With a shared catalog (``pushlake.location.shared``: several nodes write
    one lake) a file not in the catalog may be another node's, written and not committed yet:
    only those older than ``ORPHAN_GRACE_S`` are removed (no step takes that long to commit)."""
    st = open_storage(out_dir)
    known = catalog.all_paths()
    candidates = [rel for rel in hive.store_files(out_dir) if rel not in known]
    if candidates and location.shared():
        now = time.time() if now is None else now
        candidates = [rel for rel in candidates if _older(st, rel, now - ORPHAN_GRACE_S)]
        known = catalog.all_paths()  # committed while the mtimes were read
        candidates = [rel for rel in candidates if rel not in known]
    st.delete(candidates)
    n = len(candidates)
    if n:
        log.warning("removed %d orphan file(s) of an interrupted compaction", n)
    return n


TARGET_BYTES = 128 << 20      # a merge writes at most this much ...
TARGET_ROWS = 4 * lf.ROW_GROUP_ROWS  # ... and 1 M rows: a copy-on-write rewrites the whole file (~0.45 s)
GROWTH = 2                    # a file joins a merge only if at most twice the smaller ones together
QUIET_S = 600.0               # a partition not written for this long is merged down to one file


def _window(small: list[FileRow], need: int, budget: int, growth: float) -> list[FileRow]:
    """The merge to make among a partition's files not yet full, sorted by size: the first run
    of at least ``need`` files in which each file is at most ``growth`` times the smaller ones
    together, within ``budget`` bytes and ``TARGET_ROWS`` (none: ``[]``)."""
    for i in range(len(small)):
        chosen, total, rows = [small[i]], small[i].bytes, small[i].rows
        for f in small[i + 1:]:
            if f.bytes > growth * total or total + f.bytes > budget or rows + f.rows > TARGET_ROWS:
                break
            chosen.append(f)
            total += f.bytes
            rows += f.rows
        if len(chosen) >= need:
            return chosen
    return []


def merge_small_files(out_dir: Path, catalog: Catalog, min_files: int = 8, max_groups: int | None = None,
                      budget_bytes: int | None = None, now: float | None = None) -> int:
    """Merge the small files of each partition (one per partition and compaction step) into
    files of 8 to 30 MB (samples: 0.5 to 1 M rows). Returns files merged.

    A merge writes at most ``budget_bytes`` (default ``TARGET_BYTES``) and ``TARGET_ROWS``; a
    file is full at half of them and never merged again. Among the others, a merge takes files
    of similar sizes: sorted by size, each one at most ``GROWTH`` times the smaller ones it
    joins, so that a big file is not rewritten for a few small ones (each rewrite grows a file
    by half at least, so a row is rewritten a few times on its way to a full file; merging the
    smallest files whenever 8 existed rewrote a growing file for every 7 new ones, and stopped
    at 16 MB). A partition still written merges once ``min_files`` such files exist. One not
    written for ``QUIET_S`` (its newest file's name says when: ``files.written_at``; ``now``
    stands for the time) merges all its files that are not full, whatever their sizes, so that
    a finished day ends as one file when it fits: that costs one rewrite per quiet period, and
    only partitions that were written get one.
    Files are streamed a row group at a time into the merged file, so memory stays bounded;
    ``max_groups`` merges per call (the merge thread does one at a time, between steps)."""
    now = time.time() if now is None else now
    budget = TARGET_BYTES if budget_bytes is None else budget_bytes
    groups: dict[tuple[str, str, str], list[FileRow]] = defaultdict(list)
    pending = catalog.files_with_deletes_ids()  # rewritten by apply_deletes first
    for f in catalog.live_files():
        if f.id not in pending:
            groups[(f.tbl, f.team, f.date)].append(f)
    merged = done = 0
    for (tbl, team, date), fl in groups.items():
        small = sorted((f for f in fl if f.bytes < budget // 2 and f.rows < TARGET_ROWS // 2),
                       key=lambda f: f.bytes)
        if len(small) < 2:
            continue
        quiet = max((lf.written_at(f.path) or 0.0) for f in fl) <= now - QUIET_S
        chosen = _window(small, 2, budget, math.inf) if quiet else _window(small, min_files, budget, GROWTH)
        if not chosen:
            continue
        c = Commit("merge", remove_files={f.id for f in chosen})
        c.add_files.append(lf.merge_files(out_dir, tbl, team, date, [f.path for f in chosen]))
        c.summary = f"merged {len(chosen)} files of {tbl}/{team}/{date}"
        hive.commit_and_publish(out_dir, catalog, c)
        merged += len(chosen)
        done += 1
        if max_groups is not None and done >= max_groups:
            break
    return merged


def apply_deletes(out_dir: Path, catalog: Catalog, max_rows: int = 4 << 20) -> int:
    """Copy-on-write of the files holding position deletes (deletions beyond a step's budget,
    ``lake.writer.COW_ROWS``), those of the oldest deletions first, up to ``max_rows`` rows in
    one commit (at least one file); their tombstones are applied once no position delete of
    theirs is left. Returns the files rewritten (0: none was waiting)."""
    chosen = catalog.files_with_deletes(max_rows)
    if not chosen:
        return 0
    dels = catalog.deletes_of(f.id for f in chosen)
    c = Commit("delete", remove_files={f.id for f in chosen},
               cow={f.id: len(dels.get(f.id, ())) for f in chosen})
    try:
        # Parquet work releases the GIL: the files are rewritten side by side (threads started
        # here inherit the merge thread's lower priority)
        with ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="apply-deletes") as pool:
            jobs = [pool.submit(lf.rewrite_rows, out_dir, f.tbl, f.team, f.date, f.path,
                                [(d.row_start, d.row_count) for d in dels.get(f.id, ())]) for f in chosen]
            wait(jobs)
        c.add_files += [j.result() for j in jobs if j.exception() is None and j.result() is not None]
        for j in jobs:
            if j.exception() is not None:
                raise j.exception()
        c.summary = f"applied {sum(map(len, dels.values()))} position deletes in {len(chosen)} files"
        hive.commit_and_publish(out_dir, catalog, c)
    except BaseException:
        open_storage(out_dir).discard([f.path for f in c.add_files])
        raise
    return len(chosen)


def vacuum(out_dir: Path, catalog: Catalog, retention_s: float, now: float | None = None) -> int:
    """Delete files replaced longer than the retention ago; readers keep older snapshots until then."""
    now = time.time() if now is None else now
    expired = catalog.expired_files(now - retention_s)
    if expired:
        # the Iceberg mirror first: its current snapshot must not name a file about to go, and
        # no snapshot older than the retention may stay readable (an erased trip's rows)
        from .iceberg import Mirror
        with Mirror(out_dir, catalog.url) as m:
            m.sync(catalog)
            m.expire(now - retention_s)
    with hive.publishing(out_dir):
        # unlinked at its replacement; after a crash, maybe not
        hive.publish(out_dir, (), [f.path for f in expired if f.path.startswith(hive.STORE + "/")])
        open_storage(out_dir).delete([f.path for f in expired])
    if expired:
        catalog.forget_files([f.id for f in expired])
    return len(expired)

