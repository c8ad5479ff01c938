"""Deletion benchmark (issue 4, item 5): tombstones invisible at ack, physically applied, and
what pending tombstones cost a query.

Run by hand, from the repository root:
  .venv/bin/python -m bench.deletions_bench [--quick] [--trips N] [--large-every K] [--tombstones 1000,100000]
                                            [--concurrency N] [--runs N] [--workdir DIR] [--results-dir DIR]

Why it is built this way:
- The lake (default 1,000,000 10-second trips = 10 M samples; ``--large-every 20`` makes every
  20th trip a 33-minute one, 50,000 x ~2,000 = ~100 M more samples, if the disk and the hour
  allow) is built the way pushlake builds it: bench/gen.py trips appended to the log, then
  ``Compactor.drain()`` and maintenance (small files merged). Building takes a while (about
  1.3 ms of CPU per 10-second trip, 9 ms per 33-minute one), so with ``--workdir`` the built
  lake is kept as ``base-...`` and reused by later runs with the same shape.
- Each tombstone count runs on a working copy of that base lake (Parquet files and sealed log
  segments hard-linked, catalog and the rest copied), so every count starts from the same lake
  and the base stays a lake without tombstones to compare against.
- Invisible at ack: a real ``pushlake serve --no-compactor`` on the working copy receives the
  TRIP_DELETION pushes over HTTP (aiohttp client, ``--concurrency`` requests in flight); the time
  is from the first request sent to the last 200. Deleted trips are drawn uniformly at random
  over the whole lake (the case that touches the most files). Afterwards ``queries.connect``
  must see none of them (trips and samples joined against the deleted ids), and a spot check
  pushes 10 more deletions one by one, each followed at once by a query that must not see it.
  Peer: the same number of pushes to the same endpoint with a non-deletion event (no tombstone
  to publish), on a scratch server, so the ratio is the cost of publishing tombstones before
  the ack.
- Query overhead: typical queries timed on the working copy with the tombstones pending (the
  compactor has not run) against the untouched base lake (same files, hard links, same page
  cache), interleaved round by round; ratio = time without / time with, target 0.95 (pending
  tombstones cost at most 5 %). The first query after a new tombstone pays a refresh that
  reloads every pending tombstone; it is reported separately.
- Filtered by position: ``Compactor(work, cow_rows=0).drain(apply_deletes=False)`` projects the
  deletions and records where their rows are (position deletes) without rewriting a file: the
  state a mass deletion leaves while the merge thread rewrites the files. The same queries are
  timed again against the base ("pending (by position)"; the rows above are "pending (by key)").
- Physically applied: ``Compactor.apply_deletes()`` until none is left (the copy-on-write of
  every file holding a deleted trip; the time includes finding the rows). Peer: DuckDB rewriting the three trip tables of
  the base lake without the deleted trips (what a plain Parquet lake without a key index must
  do). After it, the same queries are timed again against the base (reported only).
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

import queries
from bench import common
from bench.common import (BenchError, Server, Workdir, dir_bytes, fmt_ms, http, interleaved, link_copy, median, pct,
                          push_all, run_main)
from bench.gen import trip_bodies, write_log
from lake.catalog import Catalog
from lake.compactor import Compactor, StepStats

NAME = "deletions"
EVENT_PATH = "/push/trip/event"
SPOT_CHECKS = 10
WARMUP = 64  # untimed pushes before the timed ones; on the lake these are tombstones matching no trip
OVERHEAD_QUERIES = {
    "per-team avg score, all trips":
        "SELECT team_id, count(*), avg(safety_score), avg(eco_driving_score) FROM trips GROUP BY 1 ORDER BY 1",
    "count of samples": "SELECT count(*) FROM trip_samples",
    "avg sample speed": "SELECT avg(speed_kmh) FROM trip_samples",
    "one team-month per driver":
        "SELECT user_id, count(*), avg(safety_score) FROM trips WHERE team_id = 'team-001' "
        "AND date BETWEEN DATE '2025-01-01' AND DATE '2025-01-30' GROUP BY 1 ORDER BY 1",
}


def event_body(itin: str, event: str = "TRIP_DELETION") -> bytes:
    return orjson.dumps({"itinId": itin, "event": event, "date": "2025-02-01T09:12:47.000+0000"})


def warmup(srv: Server, teams: list[str], event: str) -> list[tuple[str, str, bytes]]:
    """A few pushes before the timed ones (connections opened, first-use costs paid): events
    for itinIds that are not in the lake ("f" + 23 hex digits; lake ids are below 16**23)."""
    return [(EVENT_PATH, srv.keys[teams[j % len(teams)]], event_body(f"f{j:023x}", event)) for j in range(WARMUP)]


def team_of(i: int, teams: int) -> str:
    return f"team-{i % teams:03d}"


def itin_of(i: int) -> str:
    return f"{i:024x}"


# ---------------------------------------------------------------- the base lake

def lake_bodies(n: int, teams: int, days: int, large_every: int) -> Iterator[tuple[str, str, bytes]]:
    """n trips; trip i is (team i % teams, itinId i as 24 hex digits) whatever its size."""
    if not large_every:
        yield from trip_bodies(n, teams=teams, days=days, small=True)
        return
    n_large = n // large_every
    small = trip_bodies(n - n_large, teams=teams, days=days, small=True)
    large = trip_bodies(n_large, teams=teams, days=days, small=False, start=n - n_large, seed=2)
    for i in range(n):
        yield next(large) if i % large_every == large_every - 1 else next(small)


def build_base(base: Path, a: argparse.Namespace) -> dict:
    marker = base / "BUILT.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        print(f"reusing the lake built in {base} ({info['trips']} trips, {info['samples']} samples)", flush=True)
        return info
    if base.exists():
        shutil.rmtree(base)
    print(f"building a lake of {a.trips} trips in {base} ...", flush=True)
    t0 = time.monotonic()
    write_log(base, lake_bodies(a.trips, a.teams, a.days, a.large_every))
    t1 = time.monotonic()
    print(f"  log written in {t1 - t0:.1f} s; compacting", flush=True)
    last = [time.monotonic()]

    def progress(s: StepStats) -> None:
        if time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            print(f"  {s.records} records compacted ({s.records / (last[0] - t1):.0f}/s)", flush=True)

    with Compactor(base, retention_days=0) as c:
        st = c.drain(progress)
        t2 = time.monotonic()
        maint = c.maintain()
    t3 = time.monotonic()
    if st.failed:
        raise BenchError(f"{st.failed} trips FAILED projection while building the lake")
    cat = Catalog(base, readonly=True)
    try:
        files = cat.live_files()
    finally:
        cat.close()
    info = {"trips": sum(f.rows for f in files if f.tbl == "trips"),
            "samples": sum(f.rows for f in files if f.tbl == "trip_samples"),
            "files": len(files), "lake_bytes": sum(f.bytes for f in files),
            "log_bytes": dir_bytes(base / "log"), "log_s": round(t1 - t0, 1), "compact_s": round(t2 - t1, 1),
            "maintenance_s": round(t3 - t2, 1), "maintenance": maint}
    marker.write_text(json.dumps(info, indent=2) + "\n")
    print(f"  built: {info['trips']} trips, {info['samples']} samples, {info['files']} files, "
          f"{info['lake_bytes'] / 1e6:.0f} MB Parquet, {info['log_bytes'] / 1e9:.2f} GB log; "
          f"compaction {t2 - t1:.0f} s, maintenance {t3 - t2:.0f} s", flush=True)
    return info


# ---------------------------------------------------------------- measurements

def live_trip_files(data: Path) -> dict[str, list[str]]:
    cat = Catalog(data, readonly=True)
    try:
        out: dict[str, list[str]] = {}
        for f in cat.live_files():
            if f.tbl in ("trips", "trip_samples", "trip_events"):
                out.setdefault(f.tbl, []).append(str(data / f.path))
        return out
    finally:
        cat.close()


def full_rewrite_peer(base: Path, out: Path, deleted: pa.Table) -> float:
    """Seconds for DuckDB to rewrite the base lake's trip tables without the deleted trips."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    con = duckdb.connect()
    try:
        con.register("deleted_arrow", deleted)
        con.execute("CREATE TEMP TABLE deleted AS SELECT * FROM deleted_arrow")
        t0 = time.monotonic()
        for tbl, files in live_trip_files(base).items():
            con.execute("SET VARIABLE files = ?", [files])
            con.execute(
                f"COPY (SELECT * FROM read_parquet(getvariable('files'), hive_partitioning = false) t "
                f"WHERE NOT EXISTS (SELECT 1 FROM deleted d WHERE d.team_id = t.team_id AND d.itin_id = t.itin_id)) "
                f"TO '{out / tbl}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (team_id, date))")
        return time.monotonic() - t0
    finally:
        con.close()
        shutil.rmtree(out, ignore_errors=True)


def visible_deleted(con: queries.LakeConnection, deleted: pa.Table) -> tuple[int, int]:
    """(trips, samples) of deleted trips that a query still returns."""
    con.con.register("bench_deleted", deleted)
    try:
        t = con.execute("SELECT count(*) FROM trips JOIN bench_deleted USING (team_id, itin_id)").fetchall()[0][0]
        s = con.execute("SELECT count(*) FROM trip_samples JOIN bench_deleted USING (team_id, itin_id)").fetchall()[0][0]
    finally:
        con.con.unregister("bench_deleted")
    return t, s


def time_overhead(base_con: queries.LakeConnection, con: queries.LakeConnection, runs: int
                  ) -> dict[str, tuple[float, float]]:
    out = {}
    for name, sql in OVERHEAD_QUERIES.items():
        t = interleaved({"base": lambda sql=sql: base_con.execute(sql).fetchall(),
                         "work": lambda sql=sql: con.execute(sql).fetchall()}, runs)
        out[name] = (median(t["base"]), median(t["work"]))
    return out


def run_level(k: int, ids: list[int], base: Path, info: dict, wd: Path, a: argparse.Namespace) -> tuple[list[dict], list[str]]:
    rows: list[dict] = []
    notes: list[str] = []
    teams = [f"team-{t:03d}" for t in range(a.teams)]
    chosen, spot = ids[:k], ids[k:k + SPOT_CHECKS]
    work, scratch, logs = wd / "work", wd / "scratch", wd / "logs"
    logs.mkdir(exist_ok=True)
    print(f"\n== {k} tombstones ({k / info['trips']:.2%} of the trips), on a working copy", flush=True)
    link_copy(base, work)

    # peer: the same pushes with an event that is not a deletion, on a scratch data directory
    if scratch.exists():
        shutil.rmtree(scratch)
    srv = Server(scratch, logs, teams, compactor=False)
    try:
        push_all(srv.url, warmup(srv, teams, "TRIP_BENCH_NOOP"), a.concurrency)
        peer = push_all(srv.url, [(EVENT_PATH, srv.keys[team_of(i, a.teams)], event_body(itin_of(i), "TRIP_BENCH_NOOP"))
                                  for i in chosen], a.concurrency)
    finally:
        srv.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    if peer.non_200():
        raise BenchError(f"peer: {peer.non_200()} of {k} pushes were not answered 200")

    deleted_ids = chosen + spot
    deleted = pa.table({"team_id": [team_of(i, a.teams) for i in deleted_ids],
                        "itin_id": [itin_of(i) for i in deleted_ids]})
    srv = Server(work, logs, teams, compactor=False)
    try:
        push_all(srv.url, warmup(srv, teams, "TRIP_DELETION"), a.concurrency)
        res = push_all(srv.url, [(EVENT_PATH, srv.keys[team_of(i, a.teams)], event_body(itin_of(i))) for i in chosen],
                       a.concurrency)
        if res.non_200():
            raise BenchError(f"{res.non_200()} of {k} deletions were not answered 200")
        lat = res.latencies_ms()
        print(f"  {k} deletions acked in {res.seconds:.2f} s ({k / res.seconds:.0f}/s, p50 {pct(lat, 50):.1f} ms, "
              f"p99 {pct(lat, 99):.1f} ms); peer (non-deletion events) {peer.seconds:.2f} s", flush=True)
        con = queries.connect(work)
        try:
            # spot check: each deletion invisible to the first query after its 200
            before, after = [], []
            q = "SELECT count(*) FROM trips WHERE team_id = ? AND itin_id = ?"
            for i in spot:
                p = [team_of(i, a.teams), itin_of(i)]
                t = time.perf_counter()
                seen = con.execute(q, p).fetchall()[0][0]
                before.append((time.perf_counter() - t) * 1000)
                if seen != 1:
                    raise BenchError(f"spot check: trip {p} should be visible before its deletion, count {seen}")
                st, _ = http("POST", srv.url + EVENT_PATH, event_body(itin_of(i)), Server.headers(srv.keys[p[0]]), 10)
                if st != 200:
                    raise BenchError(f"spot check: deletion answered {st}")
                t = time.perf_counter()
                seen = con.execute(q, p).fetchall()[0][0]
                after.append((time.perf_counter() - t) * 1000)
                if seen != 0:
                    raise BenchError(f"spot check: trip {p} still visible after its deletion was acknowledged")
        finally:
            con.close()
    finally:
        srv.stop()
    print(f"  spot check: {len(spot)}/{len(spot)} deletions invisible to the first query after the 200; "
          f"that query took {median(after):.1f} ms (refresh of {k + len(spot)} pending tombstones) "
          f"against {median(before):.1f} ms without a refresh", flush=True)

    base_con, con = queries.connect(base), queries.connect(work)
    try:
        vt, vs = visible_deleted(con, deleted)
        total = con.execute("SELECT count(*) FROM trips").fetchall()[0][0]
        if vt or vs or total != info["trips"] - len(deleted_ids):
            raise BenchError(f"after the acks: {vt} trips and {vs} samples of deleted trips visible, "
                             f"{total} trips (expected {info['trips'] - len(deleted_ids)})")
        print(f"  verified: none of the {len(deleted_ids)} deleted trips visible (trips, samples); "
              f"{total} trips left", flush=True)
        pending = time_overhead(base_con, con, a.runs)
    finally:
        con.close()
    for name, (b, w) in pending.items():
        print(f"  {name:32} no tombstones {fmt_ms(b):>8} ms   {k} pending {fmt_ms(w):>8} ms   "
              f"ratio {b / w:.2f}", flush=True)

    # the compactor projects the deletions and finds their rows (position deletes), with no
    # budget for rewriting them: the state readers see while a mass deletion is rewritten
    t0 = time.monotonic()
    with Compactor(work, cow_rows=0) as c:
        st = c.drain(apply_deletes=False)
    resolve_s = time.monotonic() - t0
    print(f"  compactor found their rows in {resolve_s:.2f} s ({st.records} log records)", flush=True)
    con = queries.connect(work)
    try:
        vt, vs = visible_deleted(con, deleted)
        if vt or vs:
            raise BenchError(f"with position deletes: {vt} trips / {vs} samples visible")
        found = time_overhead(base_con, con, a.runs)
    finally:
        con.close()
    for name, (b, w) in found.items():
        print(f"  {name:32} no tombstones {fmt_ms(b):>8} ms   {k} position deletes {fmt_ms(w):>8} ms   "
              f"ratio {b / w:.2f}", flush=True)

    t0 = time.monotonic()
    with Compactor(work) as c:
        rewritten = 0
        while n := c.apply_deletes():
            rewritten += n
    apply_s = resolve_s + time.monotonic() - t0
    print(f"  compactor applied them in {apply_s:.2f} s in all ({rewritten} files rewritten)", flush=True)
    peer_s = full_rewrite_peer(base, wd / "rewrite", deleted)
    print(f"  peer: DuckDB rewrite of the trip tables without them {peer_s:.2f} s", flush=True)

    con = queries.connect(work)
    try:
        vt, vs = visible_deleted(con, deleted)
        cat = Catalog(work, readonly=True)
        try:
            left = cat.con.execute("SELECT count(*) FROM tombstones WHERE applied_at IS NULL").fetchall()[0][0]
        finally:
            cat.close()
        if vt or vs or left:
            raise BenchError(f"after compaction: {vt} trips / {vs} samples visible, {left} tombstones still pending")
        applied = time_overhead(base_con, con, a.runs)
    finally:
        con.close()
        base_con.close()
    for name, (b, w) in applied.items():
        print(f"  after apply: {name:32} no tombstones {fmt_ms(b):>8} ms   applied {fmt_ms(w):>8} ms", flush=True)

    rows.append(common.row(f"{k} deletions: all acked (invisible)", "s", "same pushes, no tombstone",
                           peer.seconds, res.seconds, higher_is_better=False))
    rows.append(common.row(f"{k} deletions: ack p99", "ms", "same pushes, no tombstone",
                           pct(peer.latencies_ms(), 99), pct(lat, 99), higher_is_better=False))
    for name, (b, w) in pending.items():
        rows.append(common.row(f"{name}, {k} pending (by key)", "ms", "same lake, no tombstones", b, w,
                               higher_is_better=False, target=0.5))
    for name, (b, w) in found.items():
        rows.append(common.row(f"{name}, {k} pending (by position)", "ms", "same lake, no tombstones", b, w,
                               higher_is_better=False, target=0.5))
    rows.append(common.row(f"first query after a deletion, {k} pending", "ms", "same query, no refresh",
                           median(before), median(after), higher_is_better=False))
    rows.append(common.row(f"{k} tombstones physically applied", "s", "DuckDB full rewrite", peer_s, apply_s,
                           higher_is_better=False))
    for name, (b, w) in applied.items():
        rows.append(common.row(f"{name}, {k} applied", "ms", "same lake, no tombstones", b, w,
                               higher_is_better=False))
    notes.append(f"{k} deletions: acked in {res.seconds:.2f} s ({k / res.seconds:.0f}/s; ack latency p50 "
                 f"{pct(lat, 50):.1f} ms, p99 {pct(lat, 99):.1f} ms, max {max(lat):.1f} ms) with {a.concurrency} "
                 f"in flight; peer {peer.seconds:.2f} s. Applied by the compactor in {apply_s:.2f} s "
                 f"({st.files_rewritten} files rewritten); DuckDB full rewrite {peer_s:.2f} s. Spot check: "
                 f"{len(spot)} more deletions each invisible to the first query after its 200.")
    shutil.rmtree(work, ignore_errors=True)
    return rows, notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake deletion benchmark: tombstones at ack, applied, query cost")
    ap.add_argument("--quick", action="store_true", help="smoke mode: 1,000 trips, 200 tombstones")
    ap.add_argument("--trips", type=int, help="trips in the lake (default 1,000,000; 1,000 with --quick)")
    ap.add_argument("--large-every", type=int, default=0, metavar="K",
                    help="make every K-th trip a 33-minute one (~2,000 samples); 0 = all 10-second (10 samples)")
    ap.add_argument("--teams", type=int, default=4)
    ap.add_argument("--days", type=int, default=30, help="days the trips are spread over (default 30)")
    ap.add_argument("--tombstones", help="tombstone counts, comma-separated (default 1000,100000; 200 with --quick)")
    ap.add_argument("--concurrency", type=int, default=64, help="deletion requests in flight (default 64)")
    ap.add_argument("--runs", type=int, help="timed rounds per query, median kept (default 7; 3 with --quick)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the choice of deleted trips")
    ap.add_argument("--workdir", type=Path, help="where lakes go (default: a temporary directory, removed); "
                                                 "a lake built there is reused by later runs of the same shape")
    common.add_results_arg(ap)
    a = ap.parse_args(argv)
    a.trips = a.trips or (1_000 if a.quick else 1_000_000)
    a.runs = a.runs or (3 if a.quick else 7)
    levels = [int(x) for x in (a.tombstones or ("200" if a.quick else "1000,100000")).split(",")]
    if a.trips < 1 or a.teams < 1 or a.days < 1 or a.runs < 1 or a.concurrency < 1 or min(levels) < 1:
        ap.error("sizes must be positive")
    if max(levels) + SPOT_CHECKS > a.trips:
        ap.error("more tombstones than trips")

    wd = Workdir(a.workdir, "pushlake-bench-deletions-")
    try:
        base = wd.path / f"base-n{a.trips}-t{a.teams}-d{a.days}-l{a.large_every}"
        info = build_base(base, a)
        ids = random.Random(a.seed).sample(range(a.trips), max(levels) + SPOT_CHECKS)
        rows: list[dict] = []
        notes = [f"Lake: {info['trips']} trips, {info['samples']} samples "
                 f"({'10-second trips, 10 samples each' if not a.large_every else f'every {a.large_every}th trip 33-minute (~2,000 samples), the rest 10-second (10 samples)'}), "
                 f"{a.teams} teams over {a.days} days, {info['files']} Parquet files, "
                 f"{info['lake_bytes'] / 1e6:.0f} MB Parquet + {info['log_bytes'] / 1e9:.2f} GB log; built in "
                 f"{info['log_s']} + {info['compact_s']} + {info['maintenance_s']} s (log, compaction, maintenance).",
                 f"Before each timed batch, {WARMUP} untimed pushes warm the connections (on the lake: deletions of "
                 "itinIds that do not exist, so the pending tombstones include them but no file is affected).",
                 "Deleted trips drawn uniformly at random over the lake (worst case for copy-on-write: nearly every "
                 "file holds one).",
                 "Query rows: ratio = ms without tombstones / ms with them; target 0.95 = at most 5 % slower. "
                 f"Medians of {a.runs} interleaved rounds; the lake without tombstones is the same files (hard links)."]
        for k in levels:
            r, n = run_level(k, ids, base, info, wd.path, a)
            rows += r
            notes += n
        print()
        common.print_rows(rows)
        args = vars(a) | {"levels": levels}
        common.write_result(NAME, rows, args=args, notes=notes, results_dir=a.results_dir)
        return 0
    finally:
        wd.cleanup()


if __name__ == "__main__":
    run_main(main)
