"""Log cleaner: rewrites sealed segments without the records of deleted trips.

Like Kafka's compacted topics, surviving records keep their offsets. A segment still being
appended to is left alone (its trips are cleaned once it is sealed); the last segment of a
partition counts as sealed when no receiver holds the partition lock, which we then hold while
rewriting.
"""
from __future__ import annotations

import os
from pathlib import Path

from ingest import record as rec
from ingest.log import fsync_dir, list_partitions, list_segments, scan_segment, try_lock

from .catalog import Catalog


def clean_log(data_dir: Path, catalog: Catalog, older_than: float) -> int:
    targets = catalog.tombstones_to_clean(older_than)
    if not targets:
        return 0
    wanted = set(targets)
    removed = 0
    still_present: set[tuple[str, str]] = set()
    for part in list_partitions(data_dir):
        pdir = Path(data_dir) / "log" / part
        segs = list_segments(pdir)
        lock = try_lock(pdir / ".lock")
        try:
            for i, (_, path) in enumerate(segs):
                sealed = i < len(segs) - 1 or lock is not None
                hits: list[tuple[int, int]] = []
                keys: set[tuple[str, str]] = set()

                def visit(r: rec.Record, start: int, end: int) -> None:
                    if r.kind == rec.KIND_TRIP and (r.team, r.key) in wanted:
                        hits.append((start, end))
                        keys.add((r.team, r.key))
                scan_segment(path, visit)
                if not hits:
                    continue
                if not sealed:
                    still_present |= keys
                    continue
                _rewrite_without(path, hits)
                removed += len(hits)
        finally:
            if lock is not None:
                os.close(lock)
    catalog.mark_log_cleaned([t for t in targets if t not in still_present])
    return removed


def _rewrite_without(path: Path, spans: list[tuple[int, int]]) -> None:
    data = path.read_bytes()
    tmp = path.with_name(path.name + ".clean")
    with open(tmp, "wb") as f:
        pos = 0
        for start, end in sorted(spans):
            f.write(data[pos:start])
            pos = end
        f.write(data[pos:])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
