"""Open-lake benchmark (issue 11): what readers that know nothing of pushlake get, and what it costs.

Run by hand, from the repository root:
  .venv/bin/python -m bench.openlake_bench [--quick] [--rate TRIPS_PER_S] [--duration S]
                                           [--deletions N] [--workdir DIR] [--results-dir DIR]

Why it is built this way:
- A real ``pushlake serve`` with its compactor and its Iceberg mirror (what users run). Seed
  trips (the 170 KB fixture, unique itinIds) are pushed and compacted first.
- Deletion window: a deleter pushes a TRIP_DELETION of a seed trip and notes when its 200
  arrives; a poller in its own process (so that it shares no GIL with the load) runs the plain
  reader's query, a stock DuckDB glob over ``lake/trips/`` with hive partitioning, until the trip
  is gone. Window = that query's completion - the 200. Measured with the service idle, then
  under the freshness load (``--rate`` trips/s of the 170 KB fixture, open loop, as
  bench/freshness_bench.py). pushlake's own views hide the trip at the 200 (tests prove it):
  their window is 0 by construction, the peer value here.
- Mirror lag: every Iceberg snapshot records the lake snapshot it mirrors (``pushlake.snapshot``
  in its summary); the lag of a lake commit is the time of the first Iceberg snapshot that covers
  it minus the commit's time (both wall clocks of this machine), read from the two catalogs after
  the run: every commit counts, none is sampled.
- Step cost of the links: the compactor times the hive tree's links after each commit
  (``links_seconds``); an in-process run of the same compactor over the same log reports it
  against the whole step (there is no variant without links to compare: they are the feature).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path

import duckdb
import orjson

from bench import common
from bench.common import BenchError, Server, Workdir, http, loop_runner, median, pct, run_main
from bench.freshness_bench import steady_load, trip_template

NAME = "openlake"
# between two polls of the plain glob: as bench.freshness_bench polls (a poller every 10 ms took
# ~0.4 of a core from the 2 the service and the load share; the window is then at most 50 ms longer)
POLL_S = 0.05
TEAM = "bench"


def plain_count(con: duckdb.DuckDBPyConnection, data: str, itins: list[str]) -> set[str]:
    """The itinIds among ``itins`` that a stock DuckDB glob still returns. A file unlinked between
    the glob and its opening (a commit meanwhile) fails the query: run it again, as a plain
    reader would (docs/reading.md)."""
    for _ in range(20):
        try:
            rows = con.execute(f"SELECT DISTINCT itin_id FROM read_parquet('{data}/lake/trips/**/*.parquet', "
                               "hive_partitioning = true) WHERE itin_id IN (SELECT unnest(?))", [itins]).fetchall()
            return {r[0] for r in rows}
        except duckdb.IOException as e:
            if "No files found" in str(e):
                return set()
            if "No such file" not in str(e):
                raise
    raise BenchError("the plain glob kept finding files gone")


def watch(data: str, todo: mp.Queue, out: mp.connection.Connection, stop: mp.synchronize.Event) -> None:
    """Poll the plain glob for the trips handed over (itin, time of the deletion's 200) until each
    is gone; send {itin: seconds from the 200 to the first query that no longer returns it}."""
    con = duckdb.connect()
    pending: dict[str, float] = {}
    gone: dict[str, float] = {}
    query_ms: list[float] = []
    while not (stop.is_set() and not pending and todo.empty()):
        while not todo.empty():
            itin, acked = todo.get()
            pending[itin] = acked
        if not pending:
            time.sleep(0.005)
            continue
        t = time.monotonic()
        still = plain_count(con, data, list(pending))
        done = time.monotonic()
        query_ms.append((done - t) * 1000)
        for itin in list(pending):
            if itin not in still:
                gone[itin] = done - pending.pop(itin)
        if stop.is_set() and time.monotonic() > (max(pending.values(), default=done) + 60):
            break  # not gone a minute after the load: reported as missing
        time.sleep(POLL_S)
    out.send((gone, query_ms))
    out.close()


def delete_each(srv: Server, itins: list[str], todo: mp.Queue, every: float, stop: threading.Event) -> int:
    n = 0
    for itin in itins:
        if stop.is_set():
            break
        body = orjson.dumps({"itinId": itin, "event": "TRIP_DELETION", "date": "2025-03-30T10:00:00.000+0000"})
        status, _ = http("POST", srv.url + "/push/trip/event", body, srv.headers(srv.keys[TEAM]), timeout=30)
        if status != 200:
            raise BenchError(f"a deletion was answered {status}")
        todo.put((itin, time.monotonic()))
        n += 1
        stop.wait(every)
    return n


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def named(srv: Server, comm: str) -> int | None:
    for pid in common.descendants(srv.pid):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                return pid
        except OSError:
            pass
    return None


def mirror_lag(data: Path) -> list[float]:
    """Seconds from each lake commit to the first Iceberg snapshot of ``trips`` that covers it."""
    from pyiceberg.catalog import load_catalog
    from lake.iceberg import Mirror
    cat = load_catalog("pushlake", **Mirror(data).properties())
    tbl = cat.load_table("pushlake.trips")
    mirrored = sorted((int(s.summary["pushlake.snapshot"]), s.timestamp_ms / 1000) for s in tbl.snapshots()
                      if s.summary is not None and "pushlake.snapshot" in s.summary.additional_properties)
    db = sqlite3.connect(f"file:{data / 'catalog.db'}?mode=ro", uri=True)
    commits = db.execute("SELECT id, created_at FROM snapshots WHERE operation = 'append' AND summary NOT LIKE "
                         "'records=0 %' ORDER BY id").fetchall()
    db.close()
    lags = []
    first = mirrored[0][0] if mirrored else None
    for sid, at in commits:
        if first is None or sid <= first:
            continue  # before the first Iceberg snapshot kept (history expired): not measured
        cover = next((ts for ms, ts in mirrored if ms >= sid), None)
        if cover is not None:
            lags.append(cover - at)
    return lags


def link_cost(wd: Path, trips: int, per_step: int) -> tuple[list[float], list[float]]:
    """(links ms, step ms) per step of an in-process compactor over ``trips`` small pushes
    arriving ``per_step`` at a time (each step appends one file per table and rewrites none)."""
    from ingest.log import LogWriter
    from ingest.record import Kind
    from lake.compactor import Compactor
    data = wd / "links-data"
    raw = (common.FIXTURES / "trip_small.json").read_bytes()
    links, steps = [], []
    with Compactor(data, workers=0) as c:
        for s in range(0, trips, per_step):
            w = LogWriter(data, 0)
            items = []
            for i in range(s, min(trips, s + per_step)):
                itin = f"links{i:08d}"
                body = raw.replace(orjson.loads(raw)["itinId"].encode(), itin.encode())
                items.append((Kind.TRIP, int(time.time() * 1e6), TEAM, itin, body))
            w.append(items)
            w.close()
            st = c.step()
            links.append(st.links_seconds * 1000)
            steps.append(st.seconds * 1000)
    return links, steps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake open-lake benchmark: plain readers' deletion window, "
                                             "Iceberg mirror lag, the links' cost per step")
    ap.add_argument("--quick", action="store_true", help="smoke mode: a few deletions, 4 s of load")
    ap.add_argument("--rate", type=float, default=50.0, help="170 KB trips per second of the load (default 50)")
    ap.add_argument("--duration", type=float, help="seconds of load (default 60; 4 with --quick)")
    ap.add_argument("--deletions", type=int, help="deletions per phase (default 30; 4 with --quick)")
    ap.add_argument("--workdir", type=Path, help="where the data goes (default: a temporary directory, removed)")
    common.add_results_arg(ap)
    a = ap.parse_args(argv)
    a.duration = a.duration or (4.0 if a.quick else 60.0)
    a.deletions = a.deletions or (4 if a.quick else 30)
    if a.rate <= 0 or a.duration <= 0 or a.deletions <= 0:
        ap.error("--rate, --duration and --deletions must be positive")

    wd = Workdir(a.workdir, "pushlake-bench-openlake-")
    data = wd.path / "openlake-data"
    srv: Server | None = None
    ctx = mp.get_context("spawn")
    results: dict[str, dict] = {}
    try:
        if data.exists():
            raise BenchError(f"{data} already exists: remove it or choose another --workdir")
        srv = Server(data, wd.path, [TEAM], compactor=True)
        pre, post = trip_template()
        nonce = secrets.token_hex(4)
        seeds = [f"seed{nonce}{i:06d}" for i in range(2 * a.deletions)]
        items = [("/push/trip", srv.keys[TEAM], pre + s.encode() + post) for s in seeds]
        res = common.push_all(srv.url, items, concurrency=16)
        if res.non_200():
            raise BenchError(f"{res.non_200()} seed pushes were not answered 200")
        con = duckdb.connect()
        deadline = time.monotonic() + 60
        while len(plain_count(con, str(data), seeds)) < len(seeds):
            if time.monotonic() > deadline:
                raise BenchError("the seed trips did not reach the hive tree within 60 s")
            time.sleep(0.2)
        print(f"{len(seeds)} seed trips in the hive tree", flush=True)
        for phase, victims in (("idle", seeds[:a.deletions]), ("load", seeds[a.deletions:])):
            todo, stop = ctx.Queue(), ctx.Event()
            recv, send = ctx.Pipe(duplex=False)
            poller = ctx.Process(target=watch, args=(str(data), todo, send, stop), name="plain-poller")
            poller.start()
            send.close()
            time.sleep(1.0)  # the poller's imports
            if phase == "idle":
                delete_each(srv, victims, todo, 1.0, threading.Event())
                load = None
            else:
                from lake.iceberg import PROCESS_NAME
                mpid = named(srv, PROCESS_NAME)
                kids = [k for k in srv.child_pids() if "resource_tracker" not in common.cmdline(k)]
                cpids = {"mirror": mpid, "compactor": kids[0] if len(kids) == 1 else None}
                cpu0 = {k: cpu_seconds(p) for k, p in cpids.items() if p}
                t_load = time.monotonic()
                halt = threading.Event()
                every = a.duration / (len(victims) + 1)
                deleter = threading.Thread(target=delete_each, args=(srv, victims, todo, every, halt), daemon=True)
                with loop_runner() as r:
                    deleter.start()
                    load = r.run(steady_load(srv.url, srv.keys[TEAM], a.rate, a.duration, 256))
                halt.set()
                deleter.join(30)
                elapsed = time.monotonic() - t_load
                cpu = {k: (cpu_seconds(cpids[k]) - v) / elapsed for k, v in cpu0.items()}
                print("  CPU under load (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()), flush=True)
                results["cpu"] = cpu
            stop.set()
            if not recv.poll(90):
                raise BenchError("the plain-reader poller did not report")
            gone, query_ms = recv.recv()
            poller.join(10)
            windows = [gone[v] * 1000 for v in victims if v in gone]
            results[phase] = {"windows": windows, "missing": len(victims) - len(windows), "query_ms": query_ms,
                              "load": load}
            print(f"  {phase}: deletion 200 -> gone from a plain glob: p50 {pct(windows, 50):.0f} ms, "
                  f"p99 {pct(windows, 99):.0f} ms, max {max(windows, default=float('nan')):.0f} ms "
                  f"({len(windows)} deletions; poll query median {median(query_ms):.1f} ms)", flush=True)
        srv.stop()
        srv = None
        lags = [x * 1000 for x in mirror_lag(data)]
        print(f"  Iceberg mirror lag (lake commit -> Iceberg snapshot covering it): p50 {pct(lags, 50):.0f} ms, "
              f"p99 {pct(lags, 99):.0f} ms over {len(lags)} commits", flush=True)
        links, steps = link_cost(wd.path, 400 if a.quick else 4000, 20)
        share = [lk / st for lk, st in zip(links, steps) if st]
        print(f"  links per step: median {median(links):.2f} ms of a {median(steps):.1f} ms step "
              f"({median(share):.1%}); p99 {pct(links, 99):.2f} ms", flush=True)
    finally:
        if srv is not None:
            srv.stop()
        wd.cleanup()

    idle, load = results["idle"], results["load"]
    rows = [
        common.row("deletion 200 -> gone from a plain glob, idle, p50", "ms", "pushlake views", 0.0,
                   pct(idle["windows"], 50), higher_is_better=False),
        common.row("deletion 200 -> gone from a plain glob, idle, p99", "ms", "pushlake views", 0.0,
                   pct(idle["windows"], 99), higher_is_better=False),
        common.row("deletion 200 -> gone from a plain glob, under load, p50", "ms", "pushlake views", 0.0,
                   pct(load["windows"], 50), higher_is_better=False),
        common.row("deletion 200 -> gone from a plain glob, under load, p99", "ms", "pushlake views", 0.0,
                   pct(load["windows"], 99), higher_is_better=False),
        common.row("Iceberg mirror lag p50", "ms", "-", None, pct(lags, 50), higher_is_better=False),
        common.row("Iceberg mirror lag p99", "ms", "-", None, pct(lags, 99), higher_is_better=False),
        common.row("hive-tree links per compactor step (median)", "ms", "step", median(steps), median(links),
                   higher_is_better=False),
    ]
    cpu = results.get("cpu", {})
    if "mirror" in cpu:
        rows.append(common.row("Iceberg mirror process CPU under load", "cores", "compactor process",
                               cpu.get("compactor"), cpu["mirror"], higher_is_better=False))
    print()
    common.print_rows(rows)
    ld = load["load"]
    notes = [
        f"Deletion window: a stock DuckDB glob over lake/trips/ polled from its own process every 10 ms "
        f"plus one query (median {median(idle['query_ms']):.1f} ms idle, {median(load['query_ms']):.1f} ms under load: "
        "the resolution). pushlake's views and /v1/query hide a deleted trip at its 200 (tests/test_deletions.py).",
        f"Idle: {len(idle['windows'])} deletions one per second, {idle['missing']} never gone. Under load: "
        f"{len(load['windows'])} deletions spread over {a.duration:g} s of {a.rate:g} trips/s of 170 KB "
        f"(open loop; {ld.sent if ld else 0} sent, answers {ld.statuses if ld else {}}), {load['missing']} never gone.",
        f"Iceberg mirror lag over {len(lags)} lake commits: p50 {pct(lags, 50):.0f} ms, p99 {pct(lags, 99):.0f} ms, "
        f"max {max(lags, default=float('nan')):.0f} ms (lake snapshots' created_at vs Iceberg snapshots' timestamp).",
        f"Links: {len(links)} in-process compactor steps of 20 small trips (3 new files each, nothing rewritten): "
        f"links median {median(links):.2f} ms, p99 {pct(links, 99):.2f} ms; step median {median(steps):.1f} ms.",
        "CPU under load (cores, from /proc utime+stime over the load phase): "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        + ". The mirror runs in its own process (pl-iceberg): it costs the compactor no step time, only a "
        "share of the 2 cores.",
    ]
    common.write_result(NAME, rows, args=vars(a), notes=notes, results_dir=a.results_dir)
    return 0 if not (idle["missing"] or load["missing"]) else 1


if __name__ == "__main__":
    run_main(main)
