"""Writing and rewriting Parquet files of the lake, in their home under ``files/`` (``lake.hive``
links the live ones into the public tree), through the lake's storage (``lake.storage``: the data
directory or S3)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Iterator

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


ROW_GROUP_ROWS = 256 * 1024
# a column whose every value differs within its table (the row's key) gains nothing from a dictionary
UNIQUE_COLUMNS = {"trips": {"itin_id"}, "crashes": {"crash_id"}, "diagnoses": {"body_sha256"}}
JSON_COLUMNS = {"extra", "events"}  # JSON text: no min/max statistics (see _parquet_options)
DELTA_COLUMNS = {"trip_samples": {"ts": "DELTA_BINARY_PACKED", "seq": "DELTA_BINARY_PACKED"}}


def _parquet_options(tbl: str) -> dict:
    """How each table's files are written (measured against DuckDB writing the same rows:
    bench/files_bench.py and bench/README.md, "Parquet files"). No option changes a column's
    type or name.

    - zstd level 3, DuckDB's level.
    - Dictionaries for every text column (``date`` too: it is text in the files), except a
      table's unique key; in ``trip_samples`` for every column but ``ts`` and ``seq``, which are
      DELTA_BINARY_PACKED (monotonic within a trip): sensor channels repeat few values (roll,
      pitch and yaw take a handful, accuracy and screen state fewer), which a dictionary stores
      in a few bits where zstd on 8-byte doubles does not. A dictionary page is capped at 64 KB:
      past it (coordinates, mostly distinct) the column chunk continues PLAIN, which compresses
      better than a large dictionary. Not BYTE_STREAM_SPLIT for floats: it writes 35 % faster
      and smaller files, but DuckDB scans such columns ~3x slower (measured on the samples of
      the deletions benchmark).
    - Pages bounded by bytes (1 MB, the writer's default) rather than by pyarrow's default of
      20,000 rows: each page is compressed alone and carries a header with statistics, so small
      pages cost headers and lose zstd's context.
    - No min/max statistics for JSON columns (``extra``, ``events``): nothing prunes on them,
      and each min and max is a whole document, written in the footer and in every page header.
    - No Arrow schema in the footer (``ARROW:schema``, 1.5 to 5.6 KB a file): Parquet's own
      types read back as the same Arrow types (timestamps in UTC, strings, int32), which
      tests/test_file_layout.py checks.
    """
    schema = FILE_SCHEMAS[tbl]
    delta = DELTA_COLUMNS.get(tbl, {})
    if tbl == "trip_samples":
        dictionary = [f.name for f in schema if f.name not in delta]
    else:
        dictionary = [f.name for f in schema
                      if pa.types.is_string(f.type) and f.name not in UNIQUE_COLUMNS.get(tbl, ())]
    opts: dict = {"compression": "zstd", "compression_level": 3, "use_dictionary": dictionary,
                  "dictionary_pagesize_limit": 64 << 10, "max_rows_per_page": ROW_GROUP_ROWS,
                  "write_statistics": [f.name for f in schema if f.name not in JSON_COLUMNS],
                  "store_schema": False, "row_group_size": ROW_GROUP_ROWS}
    if delta:
        opts["column_encoding"] = dict(delta)
    return opts


_OPTIONS = {name: _parquet_options(name) for name in SCHEMAS}


def _file_id(now: float | None = None) -> str:
    """A new file's name: 32 hex digits like a UUID4's, but a UUIDv7 (RFC 9562), whose first 48
    bits are the time it was written in Unix milliseconds (then the version, 7, and 74 random
    bits). A file's age is then in its name (``written_at``): the merge waits for a partition
    to be quiet without asking the storage or the catalog, and names sort by age."""
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | (((rand >> 62) & 0xFFF) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return f"{value:032x}"


def written_at(rel: str) -> float | None:
    """When a data file was written (Unix seconds), from its name; None for the random names
    (UUID4) of earlier versions."""
    name = rel.rsplit("/", 1)[-1]
    digits = name.removeprefix("part-").removesuffix(".parquet")
    if len(digits) != 32 or digits[12] != "7" or not name.startswith("part-"):
        return None
    try:
        return int(digits[:12], 16) / 1000
    except ValueError:
        return None


def _new_rel(tbl: str, team: str, date: str) -> str:
    return f"{partition_rel(tbl, team, date)}/part-{_file_id()}.parquet"


def write_file(data_dir: Path, tbl: str, team: str, date: str, table: pa.Table) -> NewFile:
    """Write and describe a new data file, durable on return (locally: fsync of the file and of
    the directories created for it)."""
    rel = _new_rel(tbl, team, date)
    table = table.cast(FILE_SCHEMAS[tbl]) if table.schema != FILE_SCHEMAS[tbl] else table
    size = open_storage(data_dir).write_table(rel, table, **_OPTIONS[tbl])
    return NewFile(tbl, team, date, rel, table.num_rows, size)


def _write_stream(data_dir: Path, tbl: str, team: str, date: str, parts: Iterable[pa.Table]) -> NewFile:
    """One new file with the rows of ``parts``, in full row groups (only the last one is
    smaller): parts are gathered until a row group's worth is there, which is written and the
    rest kept for the next (one row group per small input, or a small one after each big
    input, would compress and scan worse). Memory holds about two row groups however many
    parts come."""
    st = open_storage(data_dir)
    rel = _new_rel(tbl, team, date)
    group = _OPTIONS[tbl]["row_group_size"]
    schema = FILE_SCHEMAS[tbl]
    rows = 0
    pending: list[pa.Table] = []
    held = 0
    with st.writer(rel, schema, **_OPTIONS[tbl]) as w:
        def flush(last: bool) -> None:
            nonlocal pending, held
            if not pending:
                return
            t = pa.concat_tables(pending)
            n = t.num_rows if last else t.num_rows - t.num_rows % group
            if n:
                w.write_table(t.slice(0, n), row_group_size=group)
            pending = [t.slice(n)] if n < t.num_rows else []
            held = t.num_rows - n
        for t in parts:
            pending.append(t.cast(schema) if t.schema != schema else t)
            held += t.num_rows
            rows += t.num_rows
            if held >= group:
                flush(last=False)
        flush(last=True)
    return NewFile(tbl, team, date, rel, rows, st.size(rel))


def _row_groups(data_dir: Path, rels: Iterable[str]) -> Iterator[pa.Table]:
    """The row groups of these files, one at a time (``iter_batches`` reads ahead)."""
    st = open_storage(data_dir)
    for src in rels:
        with st.parquet_file(src) as f:
            for i in range(f.num_row_groups):
                yield f.read_row_group(i, use_threads=False)


def merge_files(data_dir: Path, tbl: str, team: str, date: str, rels: list[str]) -> NewFile:
    """One file with the rows of several, read a row group at a time and written in full-size
    row groups. Memory holds about one row group, however large the inputs: a whole input file
    decompressed can be ten times its size on disk."""
    return _write_stream(data_dir, tbl, team, date, _row_groups(data_dir, rels))


def rewrite_without(data_dir: Path, tbl: str, team: str, date: str, rel: str,
                    keys: pa.Array, drop: list[tuple[int, int]] = ()) -> tuple[bool, NewFile | None]:
    """Copy-on-write of one file without the rows of ``keys`` and the ``drop`` row ranges
    (``(start, count)``: its position deletes): (whether it holds any of them, the file that
    replaces it: None if it held nothing else). The key columns are read a row group at a time
    to find out; the rows are then streamed like a merge, so memory holds about one row group
    however large the file (merged files hold millions of rows)."""
    with open_storage(data_dir).parquet_file(rel) as f:
        def removed(i: int, gone: pa.Array | None) -> pa.Array:
            mask = pc.is_in(key_array(tbl, f.read_row_group(i, columns=KEY_COLUMNS[tbl])), value_set=keys)
            return mask if gone is None else pc.or_(mask, gone)
        keep = _keep_masks(f, drop, removed)
        if not keep:
            return False, None
        return True, _stream_kept(data_dir, tbl, team, date, f, keep)


def rewrite_rows(data_dir: Path, tbl: str, team: str, date: str, rel: str,
                 drop: list[tuple[int, int]]) -> NewFile | None:
    """Copy-on-write of one file without its position deletes (``(start, count)`` ranges):
    no key column to read, only the row groups they fall in are filtered."""
    with open_storage(data_dir).parquet_file(rel) as f:
        return _stream_kept(data_dir, tbl, team, date, f, _keep_masks(f, drop, lambda i, gone: gone))


def _keep_masks(f, drop: list[tuple[int, int]], removed) -> dict[int, pa.Array]:
    """Row group -> mask of the rows to keep, for the row groups losing some. ``removed(i,
    gone)`` gives row group ``i``'s rows to remove, ``gone`` being its part of the ``drop``
    ranges (None without any)."""
    gone = _drop_mask(f.metadata.num_rows, drop)
    keep: dict[int, pa.Array] = {}
    start = 0
    for i in range(f.num_row_groups):
        n = f.metadata.row_group(i).num_rows
        mask = removed(i, None if gone is None else gone.slice(start, n))
        if mask is not None and pc.any(mask).as_py():
            keep[i] = pc.invert(mask)
        start += n
    return keep


def _drop_mask(rows: int, drop: Iterable[tuple[int, int]]) -> pa.Array | None:
    """A boolean array over a file's rows, true on the ``(start, count)`` ranges."""
    if not drop:
        return None
    import numpy as np
    m = np.zeros(rows, dtype=bool)
    for start, count in drop:
        m[start:start + count] = True
    return pa.array(m)


def _stream_kept(data_dir: Path, tbl: str, team: str, date: str, f, keep: dict[int, pa.Array]) -> NewFile | None:
    """Write ``f`` again with, in each row group of ``keep``, only the rows its mask keeps
    (None if no row is left)."""
    left = f.metadata.num_rows - sum(len(m) - (pc.sum(m).as_py() or 0) for m in keep.values())
    if left == 0:
        return None

    def kept() -> Iterator[pa.Table]:
        for i in range(f.num_row_groups):
            t = f.read_row_group(i, use_threads=False)
            yield t.filter(keep[i]) if i in keep else t
    return _write_stream(data_dir, tbl, team, date, kept())


def positions_of(data_dir: Path, tbl: str, rel: str, keys: pa.Array) -> list[tuple[str, int, int]]:
    """Where the rows of these keys are in one file: ``(key, start, count)`` for each run of
    consecutive rows of one key (a trip's rows are written together: one run per file), found
    by reading the key column only."""
    import numpy as np
    st = open_storage(data_dir)
    with st.parquet_file(rel) as f:
        col = key_array(tbl, f.read(columns=KEY_COLUMNS[tbl], use_threads=False))
    codes = pc.index_in(col, value_set=keys).to_numpy(zero_copy_only=False)  # NaN where not a key
    idx = np.flatnonzero(~np.isnan(codes))
    if not len(idx):
        return []
    which = codes[idx].astype(np.int64)
    # a run starts where the row is not the next one, or the key changes
    starts = np.flatnonzero(np.concatenate(([True], (np.diff(idx) != 1) | (np.diff(which) != 0))))
    ends = np.append(starts[1:], len(idx))
    names = keys.take(pa.array(which[starts])).to_pylist()
    return [(k, int(idx[a]), int(b - a)) for k, a, b in zip(names, starts, ends)]


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
