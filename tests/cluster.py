"""A pushlake cluster on one machine, for the multi-node tests: N ``pushlake serve --node nK``
processes, each with its own data directory (its log), meeting in one PostgreSQL catalog and
one S3 bucket (moto_server), plus readers on an EMPTY data directory.

    c = Cluster(tmp_path, postgres, s3, nodes=3)     # fresh database, fresh bucket, nodes up
    c.push("n1", "trip", trip(itin_id(1)))           # -> 200
    c.sql("SELECT count(*) AS n FROM trips")         # `pushlake sql --json` on an empty --data
    c.kill("n2"); c.restart("n2"); c.stop()

Both services are reached through TCP proxies (``c.catalog_proxy``, ``c.lake_proxy``) that a
test can take down and bring back: a real outage as the nodes see it (connections cut, new ones
refused), while the servers behind keep their state (moto keeps its objects in memory only, so
stopping it would lose the bucket).

Everything the harness starts is stopped by ``stop()`` (servers in their own process group,
SIGKILL after a grace period; PR_SET_PDEATHSIG if the test process dies).
"""
from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import orjson

from tests.helpers import PUSHLAKE, ROOT, free_port, itin_id, trip

TEAM = "acme"
START_TIMEOUT = 60.0  # seconds for a node to answer /health (2 busy cores)
STOP_TIMEOUT = 15.0


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition",
             every: float = 0.2):
    """Poll ``condition`` until it returns something truthy (returned), or fail after ``timeout``
    with ``what`` and the last value or error: waits in tests are for a state, never a duration."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = condition()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - the state is not there yet (e.g. a reader's error)
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
        time.sleep(every)


def _die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first), from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# --- an outage you can switch ----------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy to ``host:port`` that can be taken down: ``down()`` cuts every open
    connection and answers new ones by closing them at once; ``up()`` forwards again.
    ``pause()`` holds every byte in both directions (connections stay open: a stalled network, or
    a peer that stopped answering) until ``resume()``. ``watch``, if set, is called with each
    chunk a client sends, before it is forwarded (to pause another proxy at an exact request)."""

    def __init__(self, host: str, port: int):
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0), reuse_port=False)
        self.port = self.listener.getsockname()[1]
        self.host = "127.0.0.1"
        self._up = True
        self._paused = threading.Event()
        self.watch: Callable[[bytes], None] | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{self.port}", daemon=True).start()

    @property
    def is_up(self) -> bool:
        return self._up

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up:
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(a, selectors.EVENT_READ, b)
        sel.register(b, selectors.EVENT_READ, a)
        try:
            while self._up and not self._closed:
                if self._paused.is_set():
                    time.sleep(0.02)
                    continue
                for key, _ in sel.select(timeout=0.5):
                    data = key.fileobj.recv(1 << 16)
                    if not data:
                        return
                    if key.fileobj is a and self.watch is not None:
                        self.watch(data)
                    if self._paused.is_set():  # the watch paused this very proxy: hold the chunk too
                        while self._paused.is_set() and self._up and not self._closed:
                            time.sleep(0.02)
                    key.data.sendall(data)
        except OSError:
            pass
        finally:
            sel.close()
            with self._lock:
                self._conns.discard(a)
                self._conns.discard(b)
            _close(a)
            _close(b)

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def down(self) -> None:
        self._up = False
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            _close(s)

    def up(self) -> None:
        self._up = True

    def close(self) -> None:
        self._closed = True
        self.resume()
        self.down()
        _close(self.listener)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


# --- nodes -------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict
    body: object


class Node:
    """One ``pushlake serve --node NAME`` with its own data directory and port."""

    def __init__(self, name: str, data: Path, args: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.data, self.args, self.env = name, data, args, env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*PUSHLAKE, "serve", "--node", self.name, "--data", str(self.data), "--port", str(self.port),
             *self.args],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env,
            start_new_session=True, preexec_fn=_die_with_parent)
        log.close()

    def wait_up(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).read()
                return
            except urllib.error.HTTPError:
                return  # up, and degraded (its compactor may be waiting for the catalog)
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node {self.name} did not start "
                                       f"(exit {self.proc.poll()}): {self.output()[-3000:]}")
                time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send(self, sig: int, group: bool = True) -> None:
        """``sig`` to the serve process, or to its whole process group (receiver, compactor,
        projection workers): SIGSTOP/SIGCONT freeze and thaw the node as a whole."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            os.kill(self.proc.pid, sig)

    def compactor_pid(self) -> int:
        """The compactor child of serve (a multiprocessing 'spawn' child that is not its
        resource tracker)."""
        for pid in descendants(self.proc.pid):
            cl = cmdline(pid)
            if "spawn_main" in cl and "resource_tracker" not in cl and "forkserver" not in cl:
                return pid
        raise RuntimeError(f"no compactor process under node {self.name} ({self.proc.pid})")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGCONT)  # a frozen node cannot act on SIGTERM
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # whatever is left of its group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass


# --- the cluster ---------------------------------------------------------------------------------


def _slug(text: str, n: int) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[-n:].strip("-") or "x"


class Cluster:
    """``nodes`` pushlake nodes n1…nN on one PostgreSQL catalog and one S3 bucket (fresh ones
    named after ``tmp_path``), a team ``acme`` (``self.key``) and readers on an empty data dir.
    ``serve_args`` are added to every node's ``pushlake serve`` (e.g. ``["--retention", "0"]``)."""

    def __init__(self, tmp_path: Path, postgres, s3, nodes: int = 3, serve_args: tuple[str, ...] = (),
                 team: str = TEAM):
        self.root = Path(tmp_path)
        slug = _slug(self.root.name, 40)
        self.database = "cl_" + slug.replace("-", "_")
        self.bucket = s3.bucket("cl-" + slug)
        self.postgres, self.s3 = postgres, s3
        postgres.fresh_database(self.database)
        self.catalog_proxy = TcpProxy(postgres.host, postgres.port)
        self.lake_proxy = TcpProxy(s3.host, s3.port)
        self.catalog = f"postgresql://{postgres.user}@127.0.0.1:{self.catalog_proxy.port}/{self.database}"
        self.lake = f"s3://{self.bucket}/lake"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AWS_", "PUSHLAKE_")) or k == "PUSHLAKE_DEBUG"}
        self.env.update(s3.env)
        self.env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.lake_proxy.port}", AWS_REGION=s3.region)
        # what every command of this cluster is given (the reader's `sql` gets the same as options)
        self.cli_env = {**self.env, "PUSHLAKE_CATALOG": self.catalog, "PUSHLAKE_LAKE": self.lake}
        self.reader_dir = self.root / "reader"  # the fourth place: nothing in it, ever
        self.reader_dir.mkdir(parents=True, exist_ok=True)
        self.serve_args = ["--catalog", self.catalog, "--lake", self.lake, "--min-free", "0",
                           "--iceberg-interval", "0", *serve_args]
        self.nodes: dict[str, Node] = {}
        self._reader: subprocess.Popen | None = None
        self._ids = 0
        try:
            self.team = team
            self.key = self.create_team(team)
            for i in range(1, nodes + 1):
                self.add_node(f"n{i}", wait=False)
            for n in self.nodes.values():
                n.wait_up()
        except BaseException:
            self.stop()
            raise

    # --- nodes ---

    def add_node(self, name: str, wait: bool = True, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> Node:
        """Start node ``name`` on its own data directory; ``extra`` serve options, ``env``
        variables for its processes only."""
        data = self.root / name / "data"
        data.mkdir(parents=True, exist_ok=True)
        node = Node(name, data, [*self.serve_args, *extra], {**self.env, **(env or {})}, self.root)
        self.nodes[name] = node
        node.start()
        if wait:
            node.wait_up()
        return node

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        """``sig`` to the node's serve process; for SIGKILL, wait until it is gone (its children
        die with it: PR_SET_PDEATHSIG)."""
        n = self.nodes[node]
        n.send(sig, group=False)
        if sig == signal.SIGKILL:
            n.proc.wait(STOP_TIMEOUT)
            deadline = time.monotonic() + STOP_TIMEOUT
            while time.monotonic() < deadline:  # the children follow the parent
                try:
                    os.killpg(n.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)

    def restart(self, node: str) -> Node:
        n = self.nodes[node]
        n.stop()
        n.start()  # the same port and data directory: clients keep their URL
        n.wait_up()
        return n

    def stop(self) -> None:
        if self._reader is not None and self._reader.poll() is None:
            self._reader.kill()
            self._reader.wait(5)
        for n in self.nodes.values():
            n.stop()
        self.catalog_proxy.close()
        self.lake_proxy.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.output()[-4000:]}" for n in self.nodes.values())

    # --- pushing ---

    def new_ids(self, n: int) -> list[str]:
        """``n`` itinIds no other caller of this cluster got."""
        self._ids += n
        return [itin_id(i) for i in range(self._ids - n, self._ids)]

    def post(self, node: str, kind: str, body, key: str | None = None, timeout: float = 30) -> Reply:
        req = urllib.request.Request(
            f"{self.nodes[node].url}/push/{kind}", data=body if isinstance(body, bytes) else orjson.dumps(body),
            headers={"Authorization": f"Bearer {key or self.key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Reply(r.status, dict(r.headers), _json(r.read()))
        except urllib.error.HTTPError as e:
            return Reply(e.code, dict(e.headers), _json(e.read()))

    def push(self, node: str, kind: str, body, key: str | None = None) -> int:
        """POST /push/<kind> to ``node`` (kind: trip, trip/event, crash, diagnosis): the status."""
        return self.post(node, kind, body, key).status

    async def load(self, nodes: list[str], seconds: float, clients: int = 12,
                   during: Callable[[float], None] | None = None) -> list[tuple[str, str]]:
        """Unique trips from ``clients`` concurrent clients spread over ``nodes`` for ``seconds``;
        ``during(elapsed)`` is called from the event loop's executor every 0.1 s (to kill a node
        under load). Returns (node, itinId) of every push answered 200."""
        import aiohttp
        acked: list[tuple[str, str]] = []
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        stop = asyncio.Event()

        async def client(session, i: int) -> None:
            node = nodes[i % len(nodes)]
            while not stop.is_set():
                [itin] = self.new_ids(1)
                try:
                    async with session.post(f"{self.nodes[node].url}/push/trip", data=orjson.dumps(trip(itin)),
                                            headers=headers) as r:
                        if r.status == 200:
                            acked.append((node, itin))
                        else:
                            await asyncio.sleep(0.02)
                except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
                    await asyncio.sleep(0.02)

        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            tasks = [asyncio.create_task(client(s, i)) for i in range(clients)]
            t0 = time.monotonic()
            while (elapsed := time.monotonic() - t0) < seconds:
                if during is not None:
                    await loop.run_in_executor(None, during, elapsed)
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)
        return acked

    # --- commands and readers ---

    def create_team(self, team: str) -> str:
        out = self.cli("teams", "create", team, "--json", data=self.root / "admin-scratch")
        return json.loads(out.stdout)["pushApiKey"]

    def cli(self, *args: str, data: Path | None = None, check: bool = True, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """A pushlake command with the cluster's catalog and lake in its environment."""
        cmd = [*PUSHLAKE, *args, *(["--data", str(data)] if data is not None else [])]
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**self.cli_env, **(env or {})})
        if check and p.returncode != 0:
            raise AssertionError(f"pushlake {' '.join(args)} failed ({p.returncode}): {p.stderr[-3000:]}")
        return p

    def sql(self, query: str) -> list[dict]:
        """``pushlake sql --json --catalog … --lake … --data <empty dir>`` in a new process: the
        rows as dicts. The options are given on the command line (the environment has only AWS_*)."""
        p = subprocess.run(
            [*PUSHLAKE, "sql", "--json", "--catalog", self.catalog, "--lake", self.lake,
             "--data", str(self.reader_dir), query],
            cwd=ROOT, capture_output=True, text=True, timeout=120, env=self.env)
        if p.returncode != 0:
            raise AssertionError(f"pushlake sql failed ({p.returncode}): {p.stderr[-3000:]}")
        assert not any(self.reader_dir.iterdir()), "the reader wrote into its empty data directory"
        return json.loads(p.stdout or "[]")

    def query(self, query: str, params: list | None = None) -> list[tuple]:
        """The same reader kept running (queries.connect on the empty data dir, a new connection
        per statement): for polling, without a process start per poll."""
        if self._reader is None or self._reader.poll() is not None:
            self._reader = subprocess.Popen(
                [PUSHLAKE[0], "-c", _READER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=open(self.root / "reader.log", "ab"), env={**self.cli_env, "READER_DIR": str(self.reader_dir)},
                start_new_session=True, preexec_fn=_die_with_parent)
        self._reader.stdin.write(orjson.dumps({"sql": query, "params": params or []}) + b"\n")
        self._reader.stdin.flush()
        line = self._reader.stdout.readline()
        if not line:
            raise AssertionError(f"the reader process died: {(self.root / 'reader.log').read_text()[-2000:]}")
        out = orjson.loads(line)
        if "error" in out:
            raise RuntimeError(out["error"])
        return [tuple(r) for r in out["rows"]]

    def raw_counts(self, table: str = "trips") -> dict[str, int]:
        """Rows per itin_id in every live file of ``table`` as the catalog lists them, without the
        tombstone anti-join of the views: what a deletion physically left (or not) in the lake."""
        self.query("SELECT 1")  # the reader is up
        self._reader.stdin.write(orjson.dumps({"raw": table}) + b"\n")
        self._reader.stdin.flush()
        out = orjson.loads(self._reader.stdout.readline())
        if "error" in out:
            raise RuntimeError(out["error"])
        return {k: n for k, n in out["rows"]}

    def count(self, table: str, where: str = "true", params: list | None = None) -> int:
        return self.query(f"SELECT count(*) FROM {table} WHERE {where}", params)[0][0]

    def visible(self, itins: list[str]) -> set[str]:
        """Which of ``itins`` the trips view shows now."""
        if not itins:
            return set()
        rows = self.query("SELECT DISTINCT itin_id FROM trips WHERE itin_id IN (SELECT unnest(?))", [list(itins)])
        return {r[0] for r in rows}

    def wait_visible(self, itins: list[str], timeout: float = 90.0) -> None:
        want = set(itins)
        wait_for(lambda: self.visible(list(want)) == want, timeout,
                 f"{len(want)} trips to be compacted and visible")


def _json(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode(errors="replace")


# the long-running reader: one JSON request per line in, one JSON answer per line out
_READER = r"""
import os, sys, orjson, queries
d = os.environ["READER_DIR"]
for line in sys.stdin:
    req = orjson.loads(line)
    try:
        con = queries.connect(d)
        try:
            if "raw" in req:  # every live file of a table, without the views' tombstone anti-join
                t = req["raw"]
                have = {r[0] for r in con.execute("SELECT name FROM duckdb_variables()").fetchall()}
                # files with position deletes are each in a variable of their own (pl_<t>_p<i>)
                parts = [f"SELECT itin_id FROM read_parquet(getvariable('{v}'))"
                         for v in sorted(have) if v in (f"pl_{t}", f"pl_{t}_dirty")
                         or (v.startswith(f"pl_{t}_p") and v[len(f"pl_{t}_p"):].isdigit())]
                sql = " UNION ALL ".join(parts) or "SELECT NULL AS itin_id WHERE false"
                rows = con.con.execute(f"SELECT itin_id, count(*) FROM ({sql}) GROUP BY 1").fetchall()
            else:
                rows = con.execute(req["sql"], req["params"] or None).fetchall()
        finally:
            con.close()
        out = {"rows": rows}
    except Exception as e:
        out = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.buffer.write(orjson.dumps(out, default=str) + b"\n")
    sys.stdout.flush()
"""
