"""Bringing a lake written by an earlier version to today's layout, once, at the compactor's start.

Layout 1 kept every file, live or replaced, in the hive tree ``lake/`` with ``date`` as a DATE
column (plain hive readers saw superseded and deleted rows; pyarrow refused the date column).
Layout 2 (``lake.hive``) keeps every file in ``files/`` and links the live ones into ``lake/``,
with ``date`` as text in the files. Upgrading moves the files (renames), then rewrites the live
files whose ``date`` is a DATE (each rewrite is a commit of its own, as a merge is; replaced
files wait out the retention as usual). Every stage is idempotent: an upgrade interrupted by a
crash resumes at the next start. The catalog records the layout (``Catalog.layout``: ``PRAGMA
user_version`` on SQLite, a ``meta`` row on PostgreSQL).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pyarrow as pa

from . import files as lf
from . import hive
from .catalog import Catalog, Commit
from .storage import open_storage

log = logging.getLogger("pushlake.compactor")

LAYOUT = 2
_LEGACY = "lake/"


def layout(catalog: Catalog) -> int:
    return catalog.layout()


def upgrade(out_dir: Path, catalog: Catalog, chunk: int = 64) -> int:
    """Upgrade to ``LAYOUT`` if needed (under the compactor lock); returns files rewritten."""
    out_dir = Path(out_dir)
    if layout(catalog) >= LAYOUT:
        return 0
    moved = _move_to_store(out_dir, catalog)
    hive.reconcile(out_dir, catalog)
    rewritten = _text_dates(out_dir, catalog, chunk)
    catalog.set_layout(LAYOUT)
    if moved or rewritten:
        log.warning("lake upgraded to layout %d: %d file(s) moved to %s/, %d rewritten with text dates",
                    LAYOUT, moved, hive.STORE, rewritten)
    return rewritten


def _move_to_store(out_dir: Path, catalog: Catalog) -> int:
    """Renames in the data directory. A lake on S3 was never of layout 1 (it came with layout 2):
    a catalog that names legacy paths there is refused rather than guessed at."""
    rows = catalog.db.execute("SELECT id, path FROM files WHERE substr(path, 1, 5) = 'lake/'").fetchall()
    if rows and not open_storage(out_dir).local:
        raise RuntimeError(f"the catalog names {len(rows)} file(s) of layout 1 (lake/…), which only a local "
                           "lake can hold: upgrade it on its data directory before moving it to S3")
    for _, rel in rows:
        src, dst = out_dir / rel, out_dir / (hive.STORE + "/" + rel[len(_LEGACY):])
        if src.exists() and not dst.exists():
            dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(src, dst)
    with catalog.db.tx():
        catalog.db.executemany("UPDATE files SET path = ? WHERE id = ?",
                               ((hive.STORE + "/" + rel[len(_LEGACY):], fid) for fid, rel in rows))
    return len(rows)


def _text_dates(out_dir: Path, catalog: Catalog, chunk: int) -> int:
    st = open_storage(out_dir)
    old = [f for f in catalog.live_files() if st.exists(f.path)
           and pa.types.is_date(st.read_schema(f.path).field("date").type)]
    for i in range(0, len(old), chunk):
        part = old[i:i + chunk]
        c = Commit("upgrade", remove_files={f.id for f in part},
                   summary=f"{len(part)} file(s) rewritten with the date as text")
        try:
            for f in part:
                c.add_files.append(lf.write_file(out_dir, f.tbl, f.team, f.date, lf.read_file(out_dir, f.path)))
        except BaseException:
            st.discard([f.path for f in c.add_files])
            raise
        hive.commit_and_publish(out_dir, catalog, c)
    return len(old)
