"""Scale-out benchmark (issue 12): what PostgreSQL, S3 and more nodes cost or give, on real
``pushlake serve`` processes with their compactors.

Run by hand, from the repository root:
  .venv/bin/python -m bench.scaleout_bench [--quick] [--deletions N] [--duration S] [--connections N]
                                           [--trips N] [--runs N] [--nodes N] [--loader auto|wrk|python]
                                           [--results-dir DIR]

Why it is built this way:
- The services are the test suite's (tests/services.py): a real PostgreSQL (Debian's binaries,
  `make test-services`) and a real moto_server (the venv), started here and stopped at the end.
  Three deployments of ``pushlake serve``, each on its own data directory, each measured against
  its peer in the same run:
    A  the embedded default (SQLite catalog and Parquet in --data),
    B  ``--catalog postgresql://…`` with the Parquet still in --data,
    C  ``--catalog postgresql://…`` and ``--lake s3://bucket/prefix`` (AWS_* in the environment),
       as node n1, joined by n2 and n3 for the throughput of several nodes.
  B differs from A by the catalog only, C from B by the lake only.
- (1) Deletion ack latency: K TRIP_DELETION pushes (unique itinIds, none in the lake) with a few
  requests in flight (light load: the latency of publishing the tombstone, not of a queue), then
  small-push throughput: the same bodies, closed loop at max load (wrk when on PATH, else an
  aiohttp client, as bench/ingest_bench.py: said in the results). B vs A.
- (2) Compaction throughput: N trips of the 170 KB fixture pushed with unique itinIds; trips/s =
  N / (first push sent -> first query that sees all N). A reader process polls (a fresh
  ``queries.connect`` per poll). C vs B.
- (3) Query latency: typical queries, each on a fresh ``queries.connect`` in a reader process
  with the deployment's environment (what ``pushlake sql`` does after its start-up), the two
  readers interleaved round by round; p50/p99 over all of them. C vs B.
- (4) Nodes: 1, 2, then 3 nodes on PostgreSQL + S3 take small pushes spread over their ports
  (connections round-robin); aggregate req/s against one node in the same run. CPU seconds per
  process kind over each load window, from /proc: receivers (the serve processes), compactors
  (everything under them), PostgreSQL (postmaster and backends, exited ones included), moto,
  the load generator, and the rest of the machine (/proc/stat) - what limits it on this box.
- Every phase starts once the compactors have caught up (``/health``: lag 0 on every node), so
  no phase pays for the previous one's backlog; a node count's runs also wait until the nodes'
  processes are quiet (a node just started is still importing for a few CPU-seconds), then
  measure the same processes idle for a moment before the load.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import orjson

from bench import common
from bench.common import (PY, ROOT, BenchError, Server, Workdir, http, loop_runner, median, pct,
                          push_all, run_main)
from bench.freshness_bench import trip_template
from bench.ingest_bench import EVENT_PATH, EVENT_PREFIX, EVENT_SUFFIX, ensure_wrk, run_wrk, wrk_version

NAME = "scaleout"
TEAM = "bench"
TRIP_PATH = "/push/trip"
BUCKET = "scaleout"
ENTERPRISE_KEY = "ek_scaleout-bench-" + "0" * 24  # one value for every node (docs/scale-out.md)
QUERIES = {
    "count of trips": ("SELECT count(*) FROM trips", None),
    "per-team avg score": ("SELECT team_id, count(*), avg(safety_score), avg(eco_driving_score) FROM trips "
                           "GROUP BY 1 ORDER BY 1", None),
    "a trip's samples": ("SELECT count(*), avg(speed_kmh) FROM trip_samples WHERE team_id = ? AND itin_id = ?",
                         "trip"),
    "avg sample speed": ("SELECT avg(speed_kmh) FROM trip_samples", None),
}

# the reader: one JSON request per line in, one JSON answer per line out; a fresh connection each time
_READER = r"""
import os, sys, time, orjson, queries
d = os.environ["READER_DIR"]
for line in sys.stdin:
    req = orjson.loads(line)
    try:
        t0 = time.perf_counter()
        con = queries.connect(d)
        t1 = time.perf_counter()
        try:
            rows = con.execute(req["sql"], req["params"] or None).fetchall()
        finally:
            con.close()
        t2 = time.perf_counter()
        out = {"rows": rows, "connect_ms": (t1 - t0) * 1000, "query_ms": (t2 - t1) * 1000}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.buffer.write(orjson.dumps(out, default=str) + b"\n")
    sys.stdout.flush()
"""


# ---------------------------------------------------------------- services and deployments

@contextlib.contextmanager
def service(kind: str) -> Iterator[tuple[object, int]]:
    """tests/services.py's server ``kind`` ("postgres" or "s3"), as its ``started()`` runs it,
    with the pid of the server process (for its CPU time)."""
    from tests.services import SERVERS, ServiceUnavailable
    server = SERVERS[kind]()
    try:
        info = server.start()
    except (ServiceUnavailable, OSError, subprocess.SubprocessError) as e:
        server.stop()
        raise BenchError(f"{kind} could not be started: {e}") from None
    try:
        yield info, server.proc.pid
    finally:
        server.stop()


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while the block runs (the CLI commands and servers started in it
    inherit them), the previous environment afterwards."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Deployment:
    """One way of running pushlake: the environment its commands get (catalog, lake, AWS_*), its
    nodes (``Server``s), and a reader process in the same environment."""

    def __init__(self, label: str, root: Path, env: dict[str, str], remote_lake: bool) -> None:
        self.label, self.root, self.env, self.remote_lake = label, root, env, remote_lake
        self.nodes: list[Server] = []
        self.keys: dict[str, str] = {}
        self.reader: subprocess.Popen | None = None
        self.root.mkdir(parents=True, exist_ok=True)

    def add_node(self, name: str | None) -> Server:
        """A ``pushlake serve`` (``--node name`` unless None) with its compactor; the team is
        created by the first node's start only (the others share the catalog)."""
        data = self.root / (name or "data")
        with environment(self.env):
            srv = Server(data, self.root, [] if self.nodes else [TEAM], compactor=True,
                         extra_args=[*(["--node", name] if name else []), "--iceberg-interval", "0"])
        if not self.nodes:
            self.keys = srv.keys
        self.nodes.append(srv)
        return srv

    def headers(self) -> dict[str, str]:
        return Server.headers(self.keys[TEAM])

    def query(self, sql: str, params: list | None = None) -> dict:
        if self.reader is None or self.reader.poll() is not None:
            # on a shared catalog and lake, a reader needs nothing of a node's disk: an empty dir
            rdir = self.root / "reader" if self.remote_lake else self.nodes[0].data
            rdir.mkdir(exist_ok=True)
            self.reader = subprocess.Popen([PY, "-c", _READER], cwd=ROOT, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=open(self.root / "reader.log", "ab"),
                                           env={**os.environ, **self.env, "READER_DIR": str(rdir)},
                                           start_new_session=True)
        self.reader.stdin.write(orjson.dumps({"sql": sql, "params": params}) + b"\n")
        self.reader.stdin.flush()
        line = self.reader.stdout.readline()
        if not line:
            raise BenchError(f"{self.label}: the reader died: {(self.root / 'reader.log').read_text()[-2000:]}")
        out = orjson.loads(line)
        if "error" in out:
            raise BenchError(f"{self.label}: query failed: {out['error']}")
        return out

    def lag(self) -> int | None:
        """Records not compacted yet over every node (None if a /health has no compactor lag)."""
        total = 0
        for n in self.nodes:
            st, body = http("GET", n.url + "/health", timeout=10)
            try:
                doc = json.loads(body)
            except ValueError:
                return None
            lags = [c.get("lagRecords") for c in _compactor_states(doc)]
            if not lags or any(x is None for x in lags):
                return None
            total += sum(lags)
        return total

    def wait_idle(self, timeout: float) -> None:
        """Until every node's compactor has caught up (or ``timeout``: then go on, and say so)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lag = self.lag()
            if lag == 0:
                return
            if lag is None:  # no lag in /health: give the compactor a moment
                time.sleep(1.0)
                return
            time.sleep(0.1)
        print(f"  ({self.label}: compactors still lagging after {timeout:.0f} s; going on)", flush=True)

    def stop(self) -> None:
        if self.reader is not None and self.reader.poll() is None:
            self.reader.stdin.close()
            try:
                self.reader.wait(5)
            except subprocess.TimeoutExpired:
                self.reader.kill()
                self.reader.wait(5)
        for n in self.nodes:
            n.stop()


def _compactor_states(doc: object) -> list[dict]:
    """The compactor states in a /health document, wherever they sit (one per partition)."""
    found: list[dict] = []

    def walk(x: object) -> None:
        if isinstance(x, dict):
            if "lagRecords" in x:
                found.append(x)
            else:
                for v in x.values():
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(doc)
    return found


# ---------------------------------------------------------------- CPU accounting from /proc

CLK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def own_cpu(pid: int) -> float:
    """utime + stime of one process, seconds (0 if gone)."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / CLK if f else 0.0


def tree_cpu(pid: int, include_root: bool = True) -> float:
    """CPU seconds of a process tree: every live process's own time plus the time of the children
    each one has reaped (cutime + cstime), so exited workers and backends count too."""
    total = 0.0
    for p in ([pid] if include_root else []) + common.descendants(pid):
        f = _stat(p)
        if f:
            total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / CLK
    if not include_root:  # the root's reaped children are below it, not the root itself
        f = _stat(pid)
        if f:
            total += (int(f[13]) + int(f[14])) / CLK
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / CLK, sum(v[:8]) / CLK


class CpuMeter:
    """CPU seconds per process kind between ``start()`` and ``stop()``."""

    def __init__(self, nodes: list[Server], pg_pid: int, moto_pid: int) -> None:
        self.nodes, self.pg, self.moto = nodes, pg_pid, moto_pid

    def sample(self) -> dict[str, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        rc = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk runs as our (reaped) children
        busy, total = machine_busy()
        return {"receivers": sum(own_cpu(n.pid) for n in self.nodes),
                "compactors": sum(tree_cpu(n.pid, include_root=False) for n in self.nodes),
                "postgresql": tree_cpu(self.pg), "moto": tree_cpu(self.moto),
                "load generator": ru.ru_utime + ru.ru_stime + rc.ru_utime + rc.ru_stime,
                "_busy": busy, "_total": total, "_wall": time.monotonic()}

    def start(self) -> None:
        self.before = self.sample()

    def stop(self) -> dict[str, float]:
        """Cores used per kind over the window (1.0 = one core busy all the time), with the
        machine's busy cores ("machine") and what none of the kinds explains ("other")."""
        after = self.sample()
        wall = after["_wall"] - self.before["_wall"]
        out = {k: (after[k] - self.before[k]) / wall for k in after if not k.startswith("_")}
        out["machine"] = (after["_busy"] - self.before["_busy"]) / wall
        out["other"] = max(0.0, out["machine"] - sum(v for k, v in out.items() if k != "machine"))
        out["cores"] = (after["_total"] - self.before["_total"]) / wall
        return out


def warm_up(dep: Deployment, srv: Server) -> None:
    """A new node's first pushes, a trip and a few deletions, so that the first compaction step
    (which imports and opens what an idle compactor has not needed yet) is not in a measurement."""
    pre, post = trip_template()
    nonce = secrets.token_hex(4)
    items = [(TRIP_PATH, dep.keys[TEAM], pre + f"{nonce}{0:016x}".encode() + post)]
    items += [(EVENT_PATH, dep.keys[TEAM], deletion_body(f"{nonce}eeee{j:012x}")) for j in range(16)]
    res = push_all(srv.url, items, 4)
    if res.non_200():
        raise BenchError(f"{dep.label}: {res.non_200()} warm-up pushes to {srv.url} were not answered 200")


def settle(meter: CpuMeter, nodes: int, timeout: float) -> None:
    """Until the nodes' processes are quiet (a node just started still imports and opens its
    compactor for a few CPU-seconds after its first /health): half-second windows until the
    receivers and compactors use under 0.05 cores per node, or ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meter.start()
        time.sleep(0.5)
        cpu = meter.stop()
        if cpu["receivers"] + cpu["compactors"] < 0.05 * nodes:
            return
    print(f"  ({nodes} node(s) still busy without load after {timeout:.0f} s; going on)", flush=True)


# ---------------------------------------------------------------- load

def deletion_body(itin: str) -> bytes:
    return EVENT_PREFIX + itin.encode() + EVENT_SUFFIX


async def _python_load(urls: list[str], headers: dict[str, str], connections: int, duration: float,
                       nonce: str) -> dict:
    """Closed loop: ``connections`` clients, client i on ``urls[i % len(urls)]``, unique
    TRIP_DELETION bodies (itinId = nonce, client, counter: 24 hex digits)."""
    import aiohttp
    lat_ms: list[float] = []
    errors = 0
    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as s:
        start = time.monotonic()
        end = start + duration

        async def client(i: int) -> None:
            nonlocal errors
            url, n = urls[i % len(urls)] + EVENT_PATH, 0
            while time.monotonic() < end:
                n += 1
                t = time.perf_counter()
                try:
                    async with s.post(url, data=deletion_body(f"{nonce}{i:04x}{n:012x}"), headers=headers) as r:
                        await r.read()
                        if r.status != 200:
                            errors += 1
                            continue
                    lat_ms.append((time.perf_counter() - t) * 1000)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    errors += 1
        await asyncio.gather(*(client(i) for i in range(connections)))
        elapsed = time.monotonic() - start
    return {"requests": len(lat_ms), "errors": errors, "seconds": elapsed,
            "p50_ms": pct(lat_ms, 50), "p99_ms": pct(lat_ms, 99)}


def max_load(urls: list[str], headers: dict[str, str], connections: int, duration: float, wrk: str | None) -> dict:
    """Small pushes at max load spread over ``urls``: {"rps" (200s per second), "requests",
    "errors", "p50_ms", "p99_ms"}. wrk: one process per URL at once, the connections split."""
    nonce = secrets.token_hex(4)
    if not wrk:
        with loop_runner() as r:
            res = r.run(_python_load(urls, headers, connections, duration, nonce))
        res["rps"] = res["requests"] / res["seconds"]
        return res
    hdr = [f"{k}: {v}" for k, v in headers.items()]
    outs: list[dict | BaseException] = [None] * len(urls)  # type: ignore[list-item]

    def one(i: int) -> None:
        c = max(1, connections // len(urls) + (1 if i < connections % len(urls) else 0))
        try:
            outs[i] = run_wrk(wrk, urls[i] + EVENT_PATH, hdr, c, duration, "event", f"{nonce[:7]}{i:x}", None)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            outs[i] = e
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for o in outs:
        if isinstance(o, BaseException):
            raise o
    ok = sum(o["requests"] - o["errors"]["status"] for o in outs)
    secs = max(o["duration_us"] for o in outs) / 1e6
    weights = [o["requests"] for o in outs]
    return {"requests": ok, "errors": sum(sum(o["errors"].values()) for o in outs), "seconds": secs,
            "rps": ok / secs,
            # the per-process percentiles weighted by requests (wrk gives no merged histogram)
            "p50_ms": sum(o["latency_us"]["p50"] * w for o, w in zip(outs, weights)) / sum(weights) / 1000,
            "p99_ms": max(o["latency_us"]["p99"] for o in outs) / 1000}


# ---------------------------------------------------------------- phases

def deletions(dep: Deployment, k: int, inflight: int) -> dict:
    """K deletions with ``inflight`` in flight: latencies of their 200s."""
    srv = dep.nodes[0]
    nonce = secrets.token_hex(4)
    warm = [(EVENT_PATH, dep.keys[TEAM], deletion_body(f"{nonce}ffff{j:012x}")) for j in range(16)]
    push_all(srv.url, warm, inflight)
    res = push_all(srv.url, [(EVENT_PATH, dep.keys[TEAM], deletion_body(f"{nonce}0000{i:012x}")) for i in range(k)],
                   inflight)
    if res.non_200():
        raise BenchError(f"{dep.label}: {res.non_200()} of {k} deletions were not answered 200")
    lat = res.latencies_ms()
    out = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat), "per_s": k / res.seconds}
    print(f"  {dep.label:28} {k} deletions, {inflight} in flight: p50 {out['p50_ms']:.2f} ms, "
          f"p99 {out['p99_ms']:.2f} ms ({out['per_s']:.0f}/s)", flush=True)
    return out


def throughput(dep: Deployment, nodes: int, connections: int, duration: float, wrk: str | None,
               meter: CpuMeter | None = None) -> dict:
    urls = [n.url for n in dep.nodes[:nodes]]
    if meter:
        meter.start()
    res = max_load(urls, dep.headers(), connections, duration, wrk)
    if meter:
        res["cpu"] = meter.stop()
    if res["requests"] == 0:
        raise BenchError(f"{dep.label}: no small push was answered 200 in {duration:g} s")
    print(f"  {dep.label:28} {nodes} node(s), {connections} connections: {res['rps']:.0f} req/s, "
          f"p50 {res['p50_ms']:.2f} ms, p99 {res['p99_ms']:.2f} ms, errors {res['errors']}", flush=True)
    return res


def compaction(dep: Deployment, n: int, inflight: int, timeout: float) -> dict:
    """Push ``n`` 170 KB trips; seconds from the first send to the first query seeing all."""
    pre, post = trip_template()
    nonce = secrets.token_hex(4)
    itins = [f"{nonce}{i:016x}" for i in range(n)]
    srv = dep.nodes[0]
    res = push_all(srv.url, [(TRIP_PATH, dep.keys[TEAM], pre + i.encode() + post) for i in itins], inflight)
    if res.non_200():
        raise BenchError(f"{dep.label}: {res.non_200()} of {n} trips were not answered 200")
    deadline = time.monotonic() + timeout
    seen = 0
    while True:
        seen = dep.query("SELECT count(*) FROM trips WHERE itin_id IN (SELECT unnest(?))", [itins])["rows"][0][0]
        if seen >= n:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"{dep.label}: {seen} of {n} trips visible {timeout:.0f} s after their push")
        time.sleep(0.05)
    secs = time.monotonic() - res.started
    out = {"trips": n, "push_s": res.seconds, "visible_s": secs, "trips_per_s": n / secs, "itins": itins}
    print(f"  {dep.label:28} {n} trips of 170 KB: pushed in {res.seconds:.2f} s, all visible after {secs:.2f} s "
          f"({out['trips_per_s']:.1f} trips/s)", flush=True)
    return out


def query_latency(deps: list[Deployment], trip: dict[str, list[str]], runs: int) -> dict[str, dict[str, list[float]]]:
    """ms per query (fresh connection + query) per deployment, the deployments interleaved."""
    out: dict[str, dict[str, list[float]]] = {d.label: {q: [] for q in QUERIES} for d in deps}
    for r in range(runs + 1):  # round 0 warms up (reader start, first connection)
        for name, (sql, params) in QUERIES.items():
            for d in deps:
                p = [TEAM, trip[d.label][0]] if params == "trip" else None
                t = time.perf_counter()
                d.query(sql, p)
                if r:
                    out[d.label][name].append((time.perf_counter() - t) * 1000)
    return out


# ---------------------------------------------------------------- report

def print_nodes(runs: list[dict]) -> None:
    kinds = ["receivers", "compactors", "postgresql", "moto", "load generator", "other", "machine"]
    print(f"\n{'nodes':>5} {'req/s':>8} {'x 1 node':>8} {'p99 ms':>8}  " + " ".join(f"{k:>10}" for k in kinds)
          + "   (cores busy per process kind; idle: the same processes before the load)")
    one = runs[0]["rps"]
    for r in runs:
        print(f"{r['nodes']:>5} {r['rps']:>8.0f} {r['rps'] / one:>8.2f} {r['p99_ms']:>8.2f}  "
              + " ".join(f"{r['cpu'][k]:>10.2f}" for k in kinds))
        print(f"{'idle':>32}  " + " ".join(f"{r['idle_cpu'][k]:>10.2f}" for k in kinds))


def limit_note(r: dict) -> str:
    """One line on a node-count run: cores per kind, and what bounds it when the machine is full
    ("other" is work outside this benchmark's processes: other users of the machine, the kernel's
    softirq time of loopback traffic not charged to a process)."""
    cpu = r["cpu"]
    kinds = {k: v for k, v in cpu.items() if k not in ("machine", "cores", "other")}
    top = sorted(kinds.items(), key=lambda kv: -kv[1])
    share = ", ".join(f"{k} {v:.2f}" for k, v in top if v >= 0.01)
    verdict = ""
    if cpu["machine"] >= 0.9 * cpu["cores"]:
        verdict = (f"; the machine is saturated (CPU-bound): {top[0][0]} take the most of what pushlake's side "
                   f"gets, and {cpu['other']:.2f} cores went to other work")
    idle = r["idle_cpu"]
    return (f"{r['nodes']} node(s): {r['rps']:.0f} req/s; cores busy: {share}, other {cpu['other']:.2f} "
            f"(machine {cpu['machine']:.2f} of {cpu['cores']:.0f}){verdict}; idle before the load: receivers "
            f"{idle['receivers']:.2f}, compactors {idle['compactors']:.2f}, postgresql {idle['postgresql']:.2f}, "
            f"moto {idle['moto']:.2f}, other {idle['other']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="pushlake scale-out benchmark: PostgreSQL, S3 and nodes vs one machine")
    ap.add_argument("--quick", action="store_true", help="smoke mode: small counts, half-second loads")
    ap.add_argument("--deletions", type=int, help="deletions timed for the ack latency (default 2000; 200 quick)")
    ap.add_argument("--inflight", type=int, default=4, help="deletions in flight for the ack latency (default 4)")
    ap.add_argument("--duration", type=float, help="seconds per max-load run (default 10; 0.5 quick)")
    ap.add_argument("--connections", type=int, help="connections at max load, over all nodes (default 64; 8 quick)")
    ap.add_argument("--trips", type=int, help="170 KB trips for the compaction throughput (default 1000; 10 quick)")
    ap.add_argument("--runs", type=int, help="timed rounds per query (default 15; 3 quick)")
    ap.add_argument("--nodes", type=int, default=3, help="largest number of nodes (default 3)")
    ap.add_argument("--loader", choices=("auto", "wrk", "python"), default="auto",
                    help="load generator at max load: wrk, python (aiohttp) or auto (wrk if on PATH); default auto")
    ap.add_argument("--workdir", type=Path, help="where the data directories go (default: a temporary one, removed)")
    common.add_results_arg(ap)
    a = ap.parse_args(argv)
    a.deletions = a.deletions or (200 if a.quick else 2000)
    a.duration = a.duration or (0.5 if a.quick else 10.0)
    a.connections = a.connections or (8 if a.quick else 64)
    a.trips = a.trips or (10 if a.quick else 1000)
    a.runs = a.runs or (3 if a.quick else 15)
    if min(a.deletions, a.inflight, a.connections, a.trips, a.runs, a.nodes) < 1 or a.duration <= 0:
        ap.error("sizes must be positive")
    if a.loader == "wrk" or (a.loader == "auto" and shutil.which("wrk")):
        wrk: str | None = ensure_wrk()
        loader = wrk_version(wrk)
    else:
        wrk, loader = None, f"python aiohttp {version('aiohttp')} client (no wrk: bounded by the client itself)"
    tag = "" if wrk else " (python client)"
    idle_s = 30 if a.quick else 300
    t_start = time.monotonic()
    print(f"nproc {os.cpu_count()} | load at max: {loader}; other work on this machine makes the numbers noisy",
          flush=True)

    wd = Workdir(a.workdir, "pushlake-bench-scaleout-")
    deps: list[Deployment] = []
    try:
        with service("postgres") as (pg, pg_pid), service("s3") as (s3, moto_pid):
            s3.bucket(BUCKET)
            aws = {**s3.env, "AWS_REGION": s3.region, "PUSHLAKE_ENTERPRISE_KEY": ENTERPRISE_KEY}
            clear = {"PUSHLAKE_CATALOG": "", "PUSHLAKE_LAKE": ""}  # "": the embedded default
            os.environ.pop("PUSHLAKE_NODE", None)  # each node gets --node
            print(f"PostgreSQL on {pg.host}:{pg.port}, moto_server on {s3.endpoint} "
                  f"({time.monotonic() - t_start:.1f} s)", flush=True)
            A = Deployment("A: SQLite + local disk", wd.path / "a", {**clear}, remote_lake=False)
            B = Deployment("B: PostgreSQL + local disk", wd.path / "b",
                           {**clear, "PUSHLAKE_CATALOG": pg.fresh_database("scaleout_b")}, remote_lake=False)
            C = Deployment("C: PostgreSQL + S3", wd.path / "c",
                           {**clear, **aws, "PUSHLAKE_CATALOG": pg.fresh_database("scaleout_c"),
                            "PUSHLAKE_LAKE": f"s3://{BUCKET}/lake"}, remote_lake=True)
            deps += [A, B, C]
            A.add_node(None)
            B.add_node("b1")
            warm_up(C, C.add_node("n1"))

            print("\n(2) compaction throughput: 170 KB trips pushed -> all visible", flush=True)
            comp = {}
            for d in (B, C):
                d.wait_idle(idle_s)
                comp[d.label] = compaction(d, a.trips, 8 if a.quick else 16, 60 if a.quick else 600)

            print(f"\n(3) query latency: fresh connection + query, {a.runs} interleaved rounds", flush=True)
            for d in (B, C):
                d.wait_idle(idle_s)
            ql = query_latency([B, C], {d: v["itins"] for d, v in comp.items()}, a.runs)
            for d in (B, C):
                allq = [x for v in ql[d.label].values() for x in v]
                print(f"  {d.label:28} p50 {pct(allq, 50):.1f} ms, p99 {pct(allq, 99):.1f} ms; "
                      + ", ".join(f"{q} {median(v):.1f}" for q, v in ql[d.label].items()), flush=True)

            print("\n(1) deletions: ack latency at light load, then small pushes at max load", flush=True)
            dels, thr = {}, {}
            for d in (A, B):
                d.wait_idle(idle_s)
                dels[d.label] = deletions(d, a.deletions, a.inflight)
            for d in (A, B):
                d.wait_idle(idle_s)
                thr[d.label] = throughput(d, 1, a.connections, a.duration, wrk)
            A.stop()
            B.stop()

            print(f"\n(4) nodes on PostgreSQL + S3: small pushes spread over the nodes, {a.connections} connections",
                  flush=True)
            runs = []
            for k in range(1, a.nodes + 1):
                while len(C.nodes) < k:
                    warm_up(C, C.add_node(f"n{len(C.nodes) + 1}"))
                C.wait_idle(idle_s)
                meter = CpuMeter(C.nodes[:k], pg_pid, moto_pid)
                settle(meter, k, 20 if a.quick else 60)
                meter.start()  # the same processes without load: what idle nodes cost
                time.sleep(min(a.duration, 2.0))
                idle = meter.stop()
                r = throughput(C, k, a.connections, a.duration, wrk, meter)
                r["nodes"], r["idle_cpu"] = k, idle
                runs.append(r)
            print_nodes(runs)
            C.stop()

        # ---- rows: pushlake_value = the scaled-out variant, peer = the one it is compared with
        A_, B_, C_ = (d.label for d in deps)
        rows = [
            common.row("deletion ack p50: PostgreSQL catalog", "ms", "embedded SQLite catalog",
                       dels[A_]["p50_ms"], dels[B_]["p50_ms"], higher_is_better=False),
            common.row("deletion ack p99: PostgreSQL catalog", "ms", "embedded SQLite catalog",
                       dels[A_]["p99_ms"], dels[B_]["p99_ms"], higher_is_better=False),
            common.row(f"small pushes req/s: PostgreSQL catalog{tag}", "req/s", "embedded SQLite catalog",
                       thr[A_]["rps"], thr[B_]["rps"]),
            common.row(f"small pushes p99 at max load: PostgreSQL catalog{tag}", "ms", "embedded SQLite catalog",
                       thr[A_]["p99_ms"], thr[B_]["p99_ms"], higher_is_better=False),
            common.row("compaction trips/s (push -> visible): S3 lake", "trips/s", "lake on local disk",
                       comp[B_]["trips_per_s"], comp[C_]["trips_per_s"]),
        ]
        bq = [x for v in ql[B_].values() for x in v]
        cq = [x for v in ql[C_].values() for x in v]
        rows += [common.row("query p50 (connect + query): S3 lake", "ms", "lake on local disk",
                            pct(bq, 50), pct(cq, 50), higher_is_better=False),
                 common.row("query p99 (connect + query): S3 lake", "ms", "lake on local disk",
                            pct(bq, 99), pct(cq, 99), higher_is_better=False)]
        rows += [common.row(f"query {q}: S3 lake", "ms", "lake on local disk", median(ql[B_][q]), median(ql[C_][q]),
                            higher_is_better=False) for q in QUERIES]
        rows += [common.row(f"small pushes req/s, {r['nodes']} nodes (PostgreSQL + S3){tag}", "req/s",
                            "1 node (same run)", runs[0]["rps"], r["rps"]) for r in runs[1:]]
        notes = [f"load generator at max load: {loader}; {a.connections} connections over all nodes, "
                 f"{a.duration:g} s per run",
                 f"deletion ack latency: {a.deletions} TRIP_DELETION pushes (itinIds in no lake), "
                 f"{a.inflight} in flight",
                 f"compaction: {a.trips} trips of the 170 KB fixture, trips/s from the first push sent to the first "
                 "query (fresh connection) that sees all of them",
                 f"queries: {', '.join(QUERIES)}; fresh queries.connect each, {a.runs} interleaved rounds",
                 *(limit_note(r) for r in runs)]
        print()
        common.print_rows(rows)
        for n in notes[-len(runs):]:
            print(n)
        for c in comp.values():
            c.pop("itins")
        common.write_result(NAME, rows, args=vars(a) | {"loader": loader}, notes=notes, results_dir=a.results_dir,
                            extra={"deletions": dels, "throughput": thr, "compaction": comp, "queries_ms": ql,
                                   "nodes": runs, "seconds": round(time.monotonic() - t_start, 1)})
        print(f"({time.monotonic() - t_start:.1f} s)")
        return 0
    finally:
        for d in deps:
            d.stop()
        wd.cleanup()


if __name__ == "__main__":
    run_main(main)
