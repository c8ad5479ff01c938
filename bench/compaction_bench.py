"""Compaction benchmark: pushlake's compactor against DuckDB doing the same projection itself.

Run by hand, from the repository root:
  .venv/bin/python -m bench.compaction_bench [--quick] [--trips N] [--teams T] [--days D]
                                             [--backlog-gb G] [--workdir DIR] [--keep] [--results-dir DIR]

Issue 4, item 3 (compaction throughput and peak RSS against DuckDB) and item 7, in part (the
compactor's peak RSS while draining a backlog far larger than the memory it may use: <= 1 GB).

Why it is built this way:
- One set of bodies feeds both sides. ``bench.gen.trip_bodies`` is run once and every body is
  written both into a pushlake log (``bench.gen.write_log``, what the receiver would have left)
  and into an NDJSON file as the same object with three fields prefixed: ``team_id``,
  ``received_us`` and ``log_offset`` (what the log record carries besides the body), so neither
  side gets different input. Input MB/s counts the bodies' bytes for both.
- DuckDB does the *same projection*, not a simpler one. Its SQL is generated from
  ``lake/schema.py``: every typed column of ``trips`` (nested fields read as STRUCTs with explicit
  ``columns=``, dates parsed to TIMESTAMPTZ), ``n_samples``, the ``extra`` JSON of the fields that
  have no column, ``trip_samples`` by unnesting every route array (``seq``, ``ts`` from gpsDate)
  and ``trip_events`` by unnesting the event arrays; each ``COPY … (FORMAT parquet,
  PARTITION_BY (team_id, date), COMPRESSION zstd, WRITE_PARTITION_COLUMNS true)``, zstd and the
  partition columns kept in the files as pushlake does. DuckDB is told the shape in advance (the
  keys that end up in ``extra`` are worked out once, from the first body and lake/schema.py), which
  favours it slightly: pushlake discovers unknown fields per body.
  DuckDB reads the NDJSON once per table (three reads); that is how the issue phrases it
  (read_json → COPY per table) and it streams, where staging everything in one DuckDB table
  first would hold the whole backlog in memory.
- DuckDB runs with its defaults (threads = cores, memory_limit 80 % of RAM): the peer as users
  would run it. Its peak RSS is reported, not capped. ``TimeZone`` is set to UTC only so that
  ``date`` means the UTC day as in pushlake.
- Each side runs in its own subprocess (this module with ``--worker``), which times its own work
  (imports and interpreter start excluded on both sides) and reports its VmHWM from
  /proc/self/status just before exiting; the parent also polls VmRSS to show how the RSS evolves
  over the run (a bounded compactor plateaus; a leaking one climbs). pushlake runs
  ``Compactor(data_dir).drain()`` with its default batch settings, as ``pushlake compact
  --no-maintenance`` does.
- pushlake fsyncs every file before its catalog commit; DuckDB's COPY does not. The headline
  DuckDB time is the COPY alone (the strict comparison for pushlake); the time DuckDB then needs
  to fsync its output is reported in the notes.
- Both outputs are checked against each other (trip, sample and event counts, distinct itin_ids,
  two column sums) through ``queries.connect`` for the lake and ``read_parquet(…,
  hive_partitioning = true)`` for DuckDB's files, and one team/date partition of each table row
  for row (every column, ``extra`` included): a faster side that lost or changed rows would not
  count. The exit status is 1 when they differ.
- Defaults: 4 teams, trip dates over 7 days (28 partitions). A backlog is recent pushes; spreading
  it over gen.py's 30 days would cut it into unrealistically small files.
- Item 7: peak RSS must not grow with the backlog. ``--backlog-gb`` (default 10) builds a separate
  log of that size and drains it with default settings; the row compares the peak with a 1 GB
  budget. With ``--quick``, or when the main backlog is already that big, the main run's peak
  is used (``--backlog-gb 0`` forces that too).
- The generated files live in a temporary directory (``--workdir`` to choose where) removed at
  the end unless ``--keep``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from bench.common import (PY, ROOT, add_results_arg, descendants, dir_bytes, print_rows, proc_kb, row, run_main,
                          write_result)

DEFAULT_TRIPS = 15_000   # ~2.1 GB of 141 KB trips: >= 30 s of pushlake work at the current rate
QUICK_TRIPS = 300
LOG_PART = "p0"          # bench.gen.write_log appends to partition 0
GIB = 1 << 30


# ---------------------------------------------------------------------------------------------
# workers (run in their own process so that their peak RSS is theirs alone)

class _PssPeak:
    """Samples the proportional set size of this process and its descendants (the compactor's
    projection processes and their forkserver) every 0.2 s: their real memory together, shared
    pages counted once, where a sum of each one's peak RSS counts the libraries they share
    several times."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            me = os.getpid()
            total = sum(proc_kb(p, "Pss", "smaps_rollup") for p in [me, *descendants(me)]) / 1024
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak


def worker_pushlake(data_dir: Path) -> dict[str, Any]:
    from lake.compactor import Compactor
    pss = _PssPeak()
    t0 = time.perf_counter()
    with Compactor(data_dir) as c:
        s = c.drain()
        secs = time.perf_counter() - t0
        children = sum(proc_kb(p, "VmHWM") for p in descendants(os.getpid())) / 1024  # before close() stops them
    own = proc_kb(os.getpid(), "VmHWM") / 1024
    return {"seconds": secs, "records": s.records, "stored": s.stored, "failed": s.failed,
            "files_written": s.files_written, "vmhwm_mb": max(pss.stop(), own), "own_vmhwm_mb": own,
            "children_vmhwm_mb": children}


def _fsync_tree(root: Path) -> int:
    n = 0
    for d, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            n += 1
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return n


def worker_duckdb(sql_file: Path, out_dir: Path) -> dict[str, Any]:
    import duckdb
    statements: dict[str, str] = json.loads(sql_file.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    settings = con.execute("SELECT current_setting('threads'), current_setting('memory_limit')").fetchone()
    per_table: dict[str, float] = {}
    t0 = time.perf_counter()
    for tbl, sql in statements.items():
        t = time.perf_counter()
        con.execute(sql)
        per_table[tbl] = time.perf_counter() - t
    secs = time.perf_counter() - t0
    t = time.perf_counter()
    nfiles = _fsync_tree(out_dir)
    fsync_s = time.perf_counter() - t
    con.close()
    return {"seconds": secs, "per_table_s": per_table, "fsync_s": fsync_s, "files": nfiles,
            "threads": settings[0], "memory_limit": settings[1], "duckdb": duckdb.__version__,
            "vmhwm_mb": proc_kb(os.getpid(), "VmHWM") / 1024}


# ---------------------------------------------------------------------------------------------
# input generation

def generate(data_dir: Path | None, ndjson: Path | None, n: int, teams: int, days: int,
             received_us: int) -> tuple[int, int, bytes]:
    """Write trips 0..n-1 to a pushlake log and/or an NDJSON file; return (trips, body bytes, first body)."""
    from bench.gen import trip_bodies, write_log
    total = 0
    first: list[bytes] = []
    out = open(ndjson, "wb") if ndjson else None

    def tee() -> Iterator[tuple[str, str, bytes]]:
        nonlocal total
        for i, (team, itin, body) in enumerate(trip_bodies(n, teams=teams, days=days)):
            total += len(body)
            if not first:
                first.append(body)
            if out is not None:
                assert body[:1] == b"{"
                out.write(b'{"team_id":"%s","received_us":%d,"log_offset":%d,%s\n'
                          % (team.encode(), received_us + i, i, body[1:]))
            yield team, itin, body

    try:
        if data_dir is not None:
            written = write_log(data_dir, tee(), received_us=received_us)
        else:
            written = sum(1 for _ in tee())
        if out is not None:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out is not None:
            out.close()
    return written, total, first[0]


# ---------------------------------------------------------------------------------------------
# DuckDB's projection, generated from lake/schema.py

DUCK_TYPES = {"str": "VARCHAR", "f64": "DOUBLE", "i64": "BIGINT", "bool": "BOOLEAN", "ts": "VARCHAR"}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _struct_sql(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        parts.append(f"{_q(k)} {_struct_sql(v) if isinstance(v, dict) else v}")
    return "STRUCT(" + ", ".join(parts) + ")"


def _columns_sql(cols: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{_lit(k)}: {_lit(_struct_sql(v) if isinstance(v, dict) else v)}"
                           for k, v in cols.items()) + "}"


def _access(path: tuple[str, ...]) -> str:
    return _q(path[0]) + "".join(f"[{_lit(p)}]" for p in path[1:])


def _read_json(ndjson: Path, cols: dict[str, Any]) -> str:
    return (f"read_json({_lit(str(ndjson))}, format = 'newline_delimited', records = true, "
            f"columns = {_columns_sql(cols)})")


def leftover_fields(body: bytes) -> tuple[dict[str, Any], set[str]]:
    """What pushlake keeps in ``extra`` for this body (schema.py: every field without a column;
    project.py: the top-level endDate unless it equals itineraryData.endDate), and the event
    fields without a column. Worked out from lake/schema.py rather than by calling the
    projection, whose internals change more often than the schema."""
    import orjson

    from lake.schema import EVENT_ARRAYS, EVENT_FIELDS, SAMPLE_FIELDS, SAMPLE_TS_FIELD, TRIP_FIELDS
    doc = orjson.loads(body)
    ev_extra = {k for name in EVENT_ARRAYS for e in (doc.get(name) or []) for k in e
                if k not in {p[0] for _, p, _ in EVENT_FIELDS}}
    for k in ["itinId", *EVENT_ARRAYS]:
        doc.pop(k, None)
    route = doc.pop("route", None) or {}
    for src in [SAMPLE_TS_FIELD] + [s for _, s in SAMPLE_FIELDS]:
        route.pop(src, None)
    if route:
        doc["route"] = route
    end = (doc.get("itineraryData") or {}).get("endDate")
    for _, path, _ in TRIP_FIELDS:
        node = doc
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    if doc.get("endDate") is not None and doc["endDate"] == end:
        doc.pop("endDate")  # (compared as text: the generated bodies use one date format)
    return {k: v for k, v in doc.items() if not (isinstance(v, dict) and not v)}, ev_extra


def duckdb_statements(ndjson: Path, out_dir: Path, first_body: bytes) -> dict[str, str]:
    """One COPY per table, doing what lake/project.py does for these bodies."""
    from lake.schema import EVENT_ARRAYS, EVENT_FIELDS, SAMPLE_FIELDS, SAMPLE_TS_FIELD, SCHEMAS, TRIP_FIELDS

    extra, ev_extra = leftover_fields(first_body)

    base = {"team_id": "VARCHAR", "received_us": "BIGINT", "log_offset": "BIGINT", "itinId": "VARCHAR"}
    start = "CAST(" + _access(("itineraryData", "startDate")) + " AS TIMESTAMPTZ)"
    end = "CAST(" + _access(("itineraryData", "endDate")) + " AS TIMESTAMPTZ)"
    common = {"team_id": "team_id",
              "date": f"CAST(coalesce({start}, {end}, make_timestamptz(received_us)) AS DATE)",
              "received_at": "make_timestamptz(received_us)",
              "log_part": _lit(LOG_PART), "log_offset": "log_offset"}
    copy_opts = "(FORMAT parquet, PARTITION_BY (team_id, date), COMPRESSION zstd, WRITE_PARTITION_COLUMNS true)"
    trip_dates = {"itineraryData": {"startDate": "VARCHAR", "endDate": "VARCHAR"}}

    # trips ------------------------------------------------------------------------------------
    cols: dict[str, Any] = dict(base)
    for _, path, typ in TRIP_FIELDS:
        node = cols
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = DUCK_TYPES[typ]
    cols["route"] = {SAMPLE_TS_FIELD: "DOUBLE[]"}
    extra_sql = []
    for k, v in extra.items():
        if isinstance(cols.get(k), dict) and isinstance(v, dict):
            for sub in v:
                cols[k][sub] = "JSON"
            extra_sql.append(f"{_lit(k)}, json_object("
                             + ", ".join(f"{_lit(sub)}, {_access((k, sub))}" for sub in v) + ")")
        else:
            cols[k] = "JSON"
            extra_sql.append(f"{_lit(k)}, {_q(k)}")
    exprs = dict(common)
    exprs["itin_id"] = "itinId"
    for col, path, typ in TRIP_FIELDS:
        e = _access(path)
        exprs[col] = f"CAST({e} AS TIMESTAMPTZ)" if typ == "ts" else e
    exprs["n_samples"] = f"CAST(len({_access(('route', SAMPLE_TS_FIELD))}) AS BIGINT)"
    exprs["extra"] = "CAST(json_object(" + ", ".join(extra_sql) + ") AS VARCHAR)"
    trips = _select(SCHEMAS["trips"], exprs) + " FROM " + _read_json(ndjson, cols)

    # trip_samples -----------------------------------------------------------------------------
    route_src = [SAMPLE_TS_FIELD] + [src for _, src in SAMPLE_FIELDS]
    scols: dict[str, Any] = {**base, **trip_dates, "route": {s: "DOUBLE[]" for s in route_src}}
    inner = ", ".join([f"{v} AS {_q(k)}" for k, v in common.items()] + ["itinId AS itin_id"]
                      + [f"unnest(range(len({_access(('route', SAMPLE_TS_FIELD))}))) AS seq"]
                      + [f"unnest({_access(('route', s))}) AS {_q('r_' + s)}" for s in route_src])
    sexprs = {k: _q(k) for k in list(common) + ["itin_id"]}
    sexprs["seq"] = "CAST(seq AS INTEGER)"
    sexprs["ts"] = f"make_timestamptz(CAST(trunc({_q('r_' + SAMPLE_TS_FIELD)} * 1e6) AS BIGINT))"
    for col, src in SAMPLE_FIELDS:
        sexprs[col] = _q("r_" + src)
    samples = (f"WITH s AS (SELECT {inner} FROM {_read_json(ndjson, scols)}) "
               + _select(SCHEMAS["trip_samples"], sexprs) + " FROM s")

    # trip_events ------------------------------------------------------------------------------
    ev_type: dict[str, Any] = {}
    for _, path, typ in EVENT_FIELDS:
        ev_type[path[0]] = DUCK_TYPES[typ]
    for k in sorted(ev_extra):
        ev_type[k] = "JSON"
    ecols: dict[str, Any] = {**base, **trip_dates}
    for name in EVENT_ARRAYS:
        ecols[name] = _struct_sql(ev_type) + "[]"
    src = ", ".join([f"{v} AS {_q(k)}" for k, v in common.items()] + ["itinId AS itin_id"]
                    + [_q(n) for n in EVENT_ARRAYS])
    keep = ", ".join(_q(k) for k in list(common) + ["itin_id"])
    unions = " UNION ALL ".join(
        f"SELECT {keep}, {_lit(kind)} AS event_type, unnest(range(len({_q(name)}))) AS seq, "
        f"unnest({_q(name)}) AS e FROM src" for name, kind in EVENT_ARRAYS.items())
    eexprs = {k: _q(k) for k in list(common) + ["itin_id", "event_type"]}
    eexprs["seq"] = "CAST(seq AS INTEGER)"
    for col, path, _ in EVENT_FIELDS:
        eexprs[col] = f"e[{_lit(path[0])}]"
    eexprs["extra"] = ("CAST(json_object(" + ", ".join(f"{_lit(k)}, e[{_lit(k)}]" for k in sorted(ev_extra))
                       + ") AS VARCHAR)") if ev_extra else "'{}'"
    events = (f"WITH src AS (SELECT {src} FROM {_read_json(ndjson, ecols)}), ev AS ({unions}) "
              + _select(SCHEMAS["trip_events"], eexprs) + " FROM ev")

    return {t: f"COPY ({q}) TO {_lit(str(out_dir / t))} {copy_opts}"
            for t, q in (("trips", trips), ("trip_samples", samples), ("trip_events", events))}


def _select(schema: Any, exprs: dict[str, str]) -> str:
    """SELECT list in the lake schema's column order, cast to the lake's types."""
    import pyarrow as pa
    duck = {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.int32(): "INTEGER",
            pa.bool_(): "BOOLEAN", pa.date32(): "DATE", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}
    missing = [f.name for f in schema if f.name not in exprs]
    if missing:
        raise AssertionError(f"DuckDB projection lacks columns {missing}")
    return "SELECT " + ", ".join(f"CAST({exprs[f.name]} AS {duck[f.type]}) AS {_q(f.name)}" for f in schema)


# ---------------------------------------------------------------------------------------------
# running and checking

def run_worker(args: list[str], log_file: Path) -> dict[str, Any]:
    """Run this module as a worker; return its JSON report plus wall time and the RSS it went through."""
    cmd = [PY, "-m", "bench.compaction_bench", "--worker", *args]
    t0 = time.perf_counter()
    with open(log_file, "wb") as err, tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        samples: list[tuple[float, float]] = []
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            try:
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        samples.append((time.perf_counter() - t0, int(line.split()[1]) / 1024))
            except (FileNotFoundError, ProcessLookupError):
                pass
            time.sleep(0.1)
        p.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode()
    if p.returncode != 0:
        raise RuntimeError(f"worker {args[0]} failed ({p.returncode}); see {log_file}:\n"
                           + log_file.read_text()[-3000:])
    rep = json.loads(text.strip().splitlines()[-1])
    rep["wall_s"] = wall
    rep["ru_maxrss_mb"] = ru.ru_maxrss / 1024
    rep["rss_profile_mb"] = _profile(samples, wall)
    return rep


def _profile(samples: list[tuple[float, float]], wall: float, buckets: int = 10) -> list[float]:
    """Highest VmRSS seen in each tenth of the run."""
    out = [0.0] * buckets
    for t, mb in samples:
        i = min(int(t / wall * buckets), buckets - 1) if wall > 0 else 0
        out[i] = max(out[i], mb)
    return [round(x) for x in out]


def count_lake(data_dir: Path) -> dict[str, float]:
    from queries import connect
    with connect(data_dir) as c:
        return _counts(c, "trips", "trip_samples", "trip_events")


def count_duckdb(out_dir: Path) -> dict[str, float]:
    import duckdb
    c = duckdb.connect()
    try:
        for t in ("trips", "trip_samples", "trip_events"):
            glob = _lit(str(out_dir / t / "**" / "*.parquet"))
            c.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet({glob}, hive_partitioning = true)")
        return _counts(c, "trips", "trip_samples", "trip_events")
    finally:
        c.close()


def _counts(c: Any, trips: str, samples: str, events: str) -> dict[str, float]:
    a = c.execute(f"SELECT count(*), count(DISTINCT itin_id), sum(distance_m), sum(n_samples) FROM {trips}").fetchone()
    b = c.execute(f"SELECT count(*), sum(speed_kmh), count(DISTINCT team_id || CAST(date AS VARCHAR)) "
                  f"FROM {samples}").fetchone()
    e = c.execute(f"SELECT count(*) FROM {events}").fetchone()
    return {"trips": a[0], "itin_ids": a[1], "sum_distance_m": a[2], "sum_n_samples": a[3],
            "samples": b[0], "sum_speed_kmh": b[1], "sample_partitions": b[2], "events": e[0]}


def compare_partition(data_dir: Path, out_dir: Path) -> dict[str, int]:
    """Rows of the first team/date partition that are not identical on both sides, per table
    (every column, extra included; a whole-backlog EXCEPT would cost more than the runs)."""
    import duckdb
    c = duckdb.connect()
    try:
        out = {}
        for t in ("trips", "trip_samples", "trip_events"):
            pdir = sorted((data_dir / "lake" / t).glob("team=*/date=*"))[0]
            team, date = pdir.parent.name.split("=", 1)[1], pdir.name.split("=", 1)[1]
            a = f"read_parquet({_lit(str(pdir / '*.parquet'))}, hive_partitioning = false)"
            b = f"read_parquet({_lit(str(out_dir / t / f'team_id={team}' / f'date={date}' / '*.parquet'))}, " \
                "hive_partitioning = false)"
            out[t] = c.execute(f"SELECT (SELECT count(*) FROM (FROM {a} EXCEPT ALL FROM {b})) "
                               f"+ (SELECT count(*) FROM (FROM {b} EXCEPT ALL FROM {a}))").fetchone()[0]
        return out
    finally:
        c.close()


def _same(a: dict[str, float], b: dict[str, float]) -> list[str]:
    bad = []
    for k in a:
        x, y = a[k] or 0, b[k] or 0
        if abs(x - y) > 1e-9 * max(abs(x), abs(y), 1):
            bad.append(f"{k}: pushlake {x} vs DuckDB {y}")
    return bad


def _default_batch_bytes() -> int:
    import inspect

    from lake.compactor import Compactor
    return inspect.signature(Compactor).parameters["batch_bytes"].default


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trips", type=int, default=None, help=f"backlog size in trips (default {DEFAULT_TRIPS})")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_TRIPS} trips, no separate memory run")
    ap.add_argument("--teams", type=int, default=4)
    ap.add_argument("--days", type=int, default=7, help="trip start dates spread over this many days")
    ap.add_argument("--backlog-gb", type=float, default=10.0,
                    help="size of the backlog drained for the peak-RSS check (GiB; 0: use the main run's)")
    ap.add_argument("--workdir", type=Path, help="where to put the generated files (default: a new /tmp dir)")
    ap.add_argument("--keep", action="store_true", help="do not delete the generated files")
    add_results_arg(ap)
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.worker:
        kind, *rest = a.worker
        rep = worker_pushlake(Path(rest[0])) if kind == "pushlake" else worker_duckdb(Path(rest[0]), Path(rest[1]))
        print(json.dumps(rep))
        return 0

    n = a.trips or (QUICK_TRIPS if a.quick else DEFAULT_TRIPS)
    if a.workdir:
        a.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pushlake-bench-compaction-", dir=a.workdir))
    notes: list[str] = []
    rows: list[dict] = []
    try:
        data, ndjson, duck_out = work / "pushlake", work / "trips.ndjson", work / "duckdb"
        received = int(time.time() * 1e6)
        t = time.perf_counter()
        n, body_bytes, first = generate(data, ndjson, n, a.teams, a.days, received)
        gen_s = time.perf_counter() - t
        print(f"generated {n} trips ({_mb(body_bytes)} of bodies) in {gen_s:.1f} s: "
              f"log {_mb(dir_bytes(data / 'log'))}, NDJSON {_mb(dir_bytes(ndjson))}", file=sys.stderr)
        sql_file = work / "duckdb.json"
        sql_file.write_text(json.dumps(duckdb_statements(ndjson, duck_out, first), indent=1))

        # the generated inputs (GBs, the NDJSON not fsynced) would otherwise be written back to disk
        # during the first side's run, and that side is pushlake's
        os.sync()
        print("pushlake: draining the backlog ...", file=sys.stderr)
        pl = run_worker(["pushlake", str(data)], work / "pushlake.err")
        print(f"  {pl['seconds']:.2f} s, peak RSS {pl['vmhwm_mb']:.0f} MB", file=sys.stderr)
        print("DuckDB: read_json -> COPY ... PARTITION_BY ...", file=sys.stderr)
        os.sync()
        dk = run_worker(["duckdb", str(sql_file), str(duck_out)], work / "duckdb.err")
        print(f"  {dk['seconds']:.2f} s (+{dk['fsync_s']:.2f} s fsync), peak RSS {dk['vmhwm_mb']:.0f} MB",
              file=sys.stderr)

        cl, cd = count_lake(data), count_duckdb(duck_out)
        samples = cl["samples"]
        diff = _same(cl, cd)
        part_diff = compare_partition(data, duck_out)
        if any(part_diff.values()):
            diff.append(f"rows differing in the first team/date partition: {part_diff}")
        if pl["failed"] or pl["stored"] != n or cl["trips"] != n:
            diff.append(f"pushlake stored {pl['stored']} of {n} trips ({pl['failed']} failed)")
        if diff:
            notes.append("OUTPUTS DIFFER: " + "; ".join(diff))
            print("WARNING: outputs differ: " + "; ".join(diff), file=sys.stderr)
        else:
            notes.append(f"Outputs checked equal: {cl['trips']} trips, {cl['samples']} samples, {cl['events']} events, "
                         f"{cl['sample_partitions']} team/date partitions, same sums of distance_m and speed_kmh; "
                         "the first partition identical row for row in all three tables (extra included).")

        peer = f"DuckDB {dk['duckdb']} read_json+COPY"
        pl_s, dk_s = pl["seconds"], dk["seconds"]
        rows.append(row("compaction trips/s", "trips/s", peer, n / dk_s, n / pl_s, target=1.0))
        rows.append(row("compaction samples/s", "samples/s", peer, samples / dk_s, samples / pl_s))
        rows.append(row("compaction input MB/s", "MB/s", peer, body_bytes / 1e6 / dk_s, body_bytes / 1e6 / pl_s))
        rows.append(row("compaction peak RSS", "MB", peer, dk["vmhwm_mb"], pl["vmhwm_mb"], higher_is_better=False))

        sizes = {"pushlake": {t: dir_bytes(data / "lake" / t) for t in ("trips", "trip_samples", "trip_events")},
                 "duckdb": {t: dir_bytes(duck_out / t) for t in ("trips", "trip_samples", "trip_events")}}
        notes.append(f"Backlog: {n} trips, {samples} samples, {_mb(body_bytes)} of bodies ({a.teams} teams, "
                     f"{a.days} days); log {_mb(dir_bytes(data / 'log'))}, NDJSON {_mb(dir_bytes(ndjson))}.")
        notes.append(f"pushlake: {pl_s:.2f} s ({pl['wall_s']:.2f} s with interpreter start), "
                     f"{pl['files_written']} files written; peak memory {pl['vmhwm_mb']:.0f} MB = peak PSS of the "
                     f"compactor and its projection processes together (sampled every 0.2 s); their own peak RSS: "
                     f"compactor {pl.get('own_vmhwm_mb', 0):.0f} MB, projection processes and forkserver "
                     f"{pl.get('children_vmhwm_mb', 0):.0f} MB summed (shared libraries counted in each); "
                     f"compactor RSS by tenth of the run (MB): {pl['rss_profile_mb']}.")
        notes.append(f"DuckDB ({dk['threads']} threads, memory_limit {dk['memory_limit']}): {dk_s:.2f} s "
                     + "(" + ", ".join(f"{k} {v:.2f} s" for k, v in dk["per_table_s"].items()) + "), "
                     f"then {dk['fsync_s']:.2f} s to fsync its {dk['files']} files (not counted); "
                     f"RSS by tenth of the run (MB): {dk['rss_profile_mb']}.")
        notes.append("On disk (pushlake / DuckDB): " + ", ".join(
            f"{t} {_mb(sizes['pushlake'][t])} / {_mb(sizes['duckdb'][t])}" for t in sizes["pushlake"]) + ".")

        # item 7: peak RSS while draining a big backlog --------------------------------------------
        want = int(a.backlog_gb * GIB)
        if a.quick or want <= body_bytes:
            mem_bytes, mem_rss = body_bytes, pl["vmhwm_mb"]
            batch = _default_batch_bytes()
            if want > body_bytes or body_bytes < 4 * batch:
                instead = f", not {a.backlog_gb:g} GB" if want > body_bytes else ""
                notes.append(f"The peak-RSS check used the main backlog ({_mb(body_bytes)}{instead}); at under a few "
                             f"times the compactor's batch size ({_mb(batch)}) it cannot show that the peak stays "
                             "bounded.")
        else:
            shutil.rmtree(data)
            shutil.rmtree(duck_out)
            ndjson.unlink()
            mem_n = math.ceil(want / (body_bytes / n))
            mem = work / "memory"
            t = time.perf_counter()
            mem_n, mem_bytes, _ = generate(mem, None, mem_n, a.teams, a.days, received)
            print(f"memory check: generated {mem_n} trips ({_mb(mem_bytes)}) in {time.perf_counter() - t:.0f} s; "
                  "draining ...", file=sys.stderr)
            os.sync()
            m = run_worker(["pushlake", str(mem)], work / "memory.err")
            mem_rss = m["vmhwm_mb"]
            notes.append(f"Peak-RSS check: {mem_n} trips, {_mb(mem_bytes)} of bodies, drained in {m['seconds']:.1f} s "
                         f"({mem_n / m['seconds']:.0f} trips/s), {m['stored']} stored, {m['failed']} failed; "
                         f"RSS by tenth of the run (MB): {m['rss_profile_mb']}.")
        rows.append(row(f"compactor peak RSS, backlog {mem_bytes / GIB:.2g} GB", "MB", "budget 1 GB", 1024.0, mem_rss,
                        higher_is_better=False, target=1.0))

        args = {"trips": n, "teams": a.teams, "days": a.days, "backlog_gb": a.backlog_gb, "quick": a.quick,
                "body_bytes": body_bytes, "samples": samples, "pushlake": pl, "duckdb": dk,
                "pushlake_counts": cl, "duckdb_counts": cd, "sizes": sizes}
        print_rows(rows)
        for note in notes:
            print("-", note)
        write_result("compaction", rows, args, notes, results_dir=a.results_dir)
        return 1 if diff else 0
    finally:
        if a.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
