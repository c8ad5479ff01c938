"""``pushlake check``: the log's CRCs, the catalog against the files (in the data directory or
on S3: ``lake.storage``), and the FAILED items."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ingest.log import list_partitions, list_segments, scan_segment
from pushlake import location
from pushlake.fsutil import try_lock

from . import hive, status
from .catalog import Catalog, FileRow
from .storage import open_storage


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    failed: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class NoData(Exception):
    """The data directory given is not one: a wrong path, not a healthy empty lake."""


def check(data_dir: Path) -> Report:
    """Raises NoData for a missing directory, or one with neither a log nor a catalog (with a
    shared catalog, an empty data directory is a reader's: its catalog is checked)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise NoData(f"no data directory at {data_dir}")
    if not location.shared() and not (data_dir / "log").is_dir() and not (data_dir / "catalog.db").exists():
        raise NoData(f"no pushlake data in {data_dir}: no log and no catalog.db "
                     "(a reader of a shared deployment needs --catalog postgresql://… or $PUSHLAKE_CATALOG)")
    rep = Report()
    log_records = 0
    next_offsets: dict[str, int] = {}
    for part in list_partitions(data_dir):
        pdir = data_dir / "log" / part
        lock = try_lock(pdir / ".lock")
        try:
            segs = list_segments(pdir)
            for i, (base, path) in enumerate(segs):
                res = scan_segment(path)
                log_records += res.records
                if res.last_offset is not None:
                    next_offsets[part] = res.last_offset + 1
                if res.error:
                    last_active = i == len(segs) - 1 and lock is None
                    if last_active and res.error.startswith("incomplete"):
                        rep.warnings.append(f"log {part}/{path.name}: {res.error} (a receiver is appending)")
                    else:
                        rep.errors.append(f"log {part}/{path.name}: {res.error}")
            for torn in sorted(pdir.glob("*.torn-*")):
                rep.warnings.append(f"log {part}: torn tail cut at recovery kept as {torn.name} "
                                    f"({torn.stat().st_size} bytes)")
        finally:
            if lock is not None:
                os.close(lock)
    rep.info["log_records"] = log_records
    if not (data_dir / "catalog.db").exists() and not location.shared():
        rep.info["live_files"] = 0
        return rep
    cat = Catalog(data_dir, readonly=True)
    try:
        positions = cat.positions()
        for part, pos in positions.items():
            if pos > next_offsets.get(part, 0):
                rep.errors.append(f"catalog position {part}@{pos} is past the end of the log ({next_offsets.get(part, 0)})")
        for part, end in next_offsets.items():
            rep.info[f"lag_{part}"] = max(0, end - positions.get(part, 0))
        _check_compactor(data_dir, rep, {p: next_offsets.get(p, 0) for p in {*next_offsets, *positions}},
                         positions)
        live = cat.live_files()
        rep.info["live_files"] = len(live)
        rows_by_table: dict[str, int] = {}
        st = open_storage(data_dir)
        where = "on disk" if st.local else f"in {st.url}"
        for f in live:
            try:
                size = st.size(f.path)
            except FileNotFoundError:
                rep.errors.append(f"catalog file missing {where}: {f.path}")
                continue
            if size != f.bytes:
                rep.errors.append(f"{f.path}: size {size} differs from the catalog's {f.bytes}")
                continue
            try:
                with st.parquet_file(f.path) as pf:
                    n = pf.metadata.num_rows
            except Exception as e:  # noqa: BLE001 - any unreadable footer is a finding
                rep.errors.append(f"{f.path}: unreadable Parquet ({e})")
                continue
            if n != f.rows:
                rep.errors.append(f"{f.path}: {n} rows, catalog says {f.rows}")
            rows_by_table[f.tbl] = rows_by_table.get(f.tbl, 0) + f.rows
        rep.info["rows"] = rows_by_table
        known = cat.all_paths()
        for rel in hive.store_files(data_dir):
            if rel not in known:
                rep.warnings.append(f"file not in the catalog (orphan of an interrupted compaction): {rel}")
        _check_hive_tree(data_dir, rep, live)
        for f in cat.failed_items("FAILED"):
            rep.failed.append({"id": f.id, "kind": f.kind, "team": f.team, "key": f.key, "part": f.part,
                               "offset": f.offset, "reason": f.reason})
    finally:
        cat.close()
    return rep


def _check_hive_tree(data_dir: Path, rep: Report, live: list[FileRow]) -> None:
    """The public tree must be the live files: what plain Parquet readers see. A difference is a
    warning: the compactor reconciles the tree at its next start (or a step is committing now)."""
    want = {hive.public_path(f.path) for f in live if f.path.startswith(hive.STORE + "/")}
    have = set(hive.public_files(data_dir))
    for rel in sorted(want - have)[:20]:
        rep.warnings.append(f"live file not in the hive tree (plain readers miss it until the compactor starts): {rel}")
    for rel in sorted(have - want)[:20]:
        rep.warnings.append(f"hive tree file that is not live (plain readers see it until the compactor starts): {rel}")


def _check_compactor(data_dir: Path, rep: Report, ends: dict[str, int], positions: dict[str, int]) -> None:
    """A running compactor that fails or does not advance is an error (exit 1); a backlog with
    no compactor running, or a last run that ended failing, is a warning."""
    lock = try_lock(data_dir / "compactor.lock")
    running = lock is None
    if lock is not None:
        os.close(lock)
    st = status.read(data_dir)
    behind = sum(max(0, e - positions.get(p, 0)) for p, e in ends.items())
    if st is not None:
        st.positions = positions  # the catalog's, fresher than the status file's
    problems, _ = status.problems(st, ends)
    if running:
        rep.errors.extend(problems)
    elif st is not None and st.failing_since is not None:
        (rep.errors if behind else rep.warnings).append(
            f"the last compactor run ended failing ({st.failures} failed steps): {st.last_error}")
    if behind and not running:
        rep.warnings.append(f"{behind} log {'record' if behind == 1 else 'records'} not compacted yet and no compactor running "
                            "(`pushlake compact`, or `pushlake serve`)")
    if st is not None:
        rep.info["compactor"] = "running" if running else "stopped"
