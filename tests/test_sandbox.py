"""No SQL from a team or a hyper-admin creates, changes or deletes a file, or changes its
connection's settings: Landlock in the query processes, no shared stand-in files, the statement
guard. Each attempt hashes the whole data directory before and after."""
from __future__ import annotations

import hashlib
import os
import sys

import duckdb
import orjson
import pytest

import queries
from ingest.log import LogWriter
from ingest.record import Kind
from lake.schema import SCHEMAS
from queries import sandbox
from tests.conftest import compact
from tests.helpers import itin_id, run_cli, trip
from tests.test_reads import ADMIN_PW, basic, bearer, lake, q  # noqa: F401 - the fixture

IN_CI = os.environ.get("CI", "").lower() == "true"


def tree_hash(root) -> str:
    """Every path, size and content under ``root`` (SQLite's shared-memory index, which readers
    update through a mapping they opened before being confined, is left out)."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        h.update(b"D" + os.path.relpath(dirpath, root).encode())
        for name in sorted(filenames):
            if name.endswith("-shm"):
                continue
            p = os.path.join(dirpath, name)
            h.update(b"F" + name.encode() + str(os.path.getsize(p)).encode())
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def _landlock_or_skip():
    if sandbox.abi_version() < 1:
        if IN_CI:
            pytest.fail("Landlock is not available on this kernel (CI=true: the sandbox must be tested)")
        pytest.skip("no Landlock on this kernel")


def test_a_landlocked_process_cannot_write_under_the_data_dir(data, tmp_path):
    _landlock_or_skip()
    (data / "f").write_text("x")
    (data / "d").mkdir()
    before = tree_hash(data)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what it managed to do
        os.close(r)
        done = []
        try:
            assert sandbox.restrict()
            attempts = {
                "create": lambda: open(data / "new", "w"),
                "write": lambda: open(data / "f", "r+"),
                "append": lambda: open(data / "f", "a"),
                "truncate": lambda: os.truncate(data / "f", 0),
                "unlink": lambda: os.unlink(data / "f"),
                "rename": lambda: os.rename(data / "f", data / "g"),
                "rename-dir": lambda: os.rename(data / "f", data / "d" / "f"),
                "link": lambda: os.link(data / "f", data / "d" / "h"),
                "symlink": lambda: os.symlink("f", data / "s"),
                "mkdir": lambda: os.mkdir(data / "e"),
                "rmdir": lambda: os.rmdir(data / "d"),
                "mkfifo": lambda: os.mkfifo(data / "p"),
                "elsewhere": lambda: open(tmp_path / "outside", "w"),
            }
            for name, attempt in attempts.items():
                try:
                    attempt()
                    done.append(name)
                except PermissionError:
                    pass
            with open(data / "f") as f:  # reading still works
                assert f.read() == "x"
            con = duckdb.connect(config={"threads": 1})
            try:
                con.execute(f"COPY (SELECT 1) TO '{data}/x.csv'")
                done.append("duckdb-copy")
            except duckdb.Error:
                pass
        except BaseException as e:  # noqa: BLE001
            done.append(f"error {e!r}")
        os.write(w, orjson.dumps(done))
        os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.waitpid(pid, 0)
    assert orjson.loads(out) == []
    assert tree_hash(data) == before


ATTEMPTS = [
    # the reported attack, and its neighbours
    "EXPLAIN ANALYZE COPY (SELECT * REPLACE ('globex' AS team_id, 'FORGED' AS itin_id) FROM trips LIMIT 1) "
    "TO '{lake}/_empty/trips/team=_/date=1970-01-01/empty.parquet' (FORMAT parquet)",
    "EXPLAIN ANALYZE COPY (SELECT * FROM trips) TO '{own}/date=2025-03-01/forged.parquet' (FORMAT parquet)",
    "explain /* hidden */ analyze -- more\n copy (select 1) to '{own}/x.csv'",
    "EXPLAIN\tAnAlYzE INSERT INTO _pushlake_deleted VALUES ('acme', 'x')",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT * FROM trips",
    "EXPLAIN (ANALYZE) COPY (SELECT 1) TO '{own}/y.csv'",
    "EXPLAIN COPY (SELECT 1) TO '{own}/z.csv'",
    "PREPARE p AS COPY (SELECT 1) TO '{own}/p.csv'",
    "EXECUTE p",
    "SELECT 1; COPY (SELECT 1) TO '{own}/m.csv'",
    "COPY (SELECT * FROM trips) TO '{own}/own.parquet' (FORMAT parquet)",
    "COPY trips TO '{own}/date=2025-03-01/part-0.parquet' (FORMAT parquet, OVERWRITE true)",
    "CREATE TABLE t AS SELECT * FROM trips",
    "INSERT INTO _pushlake_deleted VALUES ('acme', 'x')",
    "ATTACH '{own}/a.duckdb' AS a",
    "EXPORT DATABASE '{own}/exported'",
    "SET memory_limit = '64GB'",
    "RESET memory_limit",
    "SET threads = 16",
    "PRAGMA threads = 16",
    "SET VARIABLE pl_trips = ['{lake}/trips/team=globex/x.parquet']",
    "CALL checkpoint()",
    "CHECKPOINT",
    "LOAD parquet",
    "SELECT * FROM query('COPY (SELECT 1) TO ''{own}/q.csv''')",
    "/* c */ SeLeCt * FROM query('SET VARIABLE pl_trips = 1')",
    "SELECT * FROM read_xlsx('{own}/x.xlsx')",  # no extension is installed (written) behind a query
    "SELECT * FROM read_text('{lake}/../admin.db')",
    "SELECT * FROM read_blob('{lake}/../catalog.db')",
    "SELECT * FROM read_csv('/etc/passwd')",
]
HARMLESS = [  # accepted, and still write nothing
    "SELECT * FROM checkpoint()",
    "SELECT * FROM query_table('trips')",
    "EXPLAIN SELECT * FROM trips",
    "SELECT * FROM read_parquet('{own}/*/*.parquet')",
]


def _two_teams(data):
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_750_000_000_000_000 + i, "acme" if i < 2 else "globex", itin_id(i),
               orjson.dumps(trip(itin_id(i), start="2025-03-01T10:00:00.000+0000"))) for i in range(4)])
    w.close()
    compact(data)


@pytest.mark.parametrize("scope", [{"team": "acme"}, {"sandbox": True}])
def test_no_statement_of_a_confined_connection_writes(data, scope):
    _two_teams(data)
    lake_dir = data / "lake"
    fmt = {"lake": lake_dir, "own": lake_dir / "trips" / "team=acme"}
    con = queries.connect(data, **scope)
    settings = con.execute("SELECT name, value FROM duckdb_settings() ORDER BY 1").fetchall()
    before = tree_hash(data)
    for sql in ATTEMPTS:
        with pytest.raises((duckdb.Error, PermissionError)):
            con.execute(sql.format(**fmt)).fetchall()
            raise AssertionError(f"accepted: {sql}")
        assert tree_hash(data) == before, sql
    for sql in HARMLESS:
        rows = con.execute(sql.format(**fmt)).fetchall()
        assert tree_hash(data) == before, sql
        if "team" in scope and "trips" in sql and "EXPLAIN" not in sql:
            assert rows and all(r[0] == "acme" for r in rows)
    assert con.execute("SELECT name, value FROM duckdb_settings() ORDER BY 1").fetchall() == settings
    assert sorted(con.execute("SELECT team_id FROM trips").fetchall()) == \
        ([("acme",)] * 2 if "team" in scope else [("acme",)] * 2 + [("globex",)] * 2)
    con.close()
    assert not (lake_dir / "_empty").exists()


async def test_no_statement_over_http_writes(lake, data):  # noqa: F811
    _landlock_or_skip()
    client, keys = await lake()
    fmt = {"lake": data / "lake", "own": data / "lake" / "trips" / "team=acme"}
    r = await q(client, "SELECT count(*) AS n FROM trips", bearer(keys["acme"]["adminApiKey"]))
    assert (await r.json())["rows"] == [{"n": 6}]
    before = tree_hash(data)
    for who in (bearer(keys["acme"]["adminApiKey"]), basic("root@example.com", ADMIN_PW)):
        for sql in ATTEMPTS:
            r = await q(client, sql.format(**fmt), who)
            body = await r.json()
            assert r.status in (400, 403) and "rows" not in body, (sql, body)
            assert tree_hash(data) == before, sql
        for sql in HARMLESS:
            r = await q(client, sql.format(**fmt), who)
            assert r.status == 200, (sql, await r.text())
            assert tree_hash(data) == before, sql


def test_the_kernel_stops_a_write_the_guard_would_let_through(data):
    """The worker's own process is write-proof: with the guard out of the way (a plain DuckDB
    connection after the worker's restrictions), COPY into the team's directory still fails."""
    _landlock_or_skip()
    _two_teams(data)
    before = tree_hash(data)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        msg = b"ok"
        try:
            from queries.worker import run_job
            os.chdir(data)
            sandbox.restrict()
            con = duckdb.connect(config={"threads": 1})
            for target in (f"{data}/lake/trips/team=acme/x.parquet", f"{data}/catalog.db"):
                try:
                    con.execute(f"COPY (SELECT 1 AS a) TO '{target}' (FORMAT parquet)")
                    msg = f"wrote {target}".encode()
                except duckdb.Error:
                    pass
            assert run_job  # the worker module imports under the sandbox
        except BaseException as e:  # noqa: BLE001
            msg = repr(e).encode()
        os.write(w, msg)
        os._exit(0)
    os.close(w)
    out = os.read(r, 65536)
    os.waitpid(pid, 0)
    assert out == b"ok"
    assert tree_hash(data) == before


def test_views_keep_their_columns_when_their_lists_empty(data):
    """An empty table's view is a typed empty relation: DESCRIBE is the same as over files."""
    con = queries.connect(data)
    empty = {t: con.execute(f"DESCRIBE {t}").fetchall() for t in SCHEMAS}
    assert all(con.execute(f"SELECT count(*) FROM {t}").fetchall() == [(0,)] for t in SCHEMAS)
    _two_teams(data)
    con.refresh()
    assert con.execute("SELECT count(*) FROM trips").fetchall() == [(4,)]
    for t in SCHEMAS:
        assert con.execute(f"DESCRIBE {t}").fetchall() == empty[t], t
    team = queries.connect(data, team="nobody")
    for t in SCHEMAS:
        assert team.execute(f"DESCRIBE {t}").fetchall() == empty[t], t
    assert not (data / "lake" / "_empty").exists()


def test_cli_team_sql_writes_nothing(data):
    _two_teams(data)
    run_cli("sql", "--team", "acme", "SELECT 1", data=data)  # (SQLite opens the catalog's WAL files)
    before = tree_hash(data)
    for sql in ATTEMPTS[:4] + ["COPY (SELECT 1) TO '{own}/cli.csv'"]:
        out = run_cli("sql", "--team", "acme", sql.format(lake=data / "lake", own=data / "lake" / "trips" / "team=acme"),
                      data=data, check=False)
        assert out.returncode != 0, sql
        assert tree_hash(data) == before, sql
    out = run_cli("sql", "--team", "acme", "--format", "json", "SELECT count(*) AS n FROM trips", data=data)
    assert orjson.loads(out.stdout) == [{"n": 2}]


@pytest.mark.skipif(sys.platform != "linux", reason="Linux only")
def test_landlock_is_available_in_ci():
    """Under CI the kernel must offer Landlock: the query processes rely on it."""
    _landlock_or_skip()
    assert sandbox.abi_version() >= 1
