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
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from pathlib import Path
from typing import Iterable

from pushlake import failpoints
from pushlake.fsutil import DIR_MODE

from .catalog import Catalog, Commit
from .schema import SCHEMAS

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
            for f in c.add_files:
                (out_dir / f.path).unlink(missing_ok=True)
            raise
        failpoints.hit("compactor.before_links")
        t0 = time.perf_counter()
        try:
            publish(out_dir, [f.path for f in c.add_files], c.removed_paths)
        except OSError:
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
    """Link the added files into the hive tree, then unlink the removed ones."""
    out_dir = Path(out_dir)
    for rel in added:
        _link(out_dir, rel)
    for rel in removed:
        _unlink(out_dir, rel)


def _link(out_dir: Path, rel: str) -> bool:
    dst = out_dir / public_path(rel)
    try:
        os.link(out_dir / rel, dst)
    except FileExistsError:
        return False
    except FileNotFoundError:  # the partition's first live file (the file itself missing raises again)
        _mkdirs(dst.parent)
        os.link(out_dir / rel, dst)
    return True


def _mkdirs(d: Path) -> None:
    missing = []
    while not d.exists():
        missing.append(d)
        d = d.parent
    for m in reversed(missing):
        m.mkdir(mode=DIR_MODE, exist_ok=True)


def _unlink(out_dir: Path, rel: str) -> bool:
    dst = out_dir / public_path(rel)
    try:
        dst.unlink()
    except FileNotFoundError:
        return False
    _prune(dst.parent, out_dir / PUBLIC)
    return True


def _prune(d: Path, root: Path) -> None:
    """Remove partition directories left empty (a team's last trip of a day deleted), up to the
    table's directory."""
    while d != root and d.parent != root:
        try:
            d.rmdir()
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                return
            raise
        d = d.parent


def reconcile(out_dir: Path, catalog: Catalog) -> tuple[int, int]:
    """Make the hive tree exactly the catalog's live files: link the missing ones, unlink what
    is not live (a crash between a commit and its links). Returns (linked, unlinked)."""
    out_dir = Path(out_dir)
    with publishing(out_dir):
        live = {public_path(f.path): f.path for f in catalog.live_files() if f.path.startswith(STORE + "/")}
        present = set(public_files(out_dir))
        linked = sum(_link(out_dir, live[p]) for p in live.keys() - present)
        unlinked = 0
        for p in present - live.keys():
            (out_dir / p).unlink(missing_ok=True)
            _prune((out_dir / p).parent, out_dir / PUBLIC)
            unlinked += 1
        # a link that is a copy, not the live file itself (restored from a backup, edited by hand)
        for p in present & live.keys():
            a, b = (out_dir / p).stat(), (out_dir / live[p]).stat()
            if (a.st_ino, a.st_dev) != (b.st_ino, b.st_dev):
                (out_dir / p).unlink()
                _link(out_dir, live[p])
                linked += 1
    return linked, unlinked


def public_files(out_dir: Path) -> list[str]:
    """Every Parquet file under the hive tree of the tables, relative to the data directory
    (anything else found there is left alone)."""
    return _parquet_files(Path(out_dir), PUBLIC)


def store_files(out_dir: Path) -> list[str]:
    """Every Parquet file of the store, relative to the data directory."""
    return _parquet_files(Path(out_dir), STORE)


def _parquet_files(out_dir: Path, tree: str) -> list[str]:
    out = []
    for tbl in SCHEMAS:
        root = out_dir / tree / tbl
        if root.is_dir():
            out += [str(p.relative_to(out_dir)) for p in root.rglob("*.parquet")]
    return out
