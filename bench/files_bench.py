"""Parquet files benchmark: the bytes pushlake's lake takes on disk against DuckDB writing the same rows.

Run by hand, from the repository root:
  .venv/bin/python -m bench.files_bench [--quick] [--trips N] [--teams T] [--days D]
                                        [--routes same|distinct|both] [--scan-runs N]
                                        [--workdir DIR] [--keep] [--results-dir DIR]

Issue 14, point 3 (smaller files): pushlake's Parquet against DuckDB's for the same rows (row
groups, encodings, dictionaries, statistics, compression, number of files), before and after
maintenance.

Why it is built this way:
- Bytes on disk are deterministic: nothing here is timed except the optional scan at the end, so
  the size rows do not move with the load of the shared machine.
- pushlake's side is the real path: ``bench.gen`` trips appended to a log (what the receiver
  leaves), ``Compactor.drain()`` with its default batch settings (``pushlake compact
  --no-maintenance``), measured "as drained"; then maintenance, ``maintenance.merge_small_files``
  until it finds nothing to merge, with ``now`` past the quiet period (``QUIET_S``): the state the
  merge thread of ``serve`` reaches once the partitions are no longer written, measured "after
  maintenance". What is measured is the live files (the public tree ``lake/<table>/``).
- DuckDB writes the same rows: it reads pushlake's views (``queries.connect``) and copies each
  table with ``COPY (SELECT * REPLACE (CAST(date AS VARCHAR) AS date) FROM <table>) TO ...``
  (``date`` as the files hold it), three ways: (a) ``PARTITION_BY (team_id, date),
  WRITE_PARTITION_COLUMNS true, COMPRESSION zstd``: the same partitions and the same columns in
  each file as pushlake, with zstd as pushlake uses (the compaction benchmark's peer, and the
  issue's): the headline; (b) ``PARTITION_BY (team_id, date)`` with DuckDB's defaults (snappy, the
  partition columns only in the paths); (c) DuckDB's defaults, one file per table.
- Compared per table: bytes, files, row groups, rows, footer bytes, and per column the
  compressed and uncompressed bytes, encodings and whether statistics are set (from
  ``pyarrow.parquet.ParquetFile(...).metadata``), kept in the result file (``details``).
- Routes: ``bench.gen`` gives every trip the fixture's route (only the timestamps move), so a
  compressor that sees several trips at once finds whole routes repeated, which real routes are
  not. ``--routes distinct`` (with ``both``, the default, both are measured) gives each trip its
  own route: latitude, longitude and elevation moved by a per-trip offset, speed and heading
  jittered (at the fixture's precision), and every other sensor channel (accuracy, screen,
  activity, roll, pitch, yaw, gyroscope) shuffled within the trip (same values, another order).
- Scan (``--scan-runs``, 0 to skip): the read side of the encodings. One DuckDB statement that
  decodes every column of ``trip_samples``, over pushlake's files and over DuckDB's partitioned
  files (a), interleaved round by round after a warm-up; the median of each.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from bench.common import (Workdir, add_results_arg, dir_bytes, interleaved, median, print_rows, row, run_main,
                          write_result)

NAME = "files"
TABLES = ("trips", "trip_samples", "trip_events")
DEFAULT_TRIPS = 4_000   # the size the row was measured at (~560 MB of bodies)
QUICK_TRIPS = 120
RECEIVED_US = 1_767_225_600_000_000  # 2026-01-01: fixed, so that runs are byte for byte alike
DUCK = {
    "partitioned": "PARTITION_BY (team_id, date), WRITE_PARTITION_COLUMNS true, COMPRESSION zstd",
    "partitioned-defaults": "PARTITION_BY (team_id, date)",
    "one-file-defaults": "",
}
PEER = "DuckDB COPY PARTITION_BY zstd"


# ---------------------------------------------------------------- input

def distinct_routes(bodies: Iterator[tuple[str, str, bytes]], seed: int = 7) -> Iterator[tuple[str, str, bytes]]:
    """Each trip its own route (see the module docstring), deterministically."""
    import numpy as np
    import orjson
    rng = np.random.default_rng(seed)
    for team, itin, body in bodies:
        t = orjson.loads(body)
        r = dict(t["route"])
        n = len(r["gpsDate"])
        d = rng.normal(0.0, 0.3, 2)

        def arr(name: str) -> "np.ndarray":
            return np.asarray(r[name], dtype=np.float64)
        r["latitude"] = np.round(arr("latitude") + d[0], 6).tolist()
        r["longitude"] = np.round(arr("longitude") + d[1], 6).tolist()
        r["gpsElevation"] = np.round(arr("gpsElevation") + rng.normal(0, 100), 0).tolist()
        r["gpsVelocity"] = np.round(np.maximum(arr("gpsVelocity") + rng.normal(0, 2, n), 0), 1).tolist()
        r["gpsHeading"] = np.round((arr("gpsHeading") + rng.normal(0, 3, n)) % 360, 1).tolist()
        for name in ("gpsAccuracy", "screenLocked", "activityValue", "roll", "pitch", "yaw", "gyroscopeNormVar"):
            if name in r:
                r[name] = rng.permutation(arr(name)).tolist()
        t["route"] = r
        yield team, itin, orjson.dumps(t)


def build(data: Path, n: int, teams: int, days: int, routes: str) -> int:
    """The log pushlake's compactor drains: ``n`` trips of ``bench.gen``."""
    from bench.gen import trip_bodies, write_log
    bodies = trip_bodies(n, teams=teams, days=days)
    if routes == "distinct":
        bodies = distinct_routes(bodies)
    return write_log(data, bodies, received_us=RECEIVED_US)


# ---------------------------------------------------------------- Parquet metadata

def parquet_stats(paths: list[Path]) -> dict[str, Any]:
    """Bytes, files, row groups, rows, footers and per-column figures of a set of Parquet files."""
    import pyarrow.parquet as pq
    out: dict[str, Any] = {"bytes": 0, "files": len(paths), "row_groups": 0, "rows": 0, "footer_bytes": 0,
                           "columns": {}}
    cols: dict[str, dict[str, Any]] = out["columns"]
    for p in paths:
        md = pq.ParquetFile(p).metadata
        out["bytes"] += p.stat().st_size
        out["row_groups"] += md.num_row_groups
        out["rows"] += md.num_rows
        out["footer_bytes"] += md.serialized_size
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            for j in range(rg.num_columns):
                c = rg.column(j)
                e = cols.setdefault(c.path_in_schema, {"compressed": 0, "uncompressed": 0, "encodings": set(),
                                                        "compression": set(), "stats": set(), "dictionary": set()})
                e["compressed"] += c.total_compressed_size
                e["uncompressed"] += c.total_uncompressed_size
                e["encodings"].update(c.encodings)
                e["compression"].add(c.compression)
                e["stats"].add(bool(c.is_stats_set and c.statistics.has_min_max))
                e["dictionary"].add(bool(c.has_dictionary_page))
    for e in cols.values():
        for k in ("encodings", "compression", "stats", "dictionary"):
            e[k] = sorted(e[k])
    return out


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).rglob("*.parquet") if p.is_file())


def lake_stats(data: Path) -> dict[str, dict]:
    return {t: parquet_stats(files_of(data / "lake" / t)) for t in TABLES}


# ---------------------------------------------------------------- the two sides

def drain(data: Path) -> dict[str, Any]:
    from lake.compactor import Compactor
    t = time.perf_counter()
    with Compactor(data) as c:
        s = c.drain()
    return {"records": s.records, "stored": s.stored, "failed": s.failed, "seconds": time.perf_counter() - t}


def maintain(data: Path) -> dict[str, Any]:
    """Merges until none is left, as the merge thread of ``serve`` does once the partitions are
    quiet (``now`` = the last write + ``QUIET_S``)."""
    from lake import maintenance
    from lake.catalog import Catalog
    cat = Catalog(data)
    try:
        now = time.time() + maintenance.QUIET_S
        merges = merged = 0
        t = time.perf_counter()
        while True:
            n = maintenance.merge_small_files(data, cat, max_groups=1, now=now)
            if not n:
                break
            merges += 1
            merged += n
        return {"merges": merges, "files_merged": merged, "seconds": time.perf_counter() - t}
    finally:
        cat.close()


def duckdb_copies(data: Path, out: Path) -> dict[str, dict[str, dict]]:
    """DuckDB writes the rows of pushlake's views, each way of ``DUCK``."""
    import queries
    res: dict[str, dict[str, dict]] = {}
    with queries.connect(data) as con:
        for way, opts in DUCK.items():
            res[way] = {}
            for t in TABLES:
                dest = out / way / (t if "PARTITION_BY" in opts else f"{t}.parquet")
                dest.parent.mkdir(parents=True, exist_ok=True)
                sep = ", " if opts else ""
                con.execute(f"COPY (SELECT * REPLACE (CAST(date AS VARCHAR) AS date) FROM {t}) "
                            f"TO '{dest}' (FORMAT parquet{sep}{opts})")
                res[way][t] = parquet_stats(files_of(dest) if dest.is_dir() else [dest])
    return res


def counts(data: Path) -> dict[str, int]:
    import queries
    with queries.connect(data) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def scan(pl_files: list[Path], dk_files: list[Path], runs: int) -> dict[str, float]:
    """Median ms of one statement that decodes every column of trip_samples, on each side."""
    import duckdb
    cols = ["latitude", "longitude", "speed_kmh", "elevation_m", "accuracy_m", "heading_deg", "screen_locked",
            "activity_value", "roll", "pitch", "yaw", "gyroscope_norm_var"]
    q = ("SELECT count(*), count(DISTINCT itin_id), max(seq), max(ts), max(received_at), max(log_offset), "
         + ", ".join(f"sum({c})" for c in cols) + " FROM read_parquet(?)")
    con = duckdb.connect()
    results: dict[str, Any] = {}

    def run(name: str, files: list[Path]):
        def f() -> None:
            results[name] = con.execute(q, [[str(p) for p in files]]).fetchone()
        return f
    ms = interleaved({"pushlake": run("pushlake", pl_files), "duckdb": run("duckdb", dk_files)}, runs)
    con.close()
    if results["pushlake"][:4] != results["duckdb"][:4]:
        raise AssertionError(f"the scans disagree: {results}")
    return {k: median(v) for k, v in ms.items()}


# ---------------------------------------------------------------- one pass

def measure(work: Path, n: int, teams: int, days: int, routes: str, scan_runs: int) -> dict[str, Any]:
    data = work / f"pushlake-{routes}"
    if data.exists():
        shutil.rmtree(data)
    t = time.perf_counter()
    build(data, n, teams, days, routes)
    print(f"[{routes} routes] {n} trips generated in {time.perf_counter() - t:.1f} s "
          f"(log {dir_bytes(data / 'log') / 1e6:.0f} MB); draining ...", file=sys.stderr, flush=True)
    d = drain(data)
    if d["failed"] or d["stored"] != n:
        raise AssertionError(f"pushlake stored {d['stored']} of {n} trips ({d['failed']} failed)")
    drained = lake_stats(data)
    m = maintain(data)
    after = lake_stats(data)
    print(f"[{routes} routes] drained in {d['seconds']:.1f} s, {m['merges']} merges in {m['seconds']:.1f} s; "
          "DuckDB copies ...", file=sys.stderr, flush=True)
    duck = duckdb_copies(data, work / f"duckdb-{routes}")
    rows = counts(data)
    for t in TABLES:
        for label, st in [("as drained", drained[t]), ("after maintenance", after[t])] + \
                         [(f"DuckDB {w}", duck[w][t]) for w in DUCK]:
            if st["rows"] != rows[t]:
                raise AssertionError(f"{t} {label}: {st['rows']} rows, the view has {rows[t]}")
    out: dict[str, Any] = {"routes": routes, "rows": rows, "drain": d, "maintenance": m,
                           "pushlake_as_drained": drained, "pushlake_after_maintenance": after, "duckdb": duck}
    if scan_runs:
        out["scan_ms"] = scan(files_of(data / "lake" / "trip_samples"),
                              files_of(work / f"duckdb-{routes}" / "partitioned" / "trip_samples"), scan_runs)
    return out


def _mb(n: float) -> float:
    return n / 1e6


def rows_of(p: dict[str, Any]) -> list[dict]:
    tag = "gen.py routes" if p["routes"] == "same" else "distinct routes"
    after, drained, peer = p["pushlake_after_maintenance"], p["pushlake_as_drained"], p["duckdb"]["partitioned"]
    total = lambda s, k="bytes": sum(s[t][k] for t in TABLES)  # noqa: E731
    out = [row(f"Parquet MB, trip tables, after maintenance ({tag})", "MB", PEER, _mb(total(peer)),
               _mb(total(after)), higher_is_better=False, target=1.0)]
    out += [row(f"Parquet MB, {t}, after maintenance ({tag})", "MB", PEER, _mb(peer[t]["bytes"]),
                _mb(after[t]["bytes"]), higher_is_better=False) for t in TABLES]
    out.append(row(f"Parquet MB, trip tables, as drained ({tag})", "MB", PEER, _mb(total(peer)), _mb(total(drained)),
                   higher_is_better=False))
    out += [row(f"Parquet MB, {t}, as drained ({tag})", "MB", PEER, _mb(peer[t]["bytes"]),
                _mb(drained[t]["bytes"]), higher_is_better=False) for t in TABLES]
    out.append(row(f"Parquet files, trip tables, after maintenance ({tag})", "files", PEER, total(peer, "files"),
                   total(after, "files"), higher_is_better=False))
    for way, label in (("partitioned-defaults", "DuckDB PARTITION_BY defaults"),
                       ("one-file-defaults", "DuckDB defaults, one file")):
        out.append(row(f"Parquet MB, trip tables, after maintenance ({tag})", "MB", label,
                       _mb(total(p["duckdb"][way])), _mb(total(after)), higher_is_better=False))
    if "scan_ms" in p:
        out.append(row(f"DuckDB scan of trip_samples, every column ({tag})", "ms", "DuckDB's partitioned files",
                       p["scan_ms"]["duckdb"], p["scan_ms"]["pushlake"], higher_is_better=False))
    return out


def table_md(p: dict[str, Any]) -> list[str]:
    """Markdown lines: per table, pushlake as drained / after maintenance / DuckDB (a)."""
    lines = [f"Routes: {p['routes']}. Rows: " + ", ".join(f"{t} {p['rows'][t]:,}" for t in TABLES) + ".", "",
             "| table | side | MB | files | row groups | footer kB |", "|---|---|---:|---:|---:|---:|"]
    sides = [("pushlake as drained", p["pushlake_as_drained"]), ("pushlake after maintenance",
                                                                 p["pushlake_after_maintenance"])]
    sides += [(f"DuckDB {w}", p["duckdb"][w]) for w in DUCK]
    for t in TABLES:
        for name, s in sides:
            st = s[t]
            lines.append(f"| {t} | {name} | {_mb(st['bytes']):.2f} | {st['files']} | {st['row_groups']} | "
                         f"{st['footer_bytes'] / 1e3:.0f} |")
    return lines


def columns_md(p: dict[str, Any], t: str) -> list[str]:
    """Per-column compressed kB, pushlake after maintenance vs DuckDB (a), and their encodings."""
    a, b = p["pushlake_after_maintenance"][t]["columns"], p["duckdb"]["partitioned"][t]["columns"]
    lines = [f"| {t} column | pushlake kB | DuckDB kB | pushlake encodings | DuckDB encodings |",
             "|---|---:|---:|---|---|"]
    for c in a:
        lines.append(f"| {c} | {a[c]['compressed'] / 1e3:.1f} | {b[c]['compressed'] / 1e3:.1f} | "
                     f"{' '.join(a[c]['encodings'])}{'' if True in a[c]['stats'] else ' (no stats)'} | "
                     f"{' '.join(b[c]['encodings'])} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trips", type=int, default=None, help=f"trips (default {DEFAULT_TRIPS}; --quick {QUICK_TRIPS})")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--teams", type=int, default=4)
    ap.add_argument("--days", type=int, default=7, help="trip start dates spread over this many days")
    ap.add_argument("--routes", choices=("same", "distinct", "both"), default="both",
                    help="same: bench.gen's trips as they are; distinct: each trip its own route")
    ap.add_argument("--scan-runs", type=int, default=None, help="rounds of the scan timing (0: none; default 7, quick 1)")
    ap.add_argument("--workdir", type=Path, help="where to build (default: a new /tmp dir, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep --workdir's lakes (a temporary dir is always removed)")
    ap.add_argument("--print-tables", action="store_true", help="print the markdown tables of bench/README.md")
    add_results_arg(ap)
    a = ap.parse_args(argv)
    n = a.trips or (QUICK_TRIPS if a.quick else DEFAULT_TRIPS)
    scan_runs = a.scan_runs if a.scan_runs is not None else (1 if a.quick else 7)
    wd = Workdir(a.workdir, "pushlake-bench-files-")
    passes = ["same", "distinct"] if a.routes == "both" else [a.routes]
    try:
        results = [measure(wd.path, n, a.teams, a.days, r, scan_runs) for r in passes]
    finally:
        if not a.keep:
            for r in passes:
                for d in (wd.path / f"pushlake-{r}", wd.path / f"duckdb-{r}"):
                    shutil.rmtree(d, ignore_errors=True)
        wd.cleanup()
    rows = [r for p in results for r in rows_of(p)]
    notes = []
    for p in results:
        m = p["maintenance"]
        notes.append(f"{p['routes']} routes: {n} trips, {a.teams} teams, {a.days} days; drained in "
                     f"{p['drain']['seconds']:.1f} s; maintenance: {m['merges']} merges of {m['files_merged']} files.")
        notes.append(f"{p['routes']} routes, MB (files, row groups) as drained / after maintenance / {PEER}: " + "; ".join(
            f"{t} " + " / ".join(f"{_mb(s[t]['bytes']):.2f} ({s[t]['files']}, {s[t]['row_groups']})" for s in (
                p["pushlake_as_drained"], p["pushlake_after_maintenance"], p["duckdb"]["partitioned"]))
            for t in TABLES) + ".")
    print_rows(rows)
    if a.print_tables:
        for p in results:
            print("\n".join(["", *table_md(p), "", *columns_md(p, "trip_samples"), "", *columns_md(p, "trips")]))
    args = {"trips": n, "teams": a.teams, "days": a.days, "routes": a.routes, "quick": a.quick,
            "scan_runs": scan_runs}
    write_result(NAME, rows, args, notes, results_dir=a.results_dir,
                 extra={"details": json.loads(json.dumps(results, default=list))})
    return 0


if __name__ == "__main__":
    run_main(main)
