"""Reading a lake on S3 (``--lake s3://bucket/prefix``): the views, the team sandbox, the query
processes under Landlock, exports, a reader machine with only a PostgreSQL catalog, and the
S3 snippets of docs/reading.md.

Two lakes are built from the same log by the real compactor: one under its data directory, one
on the test S3 server (moto_server). Whatever is read from the S3 one must equal the local one;
the S3 lake's data directory holds no Parquet at all, so nothing can be read from disk by mistake.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

import queries
from ingest.log import LogWriter
from ingest.record import Kind
from lake.catalog import Catalog, TombstoneRow
from lake.schema import SCHEMAS
from pushlake.hyperadmins import HyperAdmins
from pushlake.teams import Teams
from queries import sandbox
from queries.connection import _WRITTEN
from queries.export import export
from tests.conftest import compact
from tests.helpers import ROOT, ServerProcess, itin_id, run_cli, trip

T0 = 1_750_000_000_000_000
ADMIN_PW = "PnsPYthv4N?zI%CK"
DOC = ROOT / "docs" / "reading.md"
IN_CI = os.environ.get("CI", "").lower() == "true"
PENDING = itin_id(4)  # acme's trip with a pending tombstone: read through the anti-join


def _log(data: Path) -> None:
    """Trips of two teams over three dates, then re-pushes (replaced files stay in files/)."""
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, T0 + i, "acme" if i < 6 else "globex", itin_id(i),
               orjson.dumps(trip(itin_id(i), start=f"2025-03-0{1 + i % 3}T10:00:00.000+0000"))) for i in range(9)])
    w.append([(Kind.TRIP, T0 + 100 + i, "acme", itin_id(i),
               orjson.dumps(trip(itin_id(i), user="driver-2", start="2025-03-01T10:00:00.000+0000"))) for i in (0, 3)])
    w.close()


def _pending_tombstone(data: Path) -> None:
    cat = Catalog(data)
    try:
        cat.add_tombstones([TombstoneRow("acme", PENDING, "p0", 10_000, T0 + 999)])
    finally:
        cat.close()


@dataclass
class Lakes:
    local: Path     # the lake under its data directory
    remote: Path    # the data directory of the lake on S3 (log and catalog, no Parquet)
    url: str        # s3://bucket/prefix
    bucket: str
    prefix: str
    keys_of: dict   # team -> its admin API key (on the S3 lake's data directory)

    def keys(self, s3) -> list[str]:  # noqa: F811
        out = s3.client().list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + "/").get("Contents", [])
        return sorted(o["Key"] for o in out)


def _env(mp: pytest.MonkeyPatch, s3, url: str | None) -> None:  # noqa: F811
    for k in ("PUSHLAKE_LAKE", "PUSHLAKE_CATALOG", "PUSHLAKE_NODE", "AWS_REGION"):
        mp.delenv(k, raising=False)
    if url is not None:
        for k, v in s3.env.items():
            mp.setenv(k, v)
        mp.setenv("PUSHLAKE_LAKE", url)


@pytest.fixture(scope="module")
def lakes(s3, tmp_path_factory) -> Lakes:  # noqa: F811
    base = tmp_path_factory.mktemp("s3reads")
    bucket = s3.bucket("pushlake-reads")
    lk = Lakes(base / "local" / "data", base / "remote" / "data", f"s3://{bucket}/lake1", bucket, "lake1", {})
    with pytest.MonkeyPatch.context() as mp:
        for d, url in ((lk.local, None), (lk.remote, lk.url)):
            _env(mp, s3, url)
            d.mkdir(parents=True)
            teams = Teams(d)
            try:
                for t in ("acme", "globex"):
                    lk.keys_of[t] = teams.create(t)["adminApiKey"]
            finally:
                teams.close()
            admins = HyperAdmins(d)
            admins.create("root@example.com", "Root", "Admin", ADMIN_PW)
            admins.close()
            _log(d)
            _, failed = compact(d)
            assert not failed
            _pending_tombstone(d)
    assert not list(lk.remote.rglob("*.parquet")), "the S3 lake wrote Parquet under its data directory"
    assert any(k.startswith("lake1/files/trips/team=acme/") for k in lk.keys(s3))
    assert any(k.startswith("lake1/lake/trips/team=globex/") for k in lk.keys(s3))
    return lk


@pytest.fixture
def on_s3(lakes, s3, monkeypatch) -> Lakes:  # noqa: F811
    """This test's environment points at the S3 lake (as ``--lake`` would)."""
    _env(monkeypatch, s3, lakes.url)
    return lakes


def rows(con, table: str) -> list[tuple]:
    return sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def local_rows(lakes: Lakes, table: str, team: str | None = None) -> list[tuple]:
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PUSHLAKE_LAKE", raising=False)
        with queries.connect(lakes.local, team=team) as con:
            return rows(con, table)


# -- the views ---------------------------------------------------------------------------------

def test_connect_reads_the_same_rows_from_s3(on_s3):
    with queries.connect(on_s3.remote) as con:
        paths = con.execute("SELECT getvariable('pl_trips') || getvariable('pl_trips_dirty')").fetchone()[0]
        assert paths and all(p.startswith(f"{on_s3.url}/files/trips/team=") for p in paths)
        for t in SCHEMAS:
            assert rows(con, t) == local_rows(on_s3, t), t
        assert con.execute("SELECT count(*) FROM trips WHERE itin_id = ?", [PENDING]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM trips").fetchone()[0] == 8


def test_a_team_connection_on_s3_reads_its_team_only(on_s3, s3):  # noqa: F811
    other = next(k for k in on_s3.keys(s3) if "/files/trips/team=globex/" in k)
    own = next(k for k in on_s3.keys(s3) if "/lake/trips/team=acme/" in k)
    with queries.connect(on_s3.remote, team="acme") as con:
        for t in SCHEMAS:
            assert rows(con, t) == local_rows(on_s3, t, team="acme"), t
        assert {r[0] for r in con.execute("SELECT team_id FROM trips").fetchall()} == {"acme"}
        # the public tree's copy of an own file is readable; the other team's objects are not
        assert con.execute(f"SELECT count(*) FROM read_parquet('s3://{on_s3.bucket}/{own}')").fetchone()[0] >= 1
        for sql in (f"SELECT * FROM read_parquet('s3://{on_s3.bucket}/{other}')",
                    f"SELECT * FROM read_parquet('{on_s3.url}/files/trips/team=acme/../team=globex/x.parquet')",
                    f"SELECT * FROM read_parquet('{on_s3.url}/lake/trips/*/*/*.parquet')",
                    f"SELECT * FROM glob('{on_s3.url}/**')",
                    f"SELECT * FROM read_parquet('{on_s3.remote}/catalog.db')",
                    "SELECT * FROM read_csv('/etc/passwd')"):
            with pytest.raises(duckdb.PermissionException):
                con.execute(sql).fetchall()


WRITES = ["COPY (SELECT 1 AS a) TO '{own}/stolen.parquet' (FORMAT parquet)",
          "COPY (SELECT 1 AS a) TO '{url}/stolen.csv'",
          "COPY trips TO '{own}/stolen.csv'"]


@pytest.mark.parametrize("scope", [{"team": "acme"}, {"sandbox": True}, {}])
def test_no_connection_writes_to_the_bucket(on_s3, s3, scope):  # noqa: F811
    """Confined or not, a connection on S3 cannot write an object: the guard refuses the
    statement, and DuckDB's own connection (the guard out of the way) hits the read-only
    filesystem."""
    before = on_s3.keys(s3)
    fmt = {"own": f"{on_s3.url}/files/trips/team=acme", "url": on_s3.url}
    with queries.connect(on_s3.remote, **scope) as con:
        for sql in WRITES:
            sql = sql.format(**fmt)
            if scope:
                with pytest.raises(PermissionError):
                    con.execute(sql)
            with pytest.raises((duckdb.Error, PermissionError)):
                con.con.execute(sql)
    assert on_s3.keys(s3) == before


@pytest.mark.parametrize("scope", [{"team": "acme"}, {"sandbox": True}])
def test_no_escape_attempt_writes_to_the_bucket(on_s3, s3, scope):  # noqa: F811
    """tests/test_sandbox.py's escape attempts, aimed at the bucket: each is refused, none
    changes an object or the data directory, the settings stay; the harmless ones (an own glob
    on S3 among them) run."""
    from tests.test_sandbox import ATTEMPTS, HARMLESS, tree_hash
    fmt = {"lake": f"{on_s3.url}/lake", "own": f"{on_s3.url}/lake/trips/team=acme"}
    before = on_s3.keys(s3)
    with queries.connect(on_s3.remote, **scope) as con:
        disk = tree_hash(on_s3.remote)  # once the catalog is open (SQLite opens its WAL files)
        settings = con.execute("SELECT name, value FROM duckdb_settings() ORDER BY 1").fetchall()
        for sql in ATTEMPTS:
            with pytest.raises((duckdb.Error, PermissionError)):
                con.execute(sql.format(**fmt)).fetchall()
                raise AssertionError(f"accepted: {sql}")
        for sql in HARMLESS:
            rows = con.execute(sql.format(**fmt)).fetchall()
            if "read_parquet" in sql:
                assert rows and {r[0] for r in rows} == {"acme"}, sql
        assert con.execute("SELECT name, value FROM duckdb_settings() ORDER BY 1").fetchall() == settings
        assert tree_hash(on_s3.remote) == disk
    assert on_s3.keys(s3) == before


@pytest.mark.parametrize("known", [True, False], ids=["named-by-the-catalog", "unknown"])
def test_a_file_vacuumed_under_a_statement_is_read_again(on_s3, s3, monkeypatch, known):  # noqa: F811
    """On S3 as on disk: a file of the snapshot gone when DuckDB opens it means a newer snapshot.
    A file the catalog named is not asked of S3 before its GET (its size is the catalog's):
    then the GET fails; an unknown one fails at DuckDB's existence check."""
    with queries.connect(on_s3.remote) as con:
        n = con.execute("SELECT count(*) FROM trips").fetchone()[0]
        real = con.refresh
        rel = "files/trips/team=acme/date=2025-03-01/part-vacuumed.parquet"
        calls = []

        def stale() -> bool:
            if not calls:  # the first refresh points the view at a file that no longer exists
                calls.append(1)
                con.con.execute("SET VARIABLE pl_trips = ?", [[con.storage.uri(rel)]])
                if known:
                    key = con.storage.fs_path(rel)
                    con._infos[key] = {"name": key, "size": 1000, "type": "file", "LastModified": _WRITTEN}
                return False
            return real()
        monkeypatch.setattr(con, "refresh", stale)
        assert con.execute("SELECT count(*) FROM trips").fetchone()[0] == n
        assert calls == [1]


def test_a_view_over_s3_asks_no_object_metadata(on_s3, monkeypatch):
    """What DuckDB asks of each file (exists, size, modified) is answered from the catalog:
    opening a connection and running a statement send GETs only, none per file listed."""
    import s3fs
    sent: list[str] = []
    real = s3fs.S3FileSystem._call_s3

    async def counting(self, method, *args, **kwargs):
        sent.append(method if isinstance(method, str) else method.__name__)
        return await real(self, method, *args, **kwargs)
    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counting)
    from lake import storage
    monkeypatch.setattr(storage, "_ro_classes", {})  # the read-only class is made again, over the counter
    with queries.connect(on_s3.remote, team="acme") as con:
        assert con.execute("SELECT count(*) FROM trip_samples").fetchone()[0] == 50
        assert con.execute("SELECT count(*) FROM trips").fetchone()[0] == 5
    assert sent and set(sent) == {"get_object"}, sent


# -- the query processes: Landlock, the CLI, HTTP ----------------------------------------------

def _landlock_or_skip(abi: int = 1):
    if sandbox.abi_version() < abi:
        if IN_CI:
            pytest.fail(f"Landlock ABI {abi} is not available on this kernel (CI=true: the sandbox must be tested)")
        pytest.skip(f"no Landlock ABI {abi} on this kernel")


def test_landlock_lets_a_query_process_reach_the_s3_port_only(on_s3, s3):  # noqa: F811
    _landlock_or_skip(4)
    assert sandbox.lake_ports() == (s3.port,)
    closed = free_port()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        import socket
        out = []
        try:
            sandbox.restrict(warn=False)
            for port in (s3.port, closed):
                s = socket.socket()
                try:
                    s.connect(("127.0.0.1", port))
                    out.append("connected")
                except OSError as e:
                    out.append(type(e).__name__)
                s.close()
            try:
                socket.socket().bind(("127.0.0.1", 0))
                out.append("bound")
            except OSError as e:
                out.append(type(e).__name__)
        except BaseException as e:  # noqa: BLE001
            out.append(repr(e))
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    got = json.loads(os.read(r, 65536))
    os.waitpid(pid, 0)
    # the S3 port answers; another (closed) port is refused by the kernel before any RST: EACCES
    assert got == ["connected", "PermissionError", "PermissionError"]


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_team_sql_on_s3(on_s3, s3):  # noqa: F811
    """``pushlake sql --team`` runs under Landlock (writes and every other port denied) and
    reads the team's objects only."""
    _landlock_or_skip()
    before = on_s3.keys(s3)
    out = run_cli("sql", "--team", "acme", "--format", "json",
                  "SELECT team_id, count(*) AS n FROM trips GROUP BY 1", data=on_s3.remote)
    assert orjson.loads(out.stdout) == [{"team_id": "acme", "n": 5}]
    other = next(k for k in before if "/files/trips/team=globex/" in k)
    for sql in (f"SELECT * FROM read_parquet('s3://{on_s3.bucket}/{other}')",
                f"COPY (SELECT 1) TO '{on_s3.url}/files/trips/team=acme/cli.csv'"):
        p = run_cli("sql", "--team", "acme", sql, data=on_s3.remote, check=False)
        assert p.returncode != 0 and p.stderr, sql
    out = run_cli("sql", "--format", "json", "SELECT count(*) AS n FROM trips", data=on_s3.remote)
    assert orjson.loads(out.stdout) == [{"n": 8}]
    assert on_s3.keys(s3) == before


def _post(url: str, sql: str, headers: dict, **extra) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/v1/query", data=orjson.dumps({"sql": sql, **extra}), method="POST",
                                 headers={**headers, "Content-Type": "application/json", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def _basic() -> dict:
    import base64
    return {"Authorization": "Basic " + base64.b64encode(f"root@example.com:{ADMIN_PW}".encode()).decode()}


def test_v1_query_and_export_through_a_real_server_on_s3(on_s3, s3):  # noqa: F811
    """``pushlake serve`` with the lake on S3: each query runs in a Landlocked process that
    reaches the S3 port; a team reads its own rows only, writes nothing, and exports."""
    _landlock_or_skip()
    keys = on_s3.keys_of
    before = on_s3.keys(s3)
    other = next(k for k in before if "/files/trips/team=globex/" in k)
    srv = ServerProcess(on_s3.remote, "--no-compactor")
    try:
        acme = {"Authorization": f"Bearer {keys['acme']}"}
        status, body = _post(srv.url, "SELECT team_id, count(*) AS n FROM trips GROUP BY 1", acme)
        assert status == 200, body
        assert body["rows"] == [{"team_id": "acme", "n": 5}]
        status, body = _post(srv.url, "SELECT team_id, count(*) AS n FROM trips GROUP BY 1 ORDER BY 1", _basic())
        assert body["rows"] == [{"team_id": "acme", "n": 5}, {"team_id": "globex", "n": 3}]
        for sql in (f"SELECT * FROM read_parquet('s3://{on_s3.bucket}/{other}')",
                    f"COPY (SELECT 1) TO '{on_s3.url}/files/trips/team=acme/http.csv'",
                    f"SELECT * FROM glob('{on_s3.url}/**')"):
            for who in (acme, _basic()):
                if "team=globex" in sql and who is not acme:
                    continue  # a hyper-admin may read globex (the whole lake, nothing else)
                status, body = _post(srv.url, sql, who)
                assert status in (400, 403) and "rows" not in body, (sql, body)
        t0 = time.perf_counter()
        n = 5
        for _ in range(n):
            assert _post(srv.url, "SELECT count(*) AS n FROM trip_samples", acme)[0] == 200
        print(f"/v1/query on S3: {(time.perf_counter() - t0) / n * 1000:.0f} ms a query")
        req = urllib.request.Request(f"{srv.url}/v1/export/trips?format=parquet", headers=acme)
        with urllib.request.urlopen(req, timeout=60) as r:
            t = pq.read_table(io.BytesIO(r.read()))
        assert set(t["team_id"].to_pylist()) == {"acme"} and t.num_rows == 5
    finally:
        srv.stop()
    assert on_s3.keys(s3) == before


# -- exports -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export_from_s3_to_a_local_file(on_s3, tmp_path, fmt):
    out = tmp_path / f"trips.{fmt}"
    assert export(on_s3.remote, "trips", out, fmt) == 8
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PUSHLAKE_LAKE", raising=False)
        assert export(on_s3.local, "trips", tmp_path / f"local.{fmt}", fmt) == 8
    if fmt == "parquet":
        got, want = pq.read_table(out), pq.read_table(tmp_path / f"local.{fmt}")  # ordered by date only
        assert got.schema == want.schema and sorted(got.to_pylist(), key=repr) == sorted(want.to_pylist(), key=repr)
    else:
        assert sorted(out.read_text().splitlines()) == sorted((tmp_path / f"local.{fmt}").read_text().splitlines())
    assert export(on_s3.remote, "trips", tmp_path / "acme.csv", "csv", team="acme", date_from="2025-03-02") == 3


def test_cli_export_from_s3(on_s3, tmp_path):
    out = tmp_path / "crashes.jsonl"
    p = run_cli("export", "trips", "--out", str(out), "--format", "jsonl", "--team", "globex", "--quiet",
                data=on_s3.remote)
    assert "exported 3 rows" in p.stdout
    assert {json.loads(line)["team_id"] for line in out.read_text().splitlines()} == {"globex"}


# -- a reader machine: PostgreSQL catalog, S3 lake, empty data directory ------------------------

def test_a_reader_with_an_empty_data_directory(s3, postgres, tmp_path, monkeypatch):  # noqa: F811
    """The catalog in PostgreSQL, the Parquet on S3: a machine with an empty --data runs
    ``pushlake sql`` (and a team's, under Landlock) and exports."""
    bucket = s3.bucket("pushlake-reader")
    url = f"s3://{bucket}/shared"
    _env(monkeypatch, s3, url)
    monkeypatch.setenv("PUSHLAKE_CATALOG", postgres.fresh_database("s3_reader"))
    writer = tmp_path / "writer" / "data"
    writer.mkdir(parents=True)
    _log(writer)
    _, failed = compact(writer)
    assert not failed
    reader = tmp_path / "reader" / "data"
    reader.mkdir(parents=True)
    out = run_cli("sql", "--format", "json", "SELECT team_id, count(*) AS n FROM trips GROUP BY 1 ORDER BY 1",
                  data=reader)
    assert orjson.loads(out.stdout) == [{"team_id": "acme", "n": 6}, {"team_id": "globex", "n": 3}]
    if sandbox.abi_version() >= 1:
        out = run_cli("sql", "--team", "globex", "--format", "json", "SELECT count(*) AS n FROM trips", data=reader)
        assert orjson.loads(out.stdout) == [{"n": 3}]
    assert export(reader, "trips", tmp_path / "t.parquet") == 9
    assert list(reader.iterdir()) == [], "a reader wrote into its data directory"
    # /v1/query on a node of its own (teams and keys are in PostgreSQL too): the query processes
    # open the catalog's connection before Landlock closes every port but the S3 one
    _landlock_or_skip()
    teams = Teams(reader)
    try:
        key = teams.create("globex")["adminApiKey"]
    finally:
        teams.close()
    node = tmp_path / "node" / "data"
    node.mkdir(parents=True)
    srv = ServerProcess(node, "--no-compactor", env={"PUSHLAKE_NODE": "reader-1"})
    try:
        status, body = _post(srv.url, "SELECT team_id, count(*) AS n FROM trips GROUP BY 1",
                             {"Authorization": f"Bearer {key}"})
        assert (status, body.get("rows")) == (200, [{"team_id": "globex", "n": 3}]), (body, srv.output())
    finally:
        srv.stop()


# -- docs/reading.md: reading the S3 lake from other engines ------------------------------------

BLOCK = re.compile(r"^```py\n(.*?)^```\s*$", re.M | re.S)
MARK = re.compile(r"^# engine: (s3-[\w-]+)\s*$", re.M)
S3_SNIPPETS = {"s3-duckdb", "s3-pyarrow", "s3-polars"}


def s3_snippets() -> dict[str, str]:
    """{engine: code} of the ```py blocks of docs/reading.md (its S3 section)."""
    out = {}
    for code in BLOCK.findall(DOC.read_text()):
        m = MARK.search(code)
        assert m, f"a ```py block of docs/reading.md has no '# engine: s3-NAME' line:\n{code}"
        out[m.group(1)] = code
    return out


def test_every_s3_snippet_is_tested():
    assert set(s3_snippets()) == S3_SNIPPETS


@pytest.mark.parametrize("engine", sorted(S3_SNIPPETS))
def test_the_s3_snippet_reads_the_views(on_s3, engine):
    code = s3_snippets()[engine]
    line = re.compile(r'^LAKE = "s3://bucket/prefix".*$', re.M)
    assert len(line.findall(code)) == 1, f"the snippet must set LAKE once:\n{code}"
    code = line.sub(f'LAKE = "{on_s3.url}"', code)
    ns: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"docs/reading.md:{engine}", "exec"), ns)
    trips = ns["trips"]
    if engine == "s3-duckdb":
        got = [dict(zip(trips.columns, r)) for r in trips.fetchall()]
    elif engine == "s3-polars":
        got = (trips.collect() if hasattr(trips, "collect") else trips).to_dicts()
    else:
        got = trips.to_pylist()
    with queries.connect(on_s3.remote) as con:
        # plain readers see the public tree: the trip with a pending tombstone is still there
        want = sorted(con.execute("SELECT team_id, itin_id, distance_m FROM trips").fetchall() + [
            tuple(r) for r in con.execute(
                "SELECT team_id, itin_id, distance_m FROM read_parquet(getvariable('pl_trips_dirty')) "
                "WHERE itin_id = ?", [PENDING]).fetchall()])
    assert sorted((r["team_id"], r["itin_id"], r["distance_m"]) for r in got) == want
    assert {r["team"] for r in got} == {"acme", "globex"}
    assert printed.getvalue().strip(), "the snippet prints what it found"
