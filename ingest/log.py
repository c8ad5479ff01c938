"""Append-only segmented log: the source of truth.

Layout: ``<data>/log/p<N>/<base offset, 20 digits>.log``, or ``<data>/log/<node>.p<N>/…`` on a node
of a cluster (``--node``): partition names are unique across nodes because the catalog they meet
in records positions, versions and FAILED items by partition. One writer process owns a partition
(flock on ``.lock``) and publishes, after each fdatasync, the next offset in ``.durable``: readers
never go past it while a writer holds the partition, so nothing is projected that an OS crash
could still take back (which would let new records reuse offsets the compactor already passed). Only the last segment of a partition is ever appended to; a segment is
sealed when it reaches ``segment_bytes`` or ``segment_age`` seconds. On open, the last segment is
scanned and a torn or corrupt tail is cut off, after being copied aside to ``*.torn-<pos>`` so
that nothing is destroyed, and reported through ``recovery``.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pushlake.fsutil import DIR_MODE, FILE_MODE, fsync_dir, try_lock
from pushlake.location import NODE_NAME, node_name

from . import record as rec

if TYPE_CHECKING:
    from .groupcommit import Item

log = logging.getLogger("pushlake.log")

SEGMENT_SUFFIX = ".log"
DURABLE = ".durable"
DURABLE_FMT = struct.Struct("<Q")
IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024
# the log holds every team's pushes: owner only (FILE_MODE, DIR_MODE), whatever the process umask
# (``pushlake`` sets 0o077 at start; the modes cover code that embeds the writer)


def durable_limit(pdir: Path) -> int | None:
    """The first offset not known to be fsynced (None if the partition has no marker yet).

    Writers publish it after every fdatasync, on open (after recovery) and on close, so it is
    exact whenever no writer is active; after an OS crash it may lag until a writer (or the
    compactor, see ``recover_idle_partitions``) recovers the partition. Readers never take the
    writer's lock to decide this, so they cannot keep a receiver from starting."""
    try:
        raw = (pdir / DURABLE).read_bytes()[:DURABLE_FMT.size]
    except FileNotFoundError:
        return None
    return DURABLE_FMT.unpack(raw)[0] if len(raw) == DURABLE_FMT.size else 0


def segment_name(base: int) -> str:
    return f"{base:020d}{SEGMENT_SUFFIX}"


# names this module writes, matched whole: str.isdigit() also takes non-ASCII digits ('p١' was
# partition 1), and 'p01' or '5.log' are not names a writer makes
SEGMENT_NAME = re.compile(r"([0-9]{20})" + re.escape(SEGMENT_SUFFIX))
PARTITION_NAME = re.compile(rf"(?:(?P<node>{NODE_NAME.pattern})\.)?p(?P<n>0|[1-9][0-9]{{0,5}})")


def partition_name(index: int, node: str | None = None) -> str:
    """``p<index>``, or ``<node>.p<index>`` on a named node (``pushlake.location.node_name``)."""
    node = node_name() if node is None else node
    return f"{node}.p{index}" if node else f"p{index}"


class WrongNode(Exception):
    """The data directory holds the log of another node: its records would be committed under
    names that are not this node's (or left behind, unprojected)."""


def check_node(data_dir: Path, node: str | None = None) -> None:
    """Refuse a data directory whose partitions belong to another node name."""
    node = node_name() if node is None else node
    root = Path(data_dir) / "log"
    if not root.is_dir():
        return
    for p in root.iterdir():
        m = PARTITION_NAME.fullmatch(p.name)
        if m is not None and p.is_dir() and (m["node"] or "") != node:
            owner = f"node {m['node']!r}" if m["node"] else "a single machine (no --node)"
            here = f"--node {node}" if node else "no node name"
            raise WrongNode(f"{root} holds the log of {owner} ({p.name}), not of {here}: start it with "
                            f"{'--node ' + m['node'] if m['node'] else 'no --node'} (or give this node its own --data)")


def list_segments(pdir: Path) -> list[tuple[int, Path]]:
    out = []
    for p in pdir.iterdir() if pdir.exists() else ():
        m = SEGMENT_NAME.fullmatch(p.name)
        if m:
            out.append((int(m[1]), p))
    out.sort()
    return out


def list_partitions(data_dir: Path) -> list[str]:
    root = Path(data_dir) / "log"
    if not root.exists():
        return []
    return sorted(p.name for p in root.iterdir() if PARTITION_NAME.fullmatch(p.name) and p.is_dir())


@dataclass
class ScanResult:
    records: int = 0
    last_offset: int | None = None
    good_bytes: int = 0
    total_bytes: int = 0
    error: str | None = None


def scan_segment(path: Path, on_record=None) -> ScanResult:
    """Walk a segment frame by frame; stop at the first incomplete or corrupt frame."""
    res = ScanResult(total_bytes=path.stat().st_size)
    with open(path, "rb") as f:
        try:
            for start, end, r in rec.frames(f):
                res.records += 1
                res.last_offset = r.offset
                if on_record is not None:
                    on_record(r, start, end)
                res.good_bytes = end
        except rec.CorruptRecord as e:
            res.error = str(e)
    if res.error is None and res.good_bytes < res.total_bytes:
        res.error = f"incomplete record at byte {res.good_bytes}"
    return res


class PartitionBusy(Exception):
    pass


@dataclass
class Recovery:
    segment: str
    kept_bytes: int
    cut_bytes: int
    reason: str
    saved_as: str


class LogWriter:
    """Owner of one partition: appends batches and makes them durable with one fdatasync."""

    def __init__(self, data_dir: Path, partition: int = 0, segment_bytes: int = 128 << 20,
                 segment_age: float = 600.0, floor: int = 0, wait: float = 10.0, node: str | None = None,
                 any_node: bool = False):
        """``floor``: offsets below it are never handed out again (the catalog's position), even
        if the cleaner removed the records that carried them. ``wait``: how long to wait for
        the partition lock, which a cleaner or ``check`` may hold for a moment. ``node``: the
        node's name (default ``pushlake.location.node_name()``), the prefix of the partition's.
        ``any_node``: the directory may hold several nodes' logs (gathered for ``rebuild``)."""
        node = node_name() if node is None else node
        if not any_node:
            check_node(data_dir, node)
        self.partition = partition_name(partition, node)
        self.last_sync_s = 0.0  # the last fdatasync's duration (the receiver's metrics)
        self.dir = Path(data_dir) / "log" / self.partition
        self.segment_bytes = segment_bytes
        self.segment_age = segment_age
        self.dir.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        self.dir.mkdir(mode=DIR_MODE, exist_ok=True)
        deadline = time.monotonic() + wait
        while (fd := try_lock(self.dir / ".lock")) is None:
            if time.monotonic() >= deadline:
                raise PartitionBusy(f"log partition {self.dir} is held by another process")
            time.sleep(0.05)
        self._lock_fd = fd
        self.recovery: Recovery | None = None
        segs = list_segments(self.dir)
        if not segs:
            self.next_offset = max(durable_limit(self.dir) or 0, floor)
            self._open_segment(self.next_offset)
        else:
            base, path = segs[-1]
            res = scan_segment(path)
            if res.error is not None:
                self._cut_tail(path, res)
            self.next_offset = base if res.last_offset is None else res.last_offset + 1
            # a cleaned tail must not give offsets back: the last published mark and the floor
            self.next_offset = max(self.next_offset, durable_limit(self.dir) or 0, floor)
            self._base = base
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._size = res.good_bytes
            self._opened_at = time.monotonic()
        self._durable_fd = os.open(self.dir / DURABLE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        self._publish()

    def _cut_tail(self, path: Path, res: ScanResult) -> None:
        saved = path.with_name(f"{path.name}.torn-{res.good_bytes}")
        with open(path, "rb") as f:
            f.seek(res.good_bytes)
            tail = f.read()
        with open(os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE), "wb") as f:
            f.write(tail)
            f.flush()
            os.fsync(f.fileno())
        with open(path, "r+b") as f:
            f.truncate(res.good_bytes)
            os.fsync(f.fileno())
        fsync_dir(self.dir)
        self.recovery = Recovery(path.name, res.good_bytes, res.total_bytes - res.good_bytes, res.error or "", saved.name)
        log.warning("log %s: truncated %d-byte torn tail of %s at byte %d (%s); tail saved as %s",
                    self.partition, self.recovery.cut_bytes, path.name, res.good_bytes, res.error, saved.name)

    def _open_segment(self, base: int) -> None:
        path = self.dir / segment_name(base)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, FILE_MODE)
        fsync_dir(self.dir)
        self._base = base
        self._size = 0
        self._opened_at = time.monotonic()

    def append(self, items: list[Item]) -> int:
        """Append items (kind, received_us, team, key, body) and fdatasync; return the first offset.

        On a write error the segment is cut back to its last durable size so that a later batch
        never lands behind a half-written frame."""
        first = self.next_offset
        parts: list[bytes] = []
        for i, (kind, ts, team, key, body) in enumerate(items):
            parts.append(rec.frame_head(kind, first + i, ts, team, key, body))
            parts.append(body)
        try:
            size = write_all(self._fd, parts)
            t0 = time.perf_counter()
            os.fdatasync(self._fd)
            self.last_sync_s = time.perf_counter() - t0
        except OSError:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass
            raise
        self._size += size
        self.next_offset = first + len(items)
        self._publish()
        self.maybe_roll()
        return first

    def _publish(self) -> None:
        os.pwrite(self._durable_fd, DURABLE_FMT.pack(self.next_offset), 0)

    def maybe_roll(self) -> bool:
        """Seal the active segment if it is big or old enough; return whether it rolled."""
        if self._size == 0:
            return False
        if self._size < self.segment_bytes and time.monotonic() - self._opened_at < self.segment_age:
            return False
        os.fsync(self._fd)
        os.close(self._fd)
        self._open_segment(self.next_offset)
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._publish()
            os.close(self._durable_fd)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def write_all(fd: int, parts: list[bytes]) -> int:
    """Write the buffers in order with as few ``writev`` calls as the kernel allows (it may
    take fewer bytes, or fewer than all buffers: at most IOV_MAX of them per call)."""
    total = 0
    i, skip = 0, 0  # next buffer, and bytes of it already written
    while i < len(parts):
        chunk = parts[i:i + IOV_MAX]
        if skip:
            chunk[0] = memoryview(chunk[0])[skip:]
        n = os.writev(fd, chunk)
        if n == 0:
            raise OSError(errno.EIO, "writev wrote nothing")
        total += n
        n += skip
        skip = 0
        while i < len(parts) and n >= len(parts[i]):
            n -= len(parts[i])
            i += 1
        skip = n
    return total


def recover_idle_partitions(data_dir: Path) -> list[Recovery]:
    """Run a writer's recovery (torn tail cut, mark published) on every partition no receiver
    holds, so that ``compact`` and ``rebuild`` after a crash see the whole durable log."""
    found = []
    for part in list_partitions(data_dir):
        m = PARTITION_NAME.fullmatch(part)
        try:
            w = LogWriter(data_dir, int(m["n"]), wait=0, node=m["node"] or "", any_node=True)
        except PartitionBusy:
            continue
        if w.recovery:
            found.append(w.recovery)
        w.close()
    return found


@dataclass
class LogReader:
    """Sequential reader of one partition that remembers where it stopped.

    It stops quietly at an incomplete frame (the writer may be mid-append) and raises on a
    complete frame whose CRC is wrong, which is real corruption."""
    data_dir: Path
    partition: str
    _seg_base: int | None = None
    _pos: int = 0
    _next: int = 0
    full: bool = False  # the last read stopped at a limit: more records are waiting

    @property
    def dir(self) -> Path:
        return Path(self.data_dir) / "log" / self.partition

    def reset(self) -> None:
        self._seg_base = None

    def read(self, from_offset: int, max_records: int = 10_000, max_bytes: int = 64 << 20) -> list[rec.Record]:
        self.full = False
        segs = list_segments(self.dir)
        if not segs:
            return []
        limit = durable_limit(self.dir)
        if limit is not None and limit <= from_offset:
            return []
        if self._seg_base is None or self._next != from_offset or all(b != self._seg_base for b, _ in segs):
            # (re)position: the last segment whose base is <= from_offset
            cand = [b for b, _ in segs if b <= from_offset] or [segs[0][0]]
            self._seg_base, self._pos, self._next = cand[-1], 0, from_offset
        out: list[rec.Record] = []
        nbytes = 0
        bases = [b for b, _ in segs]
        idx = bases.index(self._seg_base)
        while idx < len(segs) and len(out) < max_records and nbytes < max_bytes:
            base, path = segs[idx]
            with open(path, "rb") as f:
                try:
                    for start, end, r in rec.frames(f, self._pos):
                        if limit is not None and r.offset >= limit:
                            return out  # written, not yet fsynced: read it next time
                        self._pos = end
                        if r.offset < from_offset:
                            continue
                        out.append(r)
                        nbytes += end - start - rec.FRAME_SIZE
                        self._next = r.offset + 1
                        if len(out) >= max_records or nbytes >= max_bytes:
                            break
                except rec.CorruptRecord as e:
                    raise rec.CorruptRecord(f"{path.name}: {e}") from None
            if len(out) >= max_records or nbytes >= max_bytes:
                self.full = True
                break
            if idx + 1 < len(segs):
                # move on only if this segment is sealed (a later one exists)
                idx += 1
                self._seg_base, self._pos = segs[idx][0], 0
            else:
                break
        return out


def iter_all_records(data_dir: Path, partition: str) -> Iterator[tuple[Path, rec.Record]]:
    """Every valid record of a partition, in order."""
    pdir = Path(data_dir) / "log" / partition
    for _, path in list_segments(pdir):
        found: list[rec.Record] = []
        scan_segment(path, lambda r, s, e: found.append(r))
        for r in found:
            yield path, r


def read_at(data_dir: Path, partition: str, offsets: list[int]) -> dict[int, rec.Record]:
    """The records at the given offsets (absent if the cleaner removed them), one pass per segment."""
    want = sorted(set(offsets))
    if not want:
        return {}
    segs = list_segments(Path(data_dir) / "log" / partition)
    out: dict[int, rec.Record] = {}
    for i, (base, path) in enumerate(segs):
        nxt = segs[i + 1][0] if i + 1 < len(segs) else None
        mine = {o for o in want if o >= base and (nxt is None or o < nxt)}
        if not mine:
            continue
        with open(path, "rb") as f:
            try:
                for _, _, r in rec.frames(f, want=lambda o: o in mine):
                    if r is not None:
                        out[r.offset] = r
                        mine.discard(r.offset)
                    if not mine:
                        break
            except rec.CorruptRecord:
                pass  # what lies beyond cannot be read: those items stay unreadable
    return out
