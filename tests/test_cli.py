"""The command line, run as a user would: subprocesses on a real data directory."""
from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import tomllib

import orjson
import pyarrow.parquet as pq
import pytest

import queries
from ingest.log import LogWriter
from ingest.record import Kind
from pushlake.cli import build_parser
from tests.conftest import compact
from tests.helpers import PUSHLAKE, ROOT, itin_id, run_cli, trip
from tests.terminal import run_on_terminal


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Two teams, trips over three days, compacted once, for the tests that only read it."""
    data = tmp_path_factory.mktemp("cli") / "data"
    data.mkdir()
    _twelve_trips(data)
    compact(data)
    return data


def _twelve_trips(data):
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_750_000_000_000_000 + i, "acme" if i % 3 else "globex", itin_id(i),
               orjson.dumps(trip(itin_id(i), user=f"d{i % 2}", start=f"2025-03-0{1 + i % 3}T10:00:00.000+0000")))
              for i in range(12)])
    w.close()


@pytest.fixture
def fresh_lake(data):
    """The same lake of its own, compacted by `pushlake compact`: for the tests that change it."""
    _twelve_trips(data)
    out = run_cli("compact", "--json", data=data)
    assert json.loads(out.stdout)["stored"] == 12
    return data


def test_sql_formats(lake):
    out = run_cli("sql", "SELECT team_id, count(*) AS n FROM trips GROUP BY 1 ORDER BY 1", data=lake)
    assert "acme" in out.stdout and "(2 rows)" in out.stdout
    out = run_cli("sql", "--format", "json", "SELECT team_id, count(*) AS n FROM trips GROUP BY 1 ORDER BY 1", data=lake)
    assert json.loads(out.stdout) == [{"team_id": "acme", "n": 8}, {"team_id": "globex", "n": 4}]
    out = run_cli("sql", "--format", "csv", "SELECT itin_id, date FROM trips ORDER BY 1 LIMIT 2", data=lake)
    rows = list(csv.reader(io.StringIO(out.stdout)))
    assert rows[0] == ["itin_id", "date"] and rows[1] == [itin_id(0), "2025-03-01"]
    out = run_cli("sql", "--team", "globex", "--json", "SELECT DISTINCT team_id FROM trips", data=lake)
    assert json.loads(out.stdout) == [{"team_id": "globex"}]


def test_named_queries(lake):
    names = run_cli("sql", "--list", data=lake).stdout
    for q in ("scores_per_driver_month", "distance_per_team_day", "crashes_with_location", "deletion_audit"):
        assert q in names
        run_cli("sql", "--query", q, data=lake)
    out = run_cli("sql", "--query", "distance_per_team_day", "--json", data=lake)
    rows = json.loads(out.stdout)
    assert sum(r["trips"] for r in rows) == 12
    assert {r["team_id"] for r in rows} == {"acme", "globex"}
    out = run_cli("sql", "--query", "scores_per_driver_month", "--team", "acme", "--json", data=lake)
    assert {r["user_id"] for r in json.loads(out.stdout)} == {"d0", "d1"}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_export(lake, tmp_path, fmt):
    out = tmp_path / f"trips.{fmt}"
    p = run_cli("export", "trips", "--team", "acme", "--from", "2025-03-02", "--to", "2025-03-03",
                "--out", str(out), data=lake)  # the format from the extension
    assert "\r" not in p.stderr and "[" not in p.stderr  # no progress frames off a terminal
    if fmt == "parquet":
        rows = pq.read_table(out).to_pylist()
    elif fmt == "csv":
        rows = list(csv.DictReader(out.open()))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {itin_id(i) for i in range(12) if i % 3 and i % 3 != 0 and (1 + i % 3) in (2, 3)}
    assert {r["itin_id"] for r in rows} == expected
    assert {r["team_id"] for r in rows} == {"acme"}
    assert p.stdout == f"exported {len(expected)} rows of trips to {out} ({fmt})\n"


def test_export_of_samples_excludes_deleted_trips(fresh_lake, tmp_path):
    from lake.catalog import Catalog
    cat = Catalog(fresh_lake)
    cat.add_tombstones([("acme", itin_id(1), "p0", 999, 0.0)])  # as the receiver does before its ack
    cat.close()
    out = tmp_path / "s.parquet"
    run_cli("export", "trip_samples", "--out", str(out), "--quiet", data=fresh_lake)
    t = pq.read_table(out)
    assert t.num_rows == 110
    assert itin_id(1) not in set(t["itin_id"].to_pylist())


@pytest.mark.parametrize("args,msg", [
    (("sql", "SELEC nonsense"), "Parser Error"),
    (("sql", "--query", "nope"), "no named query"),
    (("export", "nope", "--out", "/tmp/x.parquet"), "unknown table"),
    (("export", "trips", "--from", "yesterday", "--out", "/tmp/x.parquet"), "from must be a date"),
    (("teams", "disable", "ghost"), "no teams' store at"),  # no team was ever created there
    (("sql", "--team", "acme", "COPY trips TO '/tmp/x.csv'"), "read-only"),
])
def test_errors_are_one_clear_line(lake, args, msg):
    p = run_cli(*args, data=lake, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], p.stderr


def test_teams_lifecycle(data):
    p = run_cli("teams", "create", "bad/name", data=data, check=False)
    assert p.returncode == 2 and p.stderr.startswith("pushlake teams: teamId must be") and len(p.stderr.splitlines()) == 1
    out = json.loads(run_cli("teams", "create", "fleet-1", "--json", data=data).stdout)
    assert out["teamId"] == "fleet-1" and out["pushApiKey"].startswith("pk_") and out["adminApiKey"]
    assert run_cli("teams", "create", "fleet-1", data=data, check=False).returncode != 0
    listed = json.loads(run_cli("teams", "list", "--json", data=data).stdout)
    assert [(t["teamId"], t["status"]) for t in listed] == [("fleet-1", "ENABLED")]
    assert listed[0]["creationDate"].endswith("+0000")
    run_cli("teams", "disable", "fleet-1", data=data)
    assert json.loads(run_cli("teams", "list", "--json", data=data).stdout)[0]["status"] == "DISABLED"
    again = json.loads(run_cli("teams", "enable", "fleet-1", "--json", data=data).stdout)
    assert again["status"] == "ENABLED" and again["pushApiKey"] != out["pushApiKey"]
    assert (data / "admin.db").exists()
    assert out["pushApiKey"].encode() not in (data / "admin.db").read_bytes()  # hashes only


def test_check_finds_a_damaged_file_and_log(fresh_lake):
    assert run_cli("check", data=fresh_lake).returncode == 0
    victim = next((fresh_lake / "lake" / "trips").rglob("*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-20])
    p = run_cli("check", data=fresh_lake, check=False)
    assert p.returncode == 1 and "differs from the catalog" in p.stdout
    seg = next((fresh_lake / "log" / "p0").glob("*.log"))
    raw = bytearray(seg.read_bytes())
    raw[40] ^= 0xFF
    seg.write_bytes(bytes(raw))
    rep = json.loads(run_cli("check", "--json", data=fresh_lake, check=False).stdout)
    assert not rep["ok"] and any("CRC" in e for e in rep["errors"])


def test_failed_items_are_listed(data):
    from tests.helpers import fixture_bytes
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1, "acme", "0c83a8ad9bb98ef71a0bd659", fixture_bytes("trip_odd_shape.json"))])
    w.close()
    run_cli("compact", data=data)
    rows = json.loads(run_cli("failed", "list", "--json", data=data).stdout)
    assert len(rows) == 1 and "fifteen km" in rows[0]["reason"]
    assert "fifteen km" in run_cli("check", data=data).stdout


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of the program and of every command and sub-command."""
    yield path, parser
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, p in a.choices.items():
                yield from _parsers(p, (*path, name))


# positionals whose help is written elsewhere (the `failed` command's own change); options have none
POSITIONALS_WITHOUT_HELP_YET: set = set()


def test_every_option_has_help():
    """Every option and argument of every command says what it is in --help."""
    missing = [(*path, a.option_strings[0] if a.option_strings else a.dest)
               for path, p in _parsers(build_parser()) for a in p._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    assert set(missing) <= POSITIONALS_WITHOUT_HELP_YET, missing
    for cmd in ("serve", "compact", "sql", "export", "rebuild", "erase", "teams", "check", "failed", "iceberg"):
        assert run_cli(cmd, "--help").stdout.startswith("usage: pushlake " + cmd)


def test_version():
    with open(ROOT / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    p = run_cli("--version")
    assert p.stdout == f"pushlake {version}\n"


# every command but `serve` and `teams create` on a data directory that is not there
NOT_THERE = [("check",), ("compact",), ("rebuild",), ("sql", "SELECT 1"), ("export", "trips", "--out", "x.csv"),
             ("erase", "abc"), ("erase", "abc", "--now"), ("iceberg",), ("failed", "list"), ("nodes", "list"),
             ("teams", "list"), ("teams", "enable", "acme"), ("teams", "disable", "acme")]


@pytest.mark.parametrize("args", NOT_THERE, ids=" ".join)
def test_no_command_but_serve_and_teams_create_makes_a_data_directory(tmp_path, args):
    """The wrong --data is one sentence that names it and a non-zero exit, not an empty lake,
    an OK, or a traceback; nothing is created."""
    missing = tmp_path / "missing"
    p = run_cli(*args, data=missing, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr
    assert lines[0].startswith(f"pushlake {args[0]}: no ") and str(missing) in lines[0]
    assert "Error" not in lines[0] and p.stdout == ""
    assert not missing.exists()


def test_check_and_readers_refuse_a_directory_that_is_no_lake(tmp_path):
    """A directory with other things in it and nothing of pushlake (today's check said OK)."""
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"\xff\xd8")
    p = run_cli("check", data=foreign, check=False)
    assert p.returncode == 2 and p.stderr == (f"pushlake check: no pushlake data in {foreign}: no log and no catalog.db "
                                              "(a reader of a shared deployment needs --catalog postgresql://… or "
                                              "$PUSHLAKE_CATALOG)\n")
    with pytest.raises(FileNotFoundError, match="no pushlake lake at"):
        queries.connect(foreign)
    with pytest.raises(FileNotFoundError, match="no pushlake data directory at"):
        queries.connect(tmp_path / "missing")
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"] and not (tmp_path / "missing").exists()


def test_connect_creates_no_catalog_and_sees_the_first_commit(data):
    """queries.connect on a data directory where nothing was compacted yet: empty views and
    nothing written; the same connection sees the lake once a compaction creates its catalog."""
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1, "acme", itin_id(1), orjson.dumps(trip(itin_id(1))))])
    w.close()
    before = sorted(str(p.relative_to(data)) for p in data.rglob("*"))
    con = queries.connect(data)
    assert con.execute("SELECT count(*) FROM trips").fetchall() == [(0,)]
    assert sorted(str(p.relative_to(data)) for p in data.rglob("*")) == before  # no catalog.db
    compact(data)
    assert con.execute("SELECT itin_id FROM trips").fetchall() == [(itin_id(1),)]
    con.close()


def test_rebuild_without_a_log_is_a_sentence(data):
    p = run_cli("rebuild", data=data, check=False)
    assert p.returncode == 2
    assert p.stderr == f"pushlake rebuild: no log in {data} (nothing was ever received there): nothing to rebuild from\n"


@pytest.mark.parametrize("args", [("sql", "SELECT 1"), ("export", "trips", "--out", "x.csv"), ("erase", "abc")],
                         ids=lambda a: a[0])
def test_an_unknown_team_is_an_error(lake, args):
    p = run_cli(*args, "--team", "acmee", data=lake, check=False)
    assert p.returncode == 2 and p.stderr == f"pushlake {args[0]}: unknown team 'acmee' (pushlake teams list shows the teams)\n"
    assert not (ROOT / "x.csv").exists()


def test_a_team_of_the_teams_store_without_data_is_known(fresh_lake):
    run_cli("teams", "create", "newcomer", data=fresh_lake)
    p = run_cli("sql", "--team", "newcomer", "SELECT count(*) AS n FROM trips", "--json", data=fresh_lake)
    assert json.loads(p.stdout) == [{"n": 0}]
    p = run_cli("teams", "disable", "ghost", data=fresh_lake, check=False)
    assert p.returncode == 2 and p.stderr == "pushlake teams: unknown team 'ghost'\n"
    p = run_cli("sql", "--team", "ghost", "SELECT 1", data=fresh_lake, check=False)
    assert p.returncode == 2 and "unknown team 'ghost'" in p.stderr


def test_export_to_stdout_and_the_format_from_the_extension(lake, tmp_path):
    p = run_cli("export", "trips", "--team", "globex", "--out", "-", data=lake)  # stdout: CSV by default
    rows = list(csv.DictReader(io.StringIO(p.stdout)))
    assert sorted(r["itin_id"] for r in rows) == [itin_id(i) for i in (0, 3, 6, 9)]
    assert p.stderr == "exported 4 rows of trips (csv)\n"
    raw = subprocess.run([*PUSHLAKE, "export", "trips", "--out", "-", "--format", "parquet", "--quiet", "--data", str(lake)],
                         cwd=ROOT, capture_output=True, timeout=60)
    assert raw.returncode == 0 and raw.stderr == b""
    assert pq.read_table(io.BytesIO(raw.stdout)).num_rows == 12
    p = run_cli("export", "trips", "--out", "-", "--format", "jsonl", "--from", "2025-03-03", data=lake)
    assert sorted(json.loads(line)["itin_id"] for line in p.stdout.splitlines()) == [itin_id(i) for i in (2, 5, 8, 11)]
    assert p.stderr == "exported 4 rows of trips (jsonl)\n"
    p = run_cli("export", "trips", "--out", str(tmp_path / "t.ndjson"), "--team", "globex", data=lake)
    assert p.stdout == f"exported 4 rows of trips to {tmp_path / 't.ndjson'} (jsonl)\n"
    assert len((tmp_path / "t.ndjson").read_text().splitlines()) == 4
    p = run_cli("export", "trips", "--out", str(tmp_path / "t.txt"), data=lake, check=False)
    assert p.returncode == 2 and "cannot tell the format of" in p.stderr and "give --format" in p.stderr
    assert not (tmp_path / "t.txt").exists()
    p = run_cli("sql", "SELECT 1 AS one", data=lake)  # counted nouns: 1 row, 0 rows
    assert p.stdout.endswith("(1 row)\n")
    p = run_cli("export", "crashes", "--out", str(tmp_path / "none.csv"), data=lake)
    assert p.stdout == f"exported 0 rows of crashes to {tmp_path / 'none.csv'} (csv)\n"


def test_progress_bars_on_a_terminal_only(fresh_lake, tmp_path):
    """compact, rebuild and export draw their progress in place on a terminal; in a log (a pipe)
    not one \\r frame."""
    w = LogWriter(fresh_lake, 0)
    w.append([(Kind.TRIP, 1_760_000_000_000_000, "acme", itin_id(99), orjson.dumps(trip(itin_id(99))))])
    w.close()
    code, shown = run_on_terminal("compact", "--no-maintenance", "--data", str(fresh_lake))
    assert code == 0 and "\rcompacted 1 record (1 stored, 0 failed)\r\n" in shown  # 1 record: singular
    code, shown = run_on_terminal("export", "trips", "--data", str(fresh_lake), "--out", str(tmp_path / "t.parquet"))
    assert code == 0 and "\rexport trips [" in shown and "13/13 rows 100%" in shown
    code, shown = run_on_terminal("rebuild", "--data", str(fresh_lake), "--into", str(tmp_path / "again"))
    assert code == 0 and "\rprojected 13 records" in shown
    for args in (("export", "trips", "--out", str(tmp_path / "u.parquet")), ("rebuild", "--into", str(tmp_path / "b")),
                 ("compact", "--no-maintenance")):
        p = run_cli(*args, data=fresh_lake)
        assert "\r" not in p.stderr + p.stdout and "projected" not in p.stderr and "compacted" not in p.stderr
