"""Keeping the lake small and the disk clean: merging small files, vacuum of replaced files
after the retention, removal of orphans of an interrupted compaction.

Each job commits on its own (a merge is its own snapshot), so each runs beside the projection
or between its steps; a commit that finds its input files already replaced by a concurrent step
fails cleanly (``CatalogConflict``) and is redone later. The log cleaner is ``lake.cleaner``.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
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


def merge_small_files(out_dir: Path, catalog: Catalog, min_files: int = 8, max_groups: int | None = None,
                      budget_bytes: int = 32 << 20) -> int:
    """Merge partitions that accumulated at least ``min_files`` small files from frequent commits.

    Files are streamed one at a time into the merged file, and one merged file takes at most
    ``budget_bytes`` of input: memory stays bounded by one file, and a merge is short enough to
    run between projection steps (``max_groups`` merges per call). Returns files merged."""
    groups: dict[tuple[str, str, str], list[FileRow]] = defaultdict(list)
    for f in catalog.live_files():
        groups[(f.tbl, f.team, f.date)].append(f)
    merged = done = 0
    for (tbl, team, date), fl in groups.items():
        small = sorted((f for f in fl if f.bytes < budget_bytes // 2), key=lambda f: f.bytes)
        if len(small) < min_files:
            continue
        chosen: list[FileRow] = []
        total = 0
        for f in small:
            if chosen and total + f.bytes > budget_bytes:
                break
            chosen.append(f)
            total += f.bytes
        if len(chosen) < 2:
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

