"""The public hive tree: ``lake/<table>/team=<t>/date=<d>/`` holds the live files and nothing else.

Every data file has one home, ``files/<table>/team=<t>/date=<d>/part-<uuid>.parquet``: the
path the catalog records, which pushlake's readers open, and which stays until vacuum deletes
the file after the retention (a reader of an older snapshot never finds it gone). The hive tree
holds a hard link to each live file: a reader that knows nothing of pushlake (a DuckDB glob, a
pyarrow dataset, Polars, Spark) sees exactly the rows of the views. A commit that replaces
files links the new ones, then unlinks the old ones (plain readers may see both for the few
microseconds between, never neither). Links are not fsynced: the tree is derived from the
catalog, and ``reconcile`` rebuilds it at every compactor start (after a crash between a commit
and its links, or a power loss).

On S3 (``lake.storage``) there are no links: the public tree holds server-side copies
(CopyObject, no bytes through this machine), made after each commit, and the copies of replaced
files are deleted (in bulk); ``reconcile`` compares copies by ETag and size. A copy whose source
was vacuumed meanwhile is skipped.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Iterable

from pushlake import failpoints

from .catalog import Catalog, Commit
from .storage import open_storage

STORE = "files"   # homes of the files of every snapshot still within the retention
PUBLIC = "lake"   # links to the live files only

log = logging.getLogger("pushlake.compactor")
_locks: dict[str, threading.Lock] = {}
_stale: set[str] = set()  # data directories whose tree a failed publish left behind
_locks_guard = threading.Lock()


def public_path(rel: str) -> str:
    """``files/<table>/…`` -> ``lake/<table>/…`` (relative to the data directory)."""
    head, sep, rest = rel.partition("/")
    if head != STORE or not sep:
        raise ValueError(f"not a file of the store: {rel}")
    return f"{PUBLIC}/{rest}"


def publishing(out_dir: Path) -> threading.Lock:
    """Held around a commit and its links: the merge thread and the projection commit
    concurrently, and links applied out of commit order could leave a replaced file linked."""
    key = str(Path(out_dir).resolve())
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def commit_and_publish(out_dir: Path, catalog: Catalog, c: Commit) -> float:
    """Commit, then bring the hive tree in step with it; returns the seconds the links took. The files
    the commit adds are removed if it fails (a step retried every few seconds must not fill the
    disk with orphans). Once committed, nothing is undone: a link that fails is logged and the
    tree is reconciled at the next step (``reconcile_if_needed``)."""
    out_dir = Path(out_dir)
    with publishing(out_dir):
        try:
            snap = catalog.commit(c)
        except BaseException:
            open_storage(out_dir).discard([f.path for f in c.add_files])
            raise
        failpoints.hit("compactor.before_links")
        t0 = time.perf_counter()
        try:
            publish(out_dir, [f.path for f in c.add_files], c.removed_paths)
        except Exception:  # noqa: BLE001 - an object store's errors are not all OSError
            log.exception("could not update the hive tree after snapshot %d; reconciling at the next step", snap)
            _stale.add(str(out_dir.resolve()))
    return time.perf_counter() - t0


def reconcile_if_needed(out_dir: Path, catalog: Catalog) -> None:
    """After a failed publish: the whole tree, once it can be done."""
    key = str(Path(out_dir).resolve())
    if key in _stale:
        reconcile(out_dir, catalog)
        _stale.discard(key)


def publish(out_dir: Path, added: Iterable[str], removed: Iterable[str]) -> None:
    """Link the added files into the hive tree, then unlink the removed ones (S3: server-side
    copies, then one bulk delete)."""
    st = open_storage(out_dir)
    st.publish_many([(rel, public_path(rel)) for rel in added])
    st.unpublish_many([public_path(rel) for rel in removed])


def reconcile(out_dir: Path, catalog: Catalog) -> tuple[int, int]:
    """Make the hive tree exactly the catalog's live files: link the missing ones, unlink what
    is not live (a crash between a commit and its links). Returns (linked, unlinked).
    A public file that is not the live file itself (restored from a backup, edited by hand; on
    S3 a copy whose ETag or size differs) is replaced."""
    st = open_storage(out_dir)
    with publishing(out_dir):
        live = {public_path(f.path): f.path for f in catalog.live_files() if f.path.startswith(STORE + "/")}
        present = set(public_files(out_dir))
        linked = st.publish_many([(live[p], p) for p in sorted(live.keys() - present)])
        extra = sorted(present - live.keys())
        st.unpublish_many(extra)
        unlinked = len(extra)
        both = sorted(present & live.keys())
        stale = [p for p, same in zip(both, st.same_objects([(live[p], p) for p in both])) if not same]
        if stale:
            if st.local:  # a link cannot replace a file: unlink first (S3: a copy overwrites)
                for p in stale:
                    (Path(out_dir) / p).unlink()
            linked += st.publish_many([(live[p], p) for p in stale])
    return linked, unlinked


def public_files(out_dir: Path) -> list[str]:
    """Every Parquet file under the hive tree of the tables, relative to the lake's root
    (anything else found there is left alone)."""
    return open_storage(out_dir).list_parquet(PUBLIC)


def store_files(out_dir: Path) -> list[str]:
    """Every Parquet file of the store, relative to the lake's root."""
    return open_storage(out_dir).list_parquet(STORE)
