"""Query benchmark (issue 4, item 6): analyst query latency, partition pruning, and how the
latency grows with the days of data stored.

Run by hand, from the repository root:
  .venv/bin/python -m bench.queries_bench [--quick] [--teams N] [--per-team-day N] [--days 1,10,100]
                                          [--runs N] [--large-trips] [--workdir DIR] [--results-dir DIR]

Why it is built this way:
- One lake grows in steps (by default 1, then 10, then 100 days stored) and every query is timed
  at each step. The data a fixed-size query touches (one team-day, one trip, one day of
  crashes) is the same at every step, so its latency should stay flat while the data stored
  grows 100-fold: "it should follow the data touched, not the data stored". The scaling rows
  compare the same query with 1 day stored (peer) and with N days stored; the ratio is
  latency(1 day) / latency(N days), 1.0 meaning flat (target 0.9, which leaves room for noise).
- The lake is built the way pushlake builds it: synthetic trips from bench/gen.py (the 10-second
  fixture by default, so that 100 days of several teams compact in about a minute; the
  33-minute one with --large-trips) and crashes (tests/fixtures/crash.json) are appended to the
  log, then ``Compactor.drain()`` projects them, then small files are merged, as ``pushlake
  compact`` would. Trips of a day are generated on 2025-01-01 and shifted to their day, so each
  step adds whole days and every team-day holds the same number of trips.
- Queries go through ``queries.connect`` (what the CLI, Python users and HTTP reads use). Two
  peers are measured in the same rounds: the same statement on a pushlake connection with
  DuckDB's filter pushdown disabled (a true full scan of the same views: what pruning saves),
  and plain DuckDB over the hive-partitioned files (``read_parquet('lake/<t>/*/*/*.parquet',
  hive_partitioning = true)`` filtering on the ``team``/``date`` path columns: what an engine
  pruning by directory achieves; it ignores tombstones, and this lake has none). A team
  connection (``queries.connect(data, team=T)``, what a team's analyst gets over HTTP) is timed
  as a third pushlake variant. Results of every variant are checked to have the same row count.
- Each round runs every variant of a query once, in turn (interleaved), so noise from other work
  on this shared 2-core machine falls on all of them; the median of ``--runs`` rounds is kept,
  after one warm-up round (page cache and DuckDB's first-use costs).
"""
from __future__ import annotations

import argparse
import datetime as dt
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import orjson

import queries
from bench import common
from bench.common import FIXTURES, BenchError, Workdir, fmt_ms, interleaved, median, run_main
from bench.gen import BASE_DAY, _fmt, trip_bodies
from ingest.log import LogWriter
from ingest.record import Kind
from lake.catalog import Catalog
from lake.compactor import Compactor

NAME = "queries"
TS_FORMAT = "%Y-%m-%dT%H:%M:%S.%f%z"


# ---------------------------------------------------------------- building the lake

def shift_trip(body: bytes, days: int) -> bytes:
    """The same trip, ``days`` later (start/end dates and sample timestamps)."""
    if days == 0:
        return body
    t = orjson.loads(body)
    delta = dt.timedelta(days=days)
    idata = t["itineraryData"]
    for k in ("startDate", "endDate"):
        idata[k] = _fmt(dt.datetime.strptime(idata[k], TS_FORMAT) + delta)
    route = t.get("route")
    if route and "gpsDate" in route:
        route["gpsDate"] = [x + days * 86400 for x in route["gpsDate"]]
    return orjson.dumps(t)


def day_records(day: int, teams: int, per_team_day: int, crashes_per_team_day: int, small: bool,
                first_index: int) -> Iterator[tuple[int, str, str, bytes]]:
    """(kind, team, key, body) of one day: ``per_team_day`` trips and crashes for every team."""
    for team, itin, body in trip_bodies(teams * per_team_day, teams=teams, days=1, small=small, seed=day + 1,
                                        start=first_index):
        yield Kind.TRIP, team, itin, shift_trip(body, day)
    crash = orjson.loads((FIXTURES / "crash.json").read_bytes())
    rng = random.Random(day)
    for ti in range(teams):
        for j in range(crashes_per_team_day):
            when = BASE_DAY + dt.timedelta(days=day, seconds=rng.randrange(6 * 3600, 22 * 3600))
            cid = f"c{day:05d}{ti:04d}{j:06d}".ljust(24, "0")
            c = {**crash, "crashId": cid, "userId": f"driver-{rng.randrange(500):05d}",
                 "parameters": {**crash["parameters"], "date": _fmt(when),
                                "tripStartDate": _fmt(when - dt.timedelta(minutes=17))},
                 "probability": rng.randrange(30, 100), "velocity": round(rng.uniform(10, 90), 1)}
            yield Kind.CRASH, f"team-{ti:03d}", cid, orjson.dumps(c)


def append_days(data: Path, days: range, a: argparse.Namespace) -> int:
    """Append the records of ``days`` to log partition p0 (as the receiver would have)."""
    w = LogWriter(data, 0)
    now = int(time.time() * 1e6)
    n = 0
    batch: list[tuple[int, int, str, str, bytes]] = []
    try:
        for day in days:
            for kind, team, key, body in day_records(day, a.teams, a.per_team_day, a.crashes_per_team_day,
                                                     not a.large_trips, day * a.teams * a.per_team_day):
                batch.append((kind, now + n, team, key, body))
                n += 1
                if len(batch) >= 500:
                    w.append(batch)
                    batch = []
        if batch:
            w.append(batch)
    finally:
        w.close()
    return n


def lake_stats(data: Path) -> dict:
    cat = Catalog(data, readonly=True)
    try:
        files = cat.live_files()
    finally:
        cat.close()
    out: dict = {"files": len(files), "bytes": sum(f.bytes for f in files)}
    for tbl in ("trips", "trip_samples", "crashes"):
        out[f"{tbl}_rows"] = sum(f.rows for f in files if f.tbl == tbl)
        out[f"{tbl}_files"] = sum(1 for f in files if f.tbl == tbl)
    return out


# ---------------------------------------------------------------- the queries

def hive(lake: Path, table: str) -> str:
    return f"read_parquet('{lake / table}/*/*/*.parquet', hive_partitioning = true)"


class Query:
    """An analyst query: pushlake SQL (views), the equivalent over hive globs (``{H}`` is the
    table's read_parquet; pruning columns ``team``/``date`` come from the paths), and whether a
    team connection can run it."""

    def __init__(self, name: str, sql: str, hive_sql: str, table: str, team_scoped: bool, fixed_size: bool,
                 pruned: bool) -> None:
        self.name, self.sql, self.hive_sql, self.table = name, sql, hive_sql, table
        self.team_scoped, self.fixed_size, self.pruned = team_scoped, fixed_size, pruned


SCORES = ("user_id, count(*) AS trips, round(avg(safety_score), 3) AS safety, "
          "round(avg(eco_driving_score), 3) AS eco, round(sum(distance_m) / 1000, 1) AS km")
SAMPLE_COLS = "seq, ts, latitude, longitude, speed_kmh"
CRASH_COLS = "team_id, crash_id, crash_date, user_id, status, probability, latitude, longitude"

QUERIES = [
    Query("team-day scores",
          f"SELECT {SCORES} FROM trips WHERE team_id = $team AND date = $day GROUP BY user_id",
          f"SELECT {SCORES} FROM {{H}} WHERE team = $team AND date = $day GROUP BY user_id",
          "trips", team_scoped=True, fixed_size=True, pruned=True),
    Query("team-month scores",
          f"SELECT {SCORES} FROM trips WHERE team_id = $team AND date BETWEEN $day AND $month_end GROUP BY user_id",
          f"SELECT {SCORES} FROM {{H}} WHERE team = $team AND date BETWEEN $day AND $month_end GROUP BY user_id",
          "trips", team_scoped=True, fixed_size=False, pruned=True),
    Query("a trip's samples",
          f"SELECT {SAMPLE_COLS} FROM trip_samples WHERE team_id = $team AND date = $day AND itin_id = $itin ORDER BY seq",
          f"SELECT {SAMPLE_COLS} FROM {{H}} WHERE team = $team AND date = $day AND itin_id = $itin ORDER BY seq",
          "trip_samples", team_scoped=True, fixed_size=True, pruned=True),
    Query("a day's crashes",
          f"SELECT {CRASH_COLS} FROM crashes WHERE date = $day ORDER BY crash_date, crash_id",
          f"SELECT {CRASH_COLS.replace('team_id', 'team AS team_id')} FROM {{H}} WHERE date = $day "
          "ORDER BY crash_date, crash_id",
          "crashes", team_scoped=False, fixed_size=True, pruned=True),
    Query("a trip's samples by itin_id only",
          f"SELECT {SAMPLE_COLS} FROM trip_samples WHERE itin_id = $itin ORDER BY seq",
          f"SELECT {SAMPLE_COLS} FROM {{H}} WHERE itin_id = $itin ORDER BY seq",
          "trip_samples", team_scoped=False, fixed_size=False, pruned=False),
    Query("all-team scores (full scan)",
          "SELECT team_id, count(*) AS trips, round(avg(safety_score), 3) AS safety FROM trips GROUP BY 1",
          "SELECT team AS team_id, count(*) AS trips, round(avg(safety_score), 3) AS safety FROM {H} GROUP BY 1",
          "trips", team_scoped=False, fixed_size=False, pruned=False),
]

VARIANTS = ("pushlake", "pushlake team connection", "full scan (no pushdown)", "DuckDB hive glob")


def measure_level(data: Path, params: dict, runs: int) -> dict[str, dict[str, float]]:
    """Median ms of every query and variant on the lake as it is now."""
    lake = data / "lake"
    team = params["team"]
    cons = {"pushlake": queries.connect(data),
            "pushlake team connection": queries.connect(data, team=team),
            "full scan (no pushdown)": queries.connect(data, settings={"disabled_optimizers": "filter_pushdown"}),
            "DuckDB hive glob": duckdb.connect()}
    out: dict[str, dict[str, float]] = {}
    try:
        for q in QUERIES:
            hsql = q.hive_sql.replace("{H}", hive(lake, q.table))
            # DuckDB refuses named parameters a statement does not use: pass only those it names
            p = {k: v for k, v in params.items() if f"${k}" in q.sql}
            fns: dict[str, Callable[[], list]] = {}
            for v, con in cons.items():
                if v == "pushlake team connection" and not q.team_scoped:
                    continue
                sql = hsql if v == "DuckDB hive glob" else q.sql
                fns[v] = (lambda con=con, sql=sql: con.execute(sql, p).fetchall())
            counts = {v: len(fn()) for v, fn in fns.items()}
            if len(set(counts.values())) != 1:
                raise BenchError(f"{q.name}: the variants disagree on the row count: {counts}")
            if counts["pushlake"] == 0:
                raise BenchError(f"{q.name}: no rows; the lake was not built as expected")
            times = interleaved(fns, runs)
            out[q.name] = {v: median(ts) for v, ts in times.items()}
            out[q.name]["rows"] = counts["pushlake"]
    finally:
        for con in cons.values():
            con.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake query benchmark: pruning and scaling with days stored")
    ap.add_argument("--quick", action="store_true", help="smoke mode: 2 teams, 20 trips per team-day, 1/3/10 days")
    ap.add_argument("--teams", type=int, help="teams (default 4; 2 with --quick)")
    ap.add_argument("--per-team-day", type=int, help="trips per team and day (default 100; 20 with --quick)")
    ap.add_argument("--crashes-per-team-day", type=int, default=5)
    ap.add_argument("--days", help="days stored at each step, comma-separated (default 1,10,100; 1,3,10 with --quick)")
    ap.add_argument("--runs", type=int, help="timed rounds per query, median kept (default 9; 3 with --quick)")
    ap.add_argument("--large-trips", action="store_true", help="33-minute trips (~2,000 samples) instead of 10-second ones")
    ap.add_argument("--workdir", type=Path, help="where the lake is built (default: a temporary directory, removed)")
    common.add_results_arg(ap)
    a = ap.parse_args(argv)
    a.teams = a.teams or (2 if a.quick else 4)
    a.per_team_day = a.per_team_day or (20 if a.quick else 100)
    a.runs = a.runs or (3 if a.quick else 9)
    levels = sorted({int(x) for x in (a.days or ("1,3,10" if a.quick else "1,10,100")).split(",")})
    if levels[0] < 1 or a.teams < 1 or a.per_team_day < 1 or a.runs < 1:
        ap.error("--days, --teams, --per-team-day and --runs must be positive")

    wd = Workdir(a.workdir, "pushlake-bench-queries-")
    data = wd.path / "queries-lake"
    try:
        if data.exists():
            raise BenchError(f"{data} already exists: remove it or choose another --workdir")
        day0 = BASE_DAY.date()
        params = {"team": "team-000", "day": day0, "month_end": day0 + dt.timedelta(days=29),
                  "itin": f"{0:024x}"}  # trip 0 is team-000's first trip of day 0
        print(f"lake in {data}: {a.teams} teams x {a.per_team_day} {'33-minute' if a.large_trips else '10-second'} "
              f"trips + {a.crashes_per_team_day} crashes per team-day; days stored: {levels}; "
              f"median of {a.runs} rounds", flush=True)
        results: dict[int, dict] = {}
        stats: dict[int, dict] = {}
        built = 0
        with Compactor(data) as comp:
            for level in levels:
                t0 = time.monotonic()
                n = append_days(data, range(built, level), a)
                t1 = time.monotonic()
                st = comp.drain()
                merged = comp.merge_small_files()
                t2 = time.monotonic()
                built = level
                stats[level] = {**lake_stats(data), "records_added": n, "log_s": round(t1 - t0, 1),
                                "compact_s": round(t2 - t1, 1), "merged_files": merged}
                if st.failed:
                    raise BenchError(f"{st.failed} records FAILED projection while building the lake")
                print(f"\n{level} day(s) stored: +{n} records (log {t1 - t0:.1f} s, compaction {t2 - t1:.1f} s); "
                      f"{stats[level]['files']} live files, {stats[level]['trips_rows']} trips, "
                      f"{stats[level]['trip_samples_rows']} samples, {stats[level]['crashes_rows']} crashes", flush=True)
                results[level] = measure_level(data, params, a.runs)
                print(f"  {'query (median ms)':34} " + " ".join(f"{v[:24]:>24}" for v in VARIANTS) + "   rows")
                for q in QUERIES:
                    r = results[level][q.name]
                    print(f"  {q.name:34} " + " ".join(f"{fmt_ms(r.get(v)):>24}" for v in VARIANTS)
                          + f"   {r['rows']}", flush=True)

        rows: list[dict] = []
        top, first = levels[-1], levels[0]
        for q in QUERIES:
            r = results[top][q.name]
            if q.pruned:
                rows.append(common.row(f"{q.name} ({top}d): pruned vs full scan", "ms",
                                       "same query, pushdown off", r["full scan (no pushdown)"], r["pushlake"],
                                       higher_is_better=False))
            rows.append(common.row(f"{q.name} ({top}d): vs DuckDB hive", "ms", "DuckDB hive glob",
                                   r["DuckDB hive glob"], r["pushlake"], higher_is_better=False))
        for q in QUERIES:
            if not q.fixed_size:
                continue
            for v in ("pushlake", "pushlake team connection"):
                if v not in results[first][q.name]:
                    continue
                for level in levels[1:]:
                    label = q.name + (" (team conn)" if v != "pushlake" else "")
                    rows.append(common.row(f"{label}: {first}d -> {level}d stored", "ms",
                                           f"same query, {first} day stored", results[first][q.name][v],
                                           results[level][q.name][v], higher_is_better=False, target=0.9))
        print()
        common.print_rows(rows)

        notes = [
            f"Lake: {a.teams} teams, {a.per_team_day} {'33-minute' if a.large_trips else '10-second (10-sample)'} "
            f"trips and {a.crashes_per_team_day} crashes per team-day, grown to {levels} days stored; "
            "built with bench.gen + Compactor.drain() + merge_small_files().",
            "ratio = peer ms / pushlake ms (> 1: pushlake faster). Scaling rows: peer = the same query with "
            f"{first} day stored, so ratio = latency({first}d) / latency(Nd); 1.0 is flat, target 0.9.",
            "'full scan' = the same statement on a pushlake connection with "
            "SET disabled_optimizers = 'filter_pushdown'; 'DuckDB hive glob' = read_parquet over "
            "lake/<table>/*/*/*.parquet with hive_partitioning, filtering on the path columns.",
            f"Medians of {a.runs} interleaved rounds after one warm-up; shared 2-core machine.",
        ]
        for level in levels:
            s = stats[level]
            notes.append(f"{level}d stored: {s['files']} live files ({s['trips_files']} trips, "
                         f"{s['trip_samples_files']} trip_samples, {s['crashes_files']} crashes), "
                         f"{s['bytes'] / 1e6:.1f} MB, {s['trips_rows']} trips, {s['trip_samples_rows']} samples, "
                         f"{s['crashes_rows']} crashes; build: log {s['log_s']} s, compaction {s['compact_s']} s")
        for q in QUERIES:
            for v in VARIANTS:
                if v in results[first][q.name]:
                    notes.append(f"{q.name} / {v}: " + ", ".join(
                        f"{lv}d {fmt_ms(results[lv][q.name][v])} ms" for lv in levels))
        args = vars(a) | {"levels": levels}
        common.write_result(NAME, rows, args=args, notes=notes, results_dir=a.results_dir)
        return 0
    finally:
        wd.cleanup()


if __name__ == "__main__":
    run_main(main)
