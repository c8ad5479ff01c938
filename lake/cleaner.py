"""Log cleaner: rewrites sealed segments without the records of deleted trips.

Like Kafka's compacted topics, surviving records keep their offsets. A segment still being
appended to is left alone (its trips are cleaned once it is sealed); the last segment of a
partition counts as sealed when no receiver holds the partition lock, which we then hold while
rewriting.

Deletions age past retention all the time, so the cleaner has targets at most of its runs. A
sealed segment gets a small index of the trips it holds (``<segment>.trips``: 8-byte hashes of
team and itinId, stamped with the segment's size, mtime and inode), and a run reads only those
indexes and the segments they point at: not the whole log every 30 seconds. The index holds
hashes, not ids, so that it never names a trip (``pushlake erase --verify`` reads every file); it
is a cache, rebuilt whenever its stamp does not match the segment.
"""
from __future__ import annotations

import hashlib
import os
import struct
from array import array
from pathlib import Path

from ingest import record as rec
from ingest.log import list_partitions, list_segments, scan_segment
from pushlake.fsutil import FILE_MODE, fsync_dir, try_lock

from .catalog import Catalog, TripRef

INDEX_SUFFIX = ".trips"
_INDEX_HEAD = struct.Struct("<8sQQQ")  # magic, segment size, mtime_ns, inode
_MAGIC = b"PLTRIPS1"


def trip_hash(team: str, itin: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{team}\0{itin}".encode(), digest_size=8).digest(), "little", signed=True)


def clean_log(data_dir: Path, catalog: Catalog, older_than: float, stats: dict | None = None,
              node: str = "") -> int:
    """Remove the trip records of tombstones older than ``older_than`` from sealed segments;
    return how many records were removed. ``stats`` (if given) counts segments and scans.
    ``node``: the node whose log this is (each node of a cluster cleans its own log, and the
    catalog records which nodes have cleaned each trip)."""
    targets = catalog.tombstones_to_clean(older_than, node)
    if not targets:
        return 0
    wanted = set(targets)
    hashes = {trip_hash(team, itin) for team, itin in wanted}
    removed = 0
    still_present: set[TripRef] = set()
    counts = {"segments": 0, "scanned": 0, "rewritten": 0}
    for part in list_partitions(data_dir):
        pdir = Path(data_dir) / "log" / part
        segs = list_segments(pdir)
        lock = try_lock(pdir / ".lock")
        try:
            for i, (_, path) in enumerate(segs):
                counts["segments"] += 1
                sealed = i < len(segs) - 1 or lock is not None
                if sealed and hashes.isdisjoint(_trips_of(path, counts)):
                    continue
                hits: list[tuple[int, int]] = []
                keys: set[TripRef] = set()
                kept: set[int] = set()  # the trips left in the segment: its index once rewritten

                def visit(r: rec.Record, start: int, end: int) -> None:
                    if r.kind != rec.Kind.TRIP:
                        return
                    if (t := TripRef(r.team, r.key)) in wanted:
                        hits.append((start, end))
                        keys.add(t)
                    else:
                        kept.add(trip_hash(r.team, r.key))
                counts["scanned"] += 1
                scan_segment(path, visit)
                if not hits:
                    continue
                if not sealed:
                    still_present |= keys
                    continue
                _rewrite_without(path, hits)
                _write_index(path, kept)
                counts["rewritten"] += 1
                removed += len(hits)
        finally:
            if lock is not None:
                os.close(lock)
    catalog.mark_log_cleaned([t for t in targets if t not in still_present], node)
    if stats is not None:
        stats.update(counts)
    return removed


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _trips_of(segment: Path, counts: dict) -> set[int]:
    """The trip hashes of a sealed segment, from its index, or from a scan that writes the index."""
    index = segment.with_name(segment.name + INDEX_SUFFIX)
    stamp = _stamp(segment)
    try:
        data = index.read_bytes()
        magic, *got = _INDEX_HEAD.unpack_from(data)
        if magic == _MAGIC and tuple(got) == stamp:
            return set(array("q", data[_INDEX_HEAD.size:]))
    except (OSError, struct.error, ValueError):
        pass  # missing, torn or stale: rebuilt below
    found: set[int] = set()

    def visit(r: rec.Record, start: int, end: int) -> None:
        if r.kind == rec.Kind.TRIP:
            found.add(trip_hash(r.team, r.key))
    counts["scanned"] += 1
    scan_segment(segment, visit)
    _write_index(segment, found, stamp)
    return found


def _write_index(segment: Path, trips: set[int], stamp: tuple[int, int, int] | None = None) -> None:
    """A cache: not fsynced, and a lost, torn or stale index is rebuilt. ``stamp`` is the one the
    segment had when it was scanned (a segment changed since gets a stale index, never a wrong one)."""
    index = segment.with_name(segment.name + INDEX_SUFFIX)
    tmp = index.with_name(index.name + ".tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as f:
        f.write(_INDEX_HEAD.pack(_MAGIC, *(stamp or _stamp(segment))) + array("q", sorted(trips)).tobytes())
    os.replace(tmp, index)


def _rewrite_without(path: Path, spans: list[tuple[int, int]]) -> None:
    data = path.read_bytes()
    tmp = path.with_name(path.name + ".clean")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as f:
        pos = 0
        for start, end in sorted(spans):
            f.write(data[pos:start])
            pos = end
        f.write(data[pos:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
