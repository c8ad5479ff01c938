"""Query worker processes: every HTTP query runs in a process of its own, forked for it, that
cannot write a file, cannot use more than its memory, and dies at its deadline.

A *zygote* (``python -m queries.worker FD``, started lazily, once per server process) has
DuckDB, Arrow and the query code imported and forks one child per query; forking costs a few
milliseconds. The child, before it runs anything:

- asks to be killed when the zygote dies (which dies with the server), so nothing outlives it;
- runs at nice 10 (inherited from the zygote), so the receiver's pushes come first on the CPU;
- arms a real-time timer (``setitimer``) whose default action, SIGALRM, terminates the process at
  the deadline, whatever DuckDB is doing (a planner that cannot be interrupted included);
- chdirs to the data directory and opens the catalog read-only (the SQLite file, or its
  PostgreSQL connection), then applies Landlock (``queries.sandbox.restrict``): no file can be
  created, written, truncated, renamed or removed from then on, whatever the SQL, and no TCP
  socket bound or connected, but to the S3 endpoint's port when the lake is on S3;
- caps its data segment (RLIMIT_DATA) at what it uses plus the DuckDB memory limit plus headroom;
- opens a confined connection (relative paths, no temp directory: nothing spills to disk; on S3
  the read-only S3 filesystem and its I/O thread are created now, under Landlock).

It then runs the statement, encodes the result (JSON, CSV, Arrow IPC or Parquet) within the
row and byte limits, disarms the timer, and streams it to the server over a socket as frames.
The server never holds a DuckDB result: it only forwards bytes to the client.

Frames: one type byte, a u32 length, the payload. ``H`` header (JSON: mime, rows, truncated,
length), ``D`` body bytes, ``E`` end, ``X`` error (JSON: status, error, message).
"""
from __future__ import annotations

import io
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import orjson

FRAME = struct.Struct(">cI")
CHUNK = 256 << 10
BATCH_ROWS = 1024
JSON = "application/json"
CSV = "text/csv"
ARROW = "application/vnd.apache.arrow.stream"
PARQUET = "application/vnd.apache.parquet"
HEADROOM = 512 << 20  # beyond DuckDB's memory limit: the interpreter, Arrow batches, the encoded result


# ---------------------------------------------------------------------------------------------
# the server's side

class Workers:
    """The zygote of this process, started on first use and again if it died."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._ctl: socket.socket | None = None

    def _discard(self) -> None:
        if self._ctl is not None:
            self._ctl.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._proc = self._ctl = None

    def _start(self) -> None:
        self._discard()
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent.settimeout(5)  # the zygote reads at once; a stuck one is replaced
        root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
               # Arrow's jemalloc would start a background thread: the zygote forks, so it stays single-threaded
               "JE_ARROW_MALLOC_CONF": "background_thread:false"}
        self._proc = subprocess.Popen([sys.executable, "-m", "queries.worker", str(child.fileno())],
                                      pass_fds=[child.fileno()], env=env, cwd="/", stdin=subprocess.DEVNULL)
        child.close()
        self._ctl = parent

    def submit(self) -> socket.socket:
        """Fork a child; returns the socket to send it its job on (``job_frame``), and on which
        its frames arrive."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            msg = b"q"
            with self._lock:
                for attempt in (0, 1):
                    if self._proc is None or self._proc.poll() is not None:
                        self._start()
                    try:
                        socket.send_fds(self._ctl, [msg], [theirs.fileno()])
                        break
                    except OSError:
                        self._discard()  # gone or stuck: start another one and retry once
                        if attempt:
                            raise
        finally:
            theirs.close()
        return mine

    def pids(self) -> list[int]:
        """The zygote and its children (for measurements)."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        out = [self._proc.pid]
        try:
            with open(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return out

    def close(self) -> None:
        with self._lock:
            self._discard()


WORKERS = Workers()


def job_frame(job: dict) -> bytes:
    payload = orjson.dumps(job)
    return FRAME.pack(b"J", len(payload)) + payload


def _recv_job(sock: socket.socket) -> dict:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise EOFError("the server went away before sending the job")
            buf += chunk
        return buf
    kind, n = FRAME.unpack(exactly(FRAME.size))
    return orjson.loads(exactly(n))


async def read_frame(reader) -> tuple[bytes, bytes]:
    head = await reader.readexactly(FRAME.size)
    kind, n = FRAME.unpack(head)
    return kind, (await reader.readexactly(n) if n else b"")


# ---------------------------------------------------------------------------------------------
# the zygote

def zygote(fd: int) -> None:
    from pushlake.procs import die_with_parent
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the server, which stops us
    try:  # queries (our children inherit it) yield the CPU to the receiver's pushes and the compactor
        os.nice(10)
    except OSError:
        pass
    ctl = socket.socket(fileno=fd)
    try:
        parent = os.pidfd_open(os.getppid())
    except (AttributeError, OSError):
        parent = None
    # everything a query needs, imported once so that each fork finds it ready
    import duckdb  # noqa: F401
    import pyarrow.csv  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import queries.connection  # noqa: F401
    import queries.sandbox
    from pushlake.location import lake_url
    if lake_url():  # the S3 filesystem's modules (~0.2 s to import), imported once; not its thread
        import s3fs  # noqa: F401
    if queries.sandbox.abi_version() < 1:
        queries.sandbox.log.warning("Landlock is not available on this kernel: query processes are not "
                                    "write-proof at the kernel level (the statement guard and DuckDB's "
                                    "sandbox remain)")
    global SPILL_ROOT
    import tempfile
    # the export processes' spill directories live in one owner-only directory of the zygote's,
    # not under a name anyone could create first in the shared temp directory
    SPILL_ROOT = tempfile.mkdtemp(prefix="pushlake-spill-")
    children: set[int] = set()
    watch = [ctl] + ([parent] if parent is not None else [])
    try:
        _serve(ctl, parent, watch, children)
    finally:
        shutil.rmtree(SPILL_ROOT, ignore_errors=True)


def _serve(ctl: socket.socket, parent, watch: list, children: set[int]) -> None:
    while True:
        ready, _, _ = select.select(watch, [], [], 0.5 if children else None)
        if parent is not None and parent in ready:
            return
        if ctl in ready:
            try:
                msg, fds, _, _ = socket.recv_fds(ctl, 1 << 20, 1)
            except OSError:
                return
            if not msg:
                return  # the server is gone
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    ctl.close()
                    if parent is not None:
                        os.close(parent)
                    _child(fds[0])
                except BaseException:  # noqa: BLE001 - a child never returns into the loop
                    code = 1
                finally:
                    os._exit(code)
            for f in fds:
                os.close(f)
            children.add(pid)
        while children:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            shutil.rmtree(spill_dir(pid), ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# a child: one query

SPILL_ROOT = ""  # set by the zygote (mkdtemp, 0700), inherited by its children


def spill_dir(pid: int) -> str:
    """The private spill directory of export process ``pid`` (the zygote removes it when it reaps)."""
    return os.path.join(SPILL_ROOT, f"export-{os.getpid() if pid == 0 else pid}")


def _child(fd: int) -> None:
    zygote_pid = os.getppid()
    from pushlake.procs import die_with_parent
    die_with_parent()
    if os.getppid() != zygote_pid:
        return
    out = socket.socket(fileno=fd)
    out.setblocking(True)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, 10.0)  # until the job arrives
    job = _recv_job(out)
    signal.setitimer(signal.ITIMER_REAL, 0)
    if job.get("kind") == "export":
        _export(job, out)
        return
    if job.get("timeout"):
        signal.setitimer(signal.ITIMER_REAL, float(job["timeout"]))
    try:
        frames = run_job(job)
    except BaseException as e:  # noqa: BLE001 - reported to the server
        frames = [(b"X", orjson.dumps(_describe(e)))]
    signal.setitimer(signal.ITIMER_REAL, 0)  # the result is computed: sending is paced by the client
    try:
        for kind, payload in frames:
            if kind == b"D":
                for i in range(0, len(payload), CHUNK):
                    out.sendall(FRAME.pack(kind, len(payload[i:i + CHUNK])) + payload[i:i + CHUNK])
            else:
                out.sendall(FRAME.pack(kind, len(payload)) + payload)
    except OSError:
        pass  # the server gave up on this query


def _export(job: dict, out: socket.socket) -> None:
    """Stream one table (queries.export.stream): H (total rows), D chunks as they are encoded,
    then E, or X if it fails. DuckDB may spill the sort by date to this process's own directory,
    the only place Landlock leaves writable."""
    from queries.export import ExportError, stream
    con = None
    started = False
    try:
        con = _open(job, spill=spill_dir(0))
        total, chunks = stream(con, job["table"], job["fmt"], job.get("from"), job.get("to"))
        out.sendall(_frame(b"H", orjson.dumps({"rows": total})))
        started = True
        for chunk in chunks:
            if chunk:
                for i in range(0, len(chunk), CHUNK):
                    out.sendall(_frame(b"D", chunk[i:i + CHUNK]))
        out.sendall(_frame(b"E", b""))
    except OSError as e:
        if isinstance(e, (BrokenPipeError, ConnectionError)):
            return  # the client went away: the server closed our socket
        _report(out, e, started)
    except BaseException as e:  # noqa: BLE001 - reported to the server
        if isinstance(e, ExportError):
            d = {"status": 404 if str(e).startswith("unknown table") else 400,
                 "error": "not_found" if str(e).startswith("unknown table") else "invalid_request", "message": str(e)}
            _send_quietly(out, _frame(b"X", orjson.dumps(d)))
        else:
            _report(out, e, started)
    finally:
        if con is not None:
            con.close()


def _report(out: socket.socket, e: BaseException, started: bool) -> None:
    _send_quietly(out, _frame(b"X", orjson.dumps(_describe(e))))


def _send_quietly(out: socket.socket, data: bytes) -> None:
    try:
        out.sendall(data)
    except OSError:
        pass


def _frame(kind: bytes, payload: bytes) -> bytes:
    return FRAME.pack(kind, len(payload)) + payload


def _describe(e: BaseException) -> dict:
    import duckdb
    first = (str(e).splitlines() or [type(e).__name__])[0]
    if isinstance(e, PermissionError):
        return {"status": 403, "error": "forbidden", "message": str(e)}
    if isinstance(e, duckdb.PermissionException):
        return {"status": 403, "error": "forbidden", "message": first}
    if isinstance(e, (duckdb.OutOfMemoryException, MemoryError)):
        return {"status": 400, "error": "out_of_memory", "message": f"the query needs more than its memory limit ({first})"}
    if isinstance(e, duckdb.Error):
        return {"status": 400, "error": "invalid_query", "message": first}
    return {"status": 500, "error": "query_failed", "message": f"{type(e).__name__}: {first}"}


def _open(job: dict, spill: str | None = None):
    """This process, confined (Landlock, rlimit), and its connection. ``spill``: a directory to
    create, the only one left writable, for DuckDB to spill to."""
    from queries import sandbox
    from queries.connection import LakeConnection, open_catalog
    data = Path(job["data_dir"]).resolve()
    os.chdir(data)
    cat = open_catalog(data)  # while opening files is still allowed
    if spill is not None:
        os.mkdir(spill, 0o700)
    try:  # if the machine runs out of memory all the same, the kernel kills a query, not the server
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    sandbox.restrict(writable=(spill,) if spill is not None else (), warn=False)
    if job.get("memory_bytes"):
        sandbox.limit_memory(int(job["memory_bytes"]) + HEADROOM)
    return LakeConnection(data, catalog=cat, relative=True, spill=spill if spill is not None else False,
                          settings={"memory_limit": job["memory_limit"], "threads": 1}, **job["scope"])


def run_job(job: dict) -> list[tuple[bytes, bytes]]:
    con = _open(job)
    try:
        body, rows, truncated = encode(con, job["sql"], job["mime"], int(job["max_rows"]), int(job["max_bytes"]))
    finally:
        con.close()
    head = {"mime": job["mime"], "rows": rows, "truncated": truncated, "length": len(body)}
    return [(b"H", orjson.dumps(head)), (b"D", body), (b"E", b"")]


def _fit(n: int, size, room: int) -> int:
    """The largest k <= n with size(k) <= room (size grows with k)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(mid) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo


def encode(con, sql: str, mime: str, max_rows: int, max_bytes: int) -> tuple[bytes, int, bool]:
    """Run ``sql`` and encode its result within ``max_rows`` rows and about ``max_bytes`` bytes
    (for Parquet the rows' uncompressed Arrow size counts). Returns (body, rows, truncated)."""
    import duckdb
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    rel = con.sql(sql)
    if rel is None:
        raise duckdb.InvalidInputException("the statement returns no rows")
    reader = rel.to_arrow_reader(BATCH_ROWS)
    schema = reader.schema
    sink = io.BytesIO()
    rows, truncated = 0, False
    if mime == JSON:
        cols = orjson.dumps([{"name": f.name, "type": str(f.type)} for f in schema])
        sink.write(b'{"columns":' + cols + b',"rows":[')
        room = lambda: max_bytes - sink.tell() - 64  # noqa: E731 - the closing part
        first = True

        def add(batch) -> int:
            nonlocal first
            items = batch.to_pylist()
            enc = orjson.dumps(items, default=str)[1:-1]
            if len(enc) + 1 <= room():
                if enc:
                    sink.write((b"" if first else b",") + enc)
                    first = False
                return len(items)
            for k, r in enumerate(items):
                e = orjson.dumps(r, default=str)
                if len(e) + 1 > room():
                    return k
                sink.write((b"" if first else b",") + e)
                first = False
            return len(items)
    elif mime == CSV:
        sink.write((",".join('"' + f.name.replace('"', '""') + '"' for f in schema) + "\n").encode())
        no_header = pacsv.WriteOptions(include_header=False)

        nested = [i for i, f in enumerate(schema) if pa.types.is_nested(f.type)]

        def csv_of(batch) -> bytes:
            b = io.BytesIO()
            t = pa.Table.from_batches([batch])
            for i in nested:  # lists, structs and maps as JSON text (Arrow's CSV writer has none)
                t = t.set_column(i, t.field(i).name, pa.array(
                    [None if v is None else orjson.dumps(v, default=str).decode() for v in t.column(i).to_pylist()],
                    pa.string()))
            pacsv.write_csv(t, b, no_header)
            return b.getvalue()

        def add(batch) -> int:
            enc = csv_of(batch)
            room = max_bytes - sink.tell()
            if len(enc) > room:
                k = _fit(batch.num_rows, lambda k: len(csv_of(batch.slice(0, k))), room)
                enc = csv_of(batch.slice(0, k)) if k else b""
                sink.write(enc)
                return k
            sink.write(enc)
            return batch.num_rows
    elif mime == ARROW:
        writer = pa.ipc.new_stream(sink, schema)

        def add(batch) -> int:
            room = max_bytes - sink.tell() - 8
            k = batch.num_rows
            if pa.ipc.get_record_batch_size(batch) > room:
                k = _fit(batch.num_rows, lambda k: pa.ipc.get_record_batch_size(batch.slice(0, k)), room)
            if k:
                writer.write_batch(batch.slice(0, k))
            return k
    else:
        writer = pq.ParquetWriter(sink, schema)
        held = [0]

        def add(batch) -> int:
            room = max_bytes - held[0] - 4096
            k = batch.num_rows
            if batch.nbytes > room:
                k = _fit(batch.num_rows, lambda k: batch.slice(0, k).nbytes, room)
            if k:
                writer.write_batch(batch.slice(0, k))
                held[0] += batch.slice(0, k).nbytes
            return k
    for batch in reader:
        if rows + batch.num_rows > max_rows:
            batch = batch.slice(0, max_rows - rows)
            truncated = True
        if batch.num_rows:
            k = add(batch)
            rows += k
            if k < batch.num_rows:
                truncated = True
        if truncated:
            break
    if mime == JSON:
        sink.write(b'],"rowCount":' + str(rows).encode() + b',"truncated":' + (b"true" if truncated else b"false") + b"}")
    elif mime in (ARROW, PARQUET):
        writer.close()
    return sink.getvalue(), rows, truncated


if __name__ == "__main__":
    zygote(int(sys.argv[1]))
