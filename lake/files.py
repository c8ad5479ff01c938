"""Writing and rewriting Parquet files of the lake, in their home under ``files/`` (``lake.hive``
links the live ones into the public tree), through the lake's storage (``lake.storage``: the data
directory or S3)."""
from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from .catalog import NewFile
from .hive import STORE
from .schema import FILE_SCHEMAS, SCHEMAS, TRIP_TABLES
from .storage import open_storage


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


def partition_rel(tbl: str, team: str, date: str) -> str:
    """Where a partition's files live, relative to the lake's root (named like the hive tree, so
    readers prune by path)."""
    return f"{STORE}/{tbl}/team={team}/date={date}"


def partition_dir(data_dir: Path, tbl: str, team: str, date: str) -> Path:
    """The partition's directory in a local lake (``partition_rel`` under the data directory)."""
    return Path(data_dir) / partition_rel(tbl, team, date)


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


def _new_rel(tbl: str, team: str, date: str) -> str:
    return f"{partition_rel(tbl, team, date)}/part-{uuid.uuid4().hex}.parquet"


def write_file(data_dir: Path, tbl: str, team: str, date: str, table: pa.Table) -> NewFile:
    """Write and describe a new data file, durable on return (locally: fsync of the file and of
    the directories created for it)."""
    rel = _new_rel(tbl, team, date)
    table = table.cast(FILE_SCHEMAS[tbl]) if table.schema != FILE_SCHEMAS[tbl] else table
    size = open_storage(data_dir).write_table(rel, table, **_OPTIONS[tbl])
    return NewFile(tbl, team, date, rel, table.num_rows, size)


def merge_files(data_dir: Path, tbl: str, team: str, date: str, rels: list[str]) -> NewFile:
    """One file with the rows of several, read a row group at a time and written in full-size row groups
    (small inputs are gathered first: one row group per small file would compress and scan badly).
    Memory holds about one row group, however large the inputs: a whole input file decompressed
    can be ten times its size on disk."""
    st = open_storage(data_dir)
    rel = _new_rel(tbl, team, date)
    group = _OPTIONS[tbl]["row_group_size"]
    schema = FILE_SCHEMAS[tbl]
    rows = 0
    pending: list[pa.Table] = []
    held = 0
    with st.writer(rel, schema, **_OPTIONS[tbl]) as w:
        def flush() -> None:
            nonlocal held
            if pending:
                w.write_table(pa.concat_tables(pending), row_group_size=group)
                pending.clear()
                held = 0
        for src in rels:
            with st.parquet_file(src) as f:
                for i in range(f.num_row_groups):  # one row group at a time (iter_batches reads ahead)
                    t = f.read_row_group(i, use_threads=False)
                    pending.append(t.cast(schema) if t.schema != schema else t)
                    held += t.num_rows
                    rows += t.num_rows
                    if held >= group:
                        flush()
        flush()
    return NewFile(tbl, team, date, rel, rows, st.size(rel))


def read_file(data_dir: Path, rel: str, columns: list[str] | None = None) -> pa.Table:
    return open_storage(data_dir).read_table(rel, columns=columns)


def ensure_empty_files(data_dir: Path) -> None:
    """Remove the zero-row stand-ins of earlier versions (``lake/_empty/``). Views of an empty
    file list are now typed empty relations (queries/connection.py): a file shared by every
    connection's allowed directories was a file a query could overwrite (the name is kept for
    the compactor, which calls this when it opens a lake)."""
    import shutil
    if not open_storage(data_dir).local:
        return  # an S3 lake never had them
    legacy = Path(data_dir) / "lake" / "_empty"
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
