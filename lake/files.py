"""Writing and rewriting Parquet files of the lake, in their home under ``files/`` (``lake.hive``
links the live ones into the public tree)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pushlake.fsutil import DIR_MODE, create_private, fsync_dir

from .catalog import NewFile
from .hive import STORE
from .schema import FILE_SCHEMAS, SCHEMAS, TRIP_TABLES


KEY_COLUMNS = {**{t: ["itin_id"] for t in TRIP_TABLES}, "crashes": ["crash_id"],
               "diagnoses": ["user_id", "body_sha256"], "trip_deletions": ["itin_id", "event"]}


def key_array(tbl_name: str, t: pa.Table) -> pa.ChunkedArray:
    """The idempotency key of each row, as the receiver computed it (see ingest.keys)."""
    if tbl_name in TRIP_TABLES:
        return t["itin_id"]
    if tbl_name == "crashes":
        return t["crash_id"]
    if tbl_name == "diagnoses":
        return pc.binary_join_element_wise(t["user_id"], t["body_sha256"], ":")
    return pc.binary_join_element_wise(t["itin_id"], t["event"], ":")


def partition_dir(data_dir: Path, tbl: str, team: str, date: str) -> Path:
    """Where a partition's files live (named like the hive tree, so readers prune by path)."""
    return Path(data_dir) / STORE / tbl / f"team={team}" / f"date={date}"


def _parquet_options(tbl: str) -> dict:
    """Dictionary encoding for the string columns only (it costs time and buys nothing on
    measurements), delta encoding for the monotonic sample timestamps, zstd level 3 (the level
    DuckDB uses). Not BYTE_STREAM_SPLIT for floats: it writes 35 % faster and smaller files, but
    DuckDB scans such columns ~3x slower (measured on the samples of the deletions benchmark)."""
    schema = SCHEMAS[tbl]
    strings = [f.name for f in schema if pa.types.is_string(f.type)]
    opts: dict = {"compression": "zstd", "compression_level": 3, "use_dictionary": strings,
                  "row_group_size": 256 * 1024}
    if tbl == "trip_samples":
        opts["column_encoding"] = {"ts": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED"}
    return opts


_OPTIONS = {name: _parquet_options(name) for name in SCHEMAS}


def write_file(data_dir: Path, tbl: str, team: str, date: str, table: pa.Table) -> NewFile:
    """Write, fsync (file and directories) and describe a new data file."""
    d = partition_dir(data_dir, tbl, team, date)
    created = []
    p = d
    while not p.exists():
        created.append(p)
        p = p.parent
    for c in reversed(created):  # owner-only, whatever the umask of the process that embeds this
        c.mkdir(mode=DIR_MODE, exist_ok=True)
    path = create_private(d / f"part-{uuid.uuid4().hex}.parquet")
    table = table.cast(FILE_SCHEMAS[tbl]) if table.schema != FILE_SCHEMAS[tbl] else table
    pq.write_table(table, path, **_OPTIONS[tbl])
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for c in [d] + [c.parent for c in created]:
        fsync_dir(c)
    return NewFile(tbl, team, date, str(path.relative_to(data_dir)), table.num_rows, path.stat().st_size)


def merge_files(data_dir: Path, tbl: str, team: str, date: str, rels: list[str]) -> NewFile:
    """One file with the rows of several, read a row group at a time and written in full-size row groups
    (small inputs are gathered first: one row group per small file would compress and scan badly).
    Memory holds about one row group, however large the inputs: a whole input file decompressed
    can be ten times its size on disk."""
    d = partition_dir(data_dir, tbl, team, date)
    path = create_private(d / f"part-{uuid.uuid4().hex}.parquet")
    group = _OPTIONS[tbl]["row_group_size"]
    schema = FILE_SCHEMAS[tbl]
    rows = 0
    pending: list[pa.Table] = []
    held = 0
    with pq.ParquetWriter(path, schema, **{k: v for k, v in _OPTIONS[tbl].items() if k != "row_group_size"}) as w:
        def flush() -> None:
            nonlocal held
            if pending:
                w.write_table(pa.concat_tables(pending), row_group_size=group)
                pending.clear()
                held = 0
        for rel in rels:
            with pq.ParquetFile(Path(data_dir) / rel) as f:
                for i in range(f.num_row_groups):  # one row group at a time (iter_batches reads ahead)
                    t = f.read_row_group(i, use_threads=False)
                    pending.append(t.cast(schema) if t.schema != schema else t)
                    held += t.num_rows
                    rows += t.num_rows
                    if held >= group:
                        flush()
        flush()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(d)
    return NewFile(tbl, team, date, str(path.relative_to(data_dir)), rows, path.stat().st_size)


def read_file(data_dir: Path, rel: str) -> pa.Table:
    return pq.read_table(Path(data_dir) / rel, schema=None)


def ensure_empty_files(data_dir: Path) -> None:
    """Remove the zero-row stand-ins of earlier versions (``lake/_empty/``). Views of an empty
    file list are now typed empty relations (queries/connection.py): a file shared by every
    connection's allowed directories was a file a query could overwrite (the name is kept for
    the compactor, which calls this when it opens a lake)."""
    import shutil
    legacy = Path(data_dir) / "lake" / "_empty"
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
