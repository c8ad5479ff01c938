"""Batch exports of one table, streamed in record batches with a progress bar."""
from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path
from typing import Callable

import orjson
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lake.schema import SCHEMAS

from .connection import connect

FORMATS = ("parquet", "csv", "jsonl")


class ExportError(ValueError):
    pass


def parse_date(s: str | None, what: str) -> dt.date | None:
    if s is None:
        return None
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise ExportError(f"{what} must be a date YYYY-MM-DD, got '{s}'") from None


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


def export(data_dir: Path, table: str, out: Path, fmt: str = "parquet", team: str | None = None,
           date_from: str | None = None, date_to: str | None = None,
           progress: Callable[[str, int, int], None] | None = None, batch_rows: int = 65_536) -> int:
    if table not in SCHEMAS:
        raise ExportError(f"unknown table '{table}' (one of: {', '.join(SCHEMAS)})")
    if fmt not in FORMATS:
        raise ExportError(f"unknown format '{fmt}' (one of: {', '.join(FORMATS)})")
    d0, d1 = parse_date(date_from, "--from"), parse_date(date_to, "--to")
    where, params = ["TRUE"], []
    if d0:
        where.append("date >= ?")
        params.append(d0)
    if d1:
        where.append("date <= ?")
        params.append(d1)
    cond = " AND ".join(where)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.part")
    con = connect(data_dir, team=team)
    try:
        total = con.execute(f"SELECT count(*) FROM {table} WHERE {cond}", params).fetchall()[0][0]
        reader = con.execute(f"SELECT * FROM {table} WHERE {cond} ORDER BY date", params).to_arrow_reader(batch_rows)
        done = 0
        if progress:
            progress(f"export {table}", 0, total)
        with open(tmp, "wb") as f:
            writer = None
            if fmt == "parquet":
                writer = pq.ParquetWriter(f, reader.schema, compression="zstd")
            elif fmt == "csv":
                writer = pacsv.CSVWriter(f, reader.schema)
            for batch in reader:
                if fmt == "jsonl":
                    f.write(b"".join(orjson.dumps(r, default=str) + b"\n" for r in batch.to_pylist()))
                else:
                    writer.write_batch(batch)
                done += batch.num_rows
                if progress:
                    progress(f"export {table}", done, total)
            if writer is not None:
                writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
        return done
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        con.close()

