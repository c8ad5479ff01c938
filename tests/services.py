"""Real services for the tests: a PostgreSQL server and an S3-compatible server (moto_server).

Session-scoped pytest fixtures, one server of each per test session, started on first use:

    from tests.services import postgres, s3  # noqa: F401   (in tests/conftest.py: one server per session)

or, in tests/conftest.py, ``pytest_plugins = ["tests.services"]``.

``postgres`` yields a ``PostgresServer``: ``.url`` (postgresql://postgres@127.0.0.1:PORT/pushlake),
``.dsn`` (libpq key=value), ``.host``, ``.port`` and ``.fresh_database(name) -> url`` (drops then
creates that database: one per test for isolation). ``s3`` yields an ``S3Server``: ``.endpoint``
(http://127.0.0.1:PORT), ``.host_port`` (for pyarrow's endpoint_override), ``.env`` (AWS_* variables
for a subprocess), ``.client()`` (boto3) and ``.bucket(name) -> name`` (creates the bucket).

Outside pytest (examples/cluster.py, `make cluster`): ``with started("postgres") as pg,
started("s3") as s3:`` starts the same servers and stops them on exit (ServiceUnavailable says why
one cannot start).

Where the servers come from: PostgreSQL's binaries from PATH, else /usr/lib/postgresql/<newest>/bin
(`make test-services` installs Debian's postgresql when neither has them); moto_server from the
venv (the `test` extra). initdb refuses to run as root, so under root the cluster belongs to the
`postgres` OS user when it exists, else to a system user `pushlake-test` created with useradd.

Test settings, not production ones: `initdb --no-sync`, `postgres -F` (fsync off: a crash of the
machine may lose the test cluster, which is thrown away anyway), trust authentication on loopback.

When a server cannot be started the fixture fails the test under CI (CI=true, as in CI runs of
`make test`) and skips it elsewhere, with the reason either way.

Leftovers: ports are picked by binding port 0 (and retried when the server loses the race for it),
every start waits at most START_TIMEOUT seconds, servers run in their own process group that is
killed at the end (SIGKILL after a grace period), they get SIGKILL if the pytest process dies
(PR_SET_PDEATHSIG), and the data directories of dead sessions are removed at the next start.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pushlake.procs import running

START_TIMEOUT = 30.0  # seconds for a server to accept connections
STOP_TIMEOUT = 10.0  # seconds between the polite signal and SIGKILL
PG_USER = "postgres"  # the database superuser initdb creates
PG_DATABASE = "pushlake"
TEST_OS_USER = "pushlake-test"  # the OS user created under root when `postgres` does not exist
DIR_PREFIX = "pushlake-services-"


class ServiceUnavailable(Exception):
    """A server could not be started; the message says why."""


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str):
    """Fail under CI (never a silent skip there), skip elsewhere."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing test service is a failure)", pytrace=False)
    pytest.skip(reason)


# --- processes -----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the pytest process dies (no orphaned servers)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen, first: int = signal.SIGTERM) -> None:
    """`first` to the server, then SIGKILL to its whole process group after STOP_TIMEOUT."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, first)
        except ProcessLookupError:
            pass
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind (start_new_session: pgid == pid)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:].strip()
    except OSError:
        return ""


def _base_dir() -> Path:
    """The temp dir; under root one that the unprivileged server user can traverse."""
    base = Path(tempfile.gettempdir())
    if os.geteuid() == 0:
        p = base
        while True:
            if not p.stat().st_mode & 0o001:  # no search permission for others
                return Path("/tmp")
            if p.parent == p:
                break
            p = p.parent
    return base


def _clean_leftovers(base: Path) -> None:
    """Remove the directories (and kill the servers) of test sessions that died without cleaning up."""
    for d in base.glob(DIR_PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner == os.getpid() or running(owner):
            continue
        pidfile = d / "pgdata" / "postmaster.pid"
        try:
            server = int(pidfile.read_text().split()[0])
            cmdline = Path(f"/proc/{server}/cmdline").read_bytes()
            if str(d).encode() in cmdline:  # really that dead session's postmaster
                os.killpg(server, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass
        shutil.rmtree(d, ignore_errors=True)


def _session_dir(kind: str) -> Path:
    base = _base_dir()
    _clean_leftovers(base)
    d = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{kind}-", dir=base))
    (d / "owner.pid").write_text(str(os.getpid()))
    return d


# --- PostgreSQL ----------------------------------------------------------------------------------


def _version_key(p: Path):
    return [int(x) if x.isdigit() else 0 for x in re.split(r"[.]", p.parent.name)]


def find_postgres_bin() -> Path:
    """The directory holding initdb and postgres: PATH first, then /usr/lib/postgresql/<newest>/bin."""
    initdb = shutil.which("initdb")
    if initdb:
        d = Path(initdb).resolve().parent
        if (d / "postgres").exists():
            return d
        if shutil.which("postgres"):
            return Path(shutil.which("postgres")).resolve().parent
    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "postgres").exists()),
        key=_version_key,
        reverse=True,
    )
    if candidates:
        return candidates[0]
    raise ServiceUnavailable(
        "no PostgreSQL server binaries (initdb, postgres) on PATH or in /usr/lib/postgresql/*/bin; "
        "`make test-services` installs Debian's postgresql (as root)"
    )


def _server_user() -> pwd.struct_passwd | None:
    """None when not root (the server runs as us); else an unprivileged user, created if needed."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", TEST_OS_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    r = subprocess.run(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_OS_USER],
        capture_output=True,
        text=True,
    )
    try:
        return pwd.getpwnam(TEST_OS_USER)
    except KeyError:
        raise ServiceUnavailable(
            f"running as root, initdb needs an unprivileged user and `useradd {TEST_OS_USER}` failed: "
            f"{(r.stderr or r.stdout).strip()}"
        ) from None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    database: str
    data_dir: Path
    log: Path
    start_seconds: float = field(default=0.0)

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database}"

    @property
    def url(self) -> str:
        return self.url_for(self.database)

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def fresh_database(self, name: str) -> str:
        """An empty database `name` (dropped first if it exists); its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn_for("postgres"), autocommit=True, connect_timeout=10) as con:
            con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)


class _Postgres:
    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    def start(self) -> PostgresServer:
        try:
            import psycopg
        except ImportError as e:
            raise ServiceUnavailable(f"psycopg is not installed ({e}); `make install`") from None
        bindir = find_postgres_bin()
        user = _server_user()
        self.dir = _session_dir("pg")
        data, sock, log = self.dir / "pgdata", self.dir / "sock", self.dir / "postgres.log"
        sock.mkdir()
        run_as: dict = {}
        if user is not None:
            for p in (self.dir, sock):
                os.chown(p, user.pw_uid, user.pw_gid)
            run_as = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        env = {
            "PATH": f"{bindir}:/usr/bin:/bin",
            "LC_ALL": "C",
            "LANG": "C",
            "HOME": str(self.dir),
            "TZ": "UTC",
        }
        r = subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER, "--no-sync",
             "-E", "UTF8", "--locale=C"],
            capture_output=True, text=True, env=env, cwd=self.dir, timeout=START_TIMEOUT * 2, **run_as,
        )
        if r.returncode != 0:
            raise ServiceUnavailable(f"initdb failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-2000:]}")
        last = ""
        for _attempt in range(3):  # another process may take the free port before postgres binds it
            port = _free_port()
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(
                    [str(bindir / "postgres"), "-D", str(data), "-k", str(sock), "-h", "127.0.0.1",
                     "-p", str(port), "-F", "-c", "max_connections=200"],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                    start_new_session=True, preexec_fn=_die_with_parent, **run_as,
                )
            dsn = f"host=127.0.0.1 port={port} user={PG_USER} dbname=postgres connect_timeout=2"
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with psycopg.connect(dsn, autocommit=True) as con:
                        con.execute(f'CREATE DATABASE "{PG_DATABASE}"')
                    return PostgresServer("127.0.0.1", port, PG_USER, PG_DATABASE, data, log)
                except psycopg.OperationalError as e:
                    last = str(e).strip()
                    time.sleep(0.05)
            rc = self.proc.poll()  # None: still running, so it timed out
            self._kill()
            tail = _tail(log)
            if "Address already in use" in tail or "could not bind" in tail:
                log.write_text("")
                continue
            if rc is None:
                raise ServiceUnavailable(f"postgres did not accept connections within {START_TIMEOUT:.0f} s "
                                         f"(last error: {last}); log: {tail}")
            raise ServiceUnavailable(f"postgres exited ({rc}); log: {tail}")
        raise ServiceUnavailable(f"postgres could not bind a free port in 3 attempts; log: {_tail(log)}")

    def _kill(self) -> None:
        if self.proc is not None:
            _stop(self.proc, signal.SIGQUIT)  # SIGQUIT = `pg_ctl stop -m immediate`

    def stop(self) -> None:
        self._kill()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on 127.0.0.1 with an empty database `pushlake`, for the whole session."""
    yield from _serve(_Postgres(), "PostgreSQL test server")


# --- S3 (moto_server) ----------------------------------------------------------------------------

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"


@dataclass
class S3Server:
    host: str
    port: int
    log: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    start_seconds: float = field(default=0.0)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def host_port(self) -> str:
        """For pyarrow.fs.S3FileSystem(endpoint_override=..., scheme="http")."""
        return f"{self.host}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
        )

    def bucket(self, name: str) -> str:
        """Create bucket `name` (fine if it exists already); its name."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name


def find_moto_server() -> Path:
    p = Path(sys.executable).parent / "moto_server"
    if p.exists():
        return p
    w = shutil.which("moto_server")
    if w:
        return Path(w)
    raise ServiceUnavailable("moto_server not found (moto[server] from the `test` extra: `make install`)")


class _Moto:
    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.dir: Path | None = None

    def start(self) -> S3Server:
        exe = find_moto_server()
        self.dir = _session_dir("s3")
        log = self.dir / "moto.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)
        for _attempt in range(3):
            port = _free_port()
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(
                    [str(exe), "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.dir,
                    start_new_session=True, preexec_fn=_die_with_parent,
                )
            deadline = time.monotonic() + START_TIMEOUT
            last = ""
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        if r.status == 200:
                            return S3Server("127.0.0.1", port, log)
                except OSError as e:
                    last = str(e)
                time.sleep(0.05)
            rc = self.proc.poll()  # None: still running, so it timed out
            _stop(self.proc)
            tail = _tail(log)
            if "Address already in use" in tail:
                log.write_text("")
                continue
            if rc is None:
                raise ServiceUnavailable(f"moto_server did not answer within {START_TIMEOUT:.0f} s "
                                         f"(last error: {last}); log: {tail}")
            raise ServiceUnavailable(f"moto_server exited ({rc}); log: {tail}")
        raise ServiceUnavailable(f"moto_server could not bind a free port in 3 attempts; log: {_tail(log)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def s3():
    """An S3-compatible server (moto_server) on 127.0.0.1, for the whole session."""
    yield from _serve(_Moto(), "S3 test server (moto_server)")


SERVERS = {"postgres": _Postgres, "s3": _Moto}


@contextlib.contextmanager
def started(kind: str):
    """A server outside pytest (examples/cluster.py, `make cluster`): ``kind`` "postgres" or
    "s3"; yields its PostgresServer / S3Server and stops it (and removes its files) on exit.
    Raises ServiceUnavailable with the reason when it cannot start."""
    server = SERVERS[kind]()
    try:
        info = server.start()
    except BaseException:
        server.stop()
        raise
    try:
        yield info
    finally:
        server.stop()


def _serve(server, what: str):
    """Start a test server, yield what it gives, stop it: ``unavailable`` when it cannot start."""
    t0 = time.monotonic()
    try:
        info = server.start()
    except (ServiceUnavailable, OSError, subprocess.SubprocessError) as e:
        server.stop()
        unavailable(f"{what} unavailable: {e}")
    info.start_seconds = time.monotonic() - t0
    try:
        yield info
    finally:
        server.stop()


def backend_url(request, prefix: str) -> str | None:
    """For a fixture parametrized ``["sqlite", "postgresql"]``: ``None`` (the SQLite file in the
    data directory) or the URL of a fresh PostgreSQL database named after the test."""
    if request.param == "sqlite":
        return None
    server = request.getfixturevalue("postgres")
    return server.fresh_database(prefix + re.sub(r"\W", "_", request.node.name.lower())[:50])
