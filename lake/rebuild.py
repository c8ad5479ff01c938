"""``pushlake rebuild``: project the whole log into a fresh lake (the log is the source of truth).
On S3 (``lake.storage``) only into a new data directory and an empty lake prefix."""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from ingest.log import list_partitions, recover_idle_partitions
from pushlake import location
from pushlake.fsutil import try_lock

from .catalog import Catalog
from .compactor import Compactor, CompactorBusy, StepStats
from .hive import PUBLIC, STORE
from .storage import open_storage


class RebuildRefused(Exception):
    pass


def rebuild(data_dir: Path, into: Path | None = None, progress=None) -> StepStats:
    """Rebuild into ``into`` (a new directory), or in place: build aside, then swap the lake and
    catalog. In place requires the service to be stopped (no receiver, no compactor)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise RebuildRefused(f"no data directory at {data_dir}: the lake is rebuilt from the log kept there")
    if not (data_dir / "log").is_dir():
        raise RebuildRefused(f"no log in {data_dir} (nothing was ever received there): nothing to rebuild from")
    if into is None and location.shared():
        raise RebuildRefused("a shared catalog holds every node's lake: rebuild --into a new data directory "
                             "with --catalog an empty database (and --lake an empty prefix)")
    if into is None and not open_storage(data_dir).local:
        raise RebuildRefused("an S3 lake is not rebuilt in place (objects cannot be swapped like directories): "
                             "rebuild --into a new data directory with --lake an empty prefix")
    recover_idle_partitions(data_dir)  # torn tails cut and durable marks exact before reading
    if into is not None:
        into = Path(into)
        target = open_storage(into)
        if any((into / name).exists() for name in ("catalog.db", "lake", "files")):
            raise RebuildRefused(f"{into} already holds a lake; give an empty directory")
        if not target.local and (target.list_files(STORE) or target.list_files(PUBLIC)):
            raise RebuildRefused(f"{target.url} already holds a lake; give an empty --lake prefix")
        if location.shared():
            cat = Catalog(into)  # creates the schema of an empty database, as the rebuild would
            try:
                used = bool(cat.positions() or cat.live_files())
            finally:
                cat.close()
            if used:
                raise RebuildRefused("the catalog already holds a lake; give --catalog an empty database")
        with Compactor(data_dir, out_dir=into, every_node=location.shared()) as c:
            stats = c.drain(progress)
        _mirror(into)
        return stats
    locks = []
    try:
        for part in list_partitions(data_dir):
            fd = try_lock(data_dir / "log" / part / ".lock")
            if fd is None:
                raise RebuildRefused("a receiver is writing to the log: stop pushlake serve before rebuilding in place")
            locks.append(fd)
        fd = try_lock(data_dir / "compactor.lock")
        if fd is None:
            raise RebuildRefused("a compactor is running: stop pushlake serve before rebuilding in place")
        locks.append(fd)
        tmp = data_dir / ".rebuild"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            with Compactor(data_dir, out_dir=tmp) as c:
                stats = c.drain(progress)
        except CompactorBusy as e:
            raise RebuildRefused(str(e)) from None
        old = data_dir / f".rebuild-old-{int(time.time())}"
        old.mkdir()
        # the Iceberg mirror's metadata names the old files: it is rebuilt from the new catalog
        for name in ("lake", "files", "iceberg", "catalog.db", "catalog.db-wal", "catalog.db-shm"):
            if (data_dir / name).exists():
                os.replace(data_dir / name, old / name)
        for name in ("lake", "files", "catalog.db"):
            if (tmp / name).exists():
                os.replace(tmp / name, data_dir / name)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        _mirror(data_dir)
        return stats
    finally:
        for fd in locks:
            os.close(fd)


def _mirror(data_dir: Path) -> None:
    """The Iceberg mirror of the rebuilt lake, registered afresh (the old one named old files)."""
    from .iceberg import Mirror
    with Mirror(data_dir) as m:
        m.rebuild()
