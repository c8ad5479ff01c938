"""Batch exports of one table, streamed in record batches: to a file or a stream such as stdout
(CLI, with a progress bar on a terminal) or chunk by chunk to an HTTP response."""
from __future__ import annotations

import datetime as dt
import re
import os
import sys
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lake.schema import SCHEMAS

from .connection import LakeConnection, connect

FORMATS = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "jsonl": "application/x-ndjson"}
EXTENSIONS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
STDOUT_FORMAT = "csv"  # ``--out -`` without ``--format``: text a pipe or a terminal can take


class ExportError(ValueError):
    pass


def parse_date(s: str | None, what: str) -> dt.date | None:
    """YYYY-MM-DD only: ``fromisoformat`` alone also takes week dates (2025-W01-1) and 20250101."""
    if s is None or s == "":
        return None
    try:
        if not _DAY.fullmatch(s):
            raise ValueError
        return dt.date.fromisoformat(s)
    except ValueError:
        raise ExportError(f"{what} must be a date YYYY-MM-DD, got '{s}'") from None


_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def format_for(out: str) -> str:
    """The format an output path asks for by its extension (``-``, stdout: CSV)."""
    if out == "-":
        return STDOUT_FORMAT
    fmt = EXTENSIONS.get(Path(out).suffix.lower())
    if fmt is None:
        raise ExportError(f"cannot tell the format of '{out}' from its extension "
                          f"({', '.join(EXTENSIONS)}): give --format {'|'.join(FORMATS)}")
    return fmt


def progress_bar(stream=sys.stderr) -> Callable[[str, int, int], None]:
    def show(label: str, done: int, total: int) -> None:
        frac = done / total if total else 1.0
        width = 30
        bar = "=" * int(frac * width)
        stream.write(f"\r{label} [{bar:<{width}}] {done}/{total} rows {frac:4.0%}")
        if done >= total:
            stream.write("\n")
        stream.flush()
    return show


class _Chunks:
    """A write-only file object that hands over what was written so far."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.closed = False

    def write(self, b) -> int:
        self.parts.append(bytes(b))
        return len(b)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def stream(con: LakeConnection, table: str, fmt: str, date_from: str | None = None, date_to: str | None = None,
           batch_rows: int = 65_536, on_rows: Callable[[int, int], None] | None = None) -> tuple[int, Iterator[bytes]]:
    """(row count, iterator of the encoded bytes) of ``table`` between two dates, deleted trips
    excluded (it reads the views)."""
    if table not in SCHEMAS:
        raise ExportError(f"unknown table '{table}' (one of: {', '.join(SCHEMAS)})")
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}' (one of: {', '.join(FORMATS)})")
    d0, d1 = parse_date(date_from, "from"), parse_date(date_to, "to")
    where, params = ["TRUE"], []
    if d0:
        where.append("date >= ?")
        params.append(d0)
    if d1:
        where.append("date <= ?")
        params.append(d1)
    cond = " AND ".join(where)
    total = con.execute(f"SELECT count(*) FROM {table} WHERE {cond}", params).fetchall()[0][0]
    reader = con.sql(f"SELECT * FROM {table} WHERE {cond} ORDER BY date", params=params).to_arrow_reader(batch_rows)

    def chunks() -> Iterator[bytes]:
        sink = _Chunks()
        writer = None
        if fmt == "parquet":
            writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), reader.schema, compression="zstd")
        elif fmt == "csv":
            writer = pacsv.CSVWriter(pa.PythonFile(sink, mode="w"), reader.schema)
        done = 0
        if on_rows:
            on_rows(0, total)
        for batch in reader:
            if fmt == "jsonl":
                sink.write(b"".join(orjson.dumps(r, default=str) + b"\n" for r in batch.to_pylist()))
            else:
                writer.write_batch(batch)
            done += batch.num_rows
            if on_rows:
                on_rows(done, total)
            yield sink.take()
        if writer is not None:
            writer.close()
        yield sink.take()
    return total, chunks()


def export(data_dir: Path, table: str, out: Path | str | BinaryIO, fmt: str = "parquet", team: str | None = None,
           date_from: str | None = None, date_to: str | None = None,
           progress: Callable[[str, int, int], None] | None = None, batch_rows: int = 65_536) -> int:
    """Write an export to ``out``: a path, written atomically (a partial file never carries the
    final name), or a binary stream (stdout), written as it comes. Returns the row count."""
    con = connect(data_dir, team=team)
    try:
        on_rows = (lambda done, total: progress(f"export {table}", done, total)) if progress else None
        total, chunks = stream(con, table, fmt, date_from, date_to, batch_rows, on_rows)
        if hasattr(out, "write"):
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            return total
        out = Path(out)
        tmp = out.with_name(f".{out.name}.part")
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return total
    finally:
        con.close()
