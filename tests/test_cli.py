"""The command line, run as a user would: subprocesses on a real data directory."""
from __future__ import annotations

import csv
import io
import json

import orjson
import pyarrow.parquet as pq
import pytest

from ingest.log import LogWriter
from ingest.record import Kind
from tests.helpers import itin_id, run_cli, trip


@pytest.fixture
def lake(data):
    """Two teams, trips over three days, compacted."""
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_750_000_000_000_000 + i, "acme" if i % 3 else "globex", itin_id(i),
               orjson.dumps(trip(itin_id(i), user=f"d{i % 2}", start=f"2025-03-0{1 + i % 3}T10:00:00.000+0000")))
              for i in range(12)])
    w.close()
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
                "--format", fmt, "--out", str(out), data=lake)
    assert "export trips [" in p.stderr and "100%" in p.stderr  # the progress bar
    if fmt == "parquet":
        rows = pq.read_table(out).to_pylist()
    elif fmt == "csv":
        rows = list(csv.DictReader(out.open()))
    else:
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = {itin_id(i) for i in range(12) if i % 3 and i % 3 != 0 and (1 + i % 3) in (2, 3)}
    assert {r["itin_id"] for r in rows} == expected
    assert {r["team_id"] for r in rows} == {"acme"}
    assert "exported" in p.stdout


def test_export_of_samples_excludes_deleted_trips(lake, tmp_path):
    from lake.catalog import Catalog
    cat = Catalog(lake)
    cat.add_tombstones([("acme", itin_id(1), "p0", 999, 0.0)])  # as the receiver does before its ack
    cat.close()
    out = tmp_path / "s.parquet"
    run_cli("export", "trip_samples", "--out", str(out), "--quiet", data=lake)
    t = pq.read_table(out)
    assert t.num_rows == 110
    assert itin_id(1) not in set(t["itin_id"].to_pylist())


@pytest.mark.parametrize("args,msg", [
    (("sql", "SELEC nonsense"), "Parser Error"),
    (("sql", "--query", "nope"), "no named query"),
    (("export", "nope", "--out", "/tmp/x"), "unknown table"),
    (("export", "trips", "--from", "yesterday", "--out", "/tmp/x"), "from must be a date"),
    (("teams", "create", "bad/name"), "teamId must be"),
    (("teams", "disable", "ghost"), "unknown team"),
    (("sql", "--team", "acme", "COPY trips TO '/tmp/x.csv'"), "read-only"),
])
def test_errors_are_one_clear_line(lake, args, msg):
    p = run_cli(*args, data=lake, check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], p.stderr


def test_teams_lifecycle(data):
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


def test_check_finds_a_damaged_file_and_log(lake):
    assert run_cli("check", data=lake).returncode == 0
    victim = next((lake / "lake" / "trips").rglob("*.parquet"))
    victim.write_bytes(victim.read_bytes()[:-20])
    p = run_cli("check", data=lake, check=False)
    assert p.returncode == 1 and "differs from the catalog" in p.stdout
    seg = next((lake / "log" / "p0").glob("*.log"))
    raw = bytearray(seg.read_bytes())
    raw[40] ^= 0xFF
    seg.write_bytes(bytes(raw))
    rep = json.loads(run_cli("check", "--json", data=lake, check=False).stdout)
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


def test_every_command_has_help(data):
    for cmd in ("serve", "compact", "sql", "export", "rebuild", "erase", "teams", "check", "failed"):
        p = run_cli(cmd, "--help")
        assert "--data" in p.stdout or cmd == "teams"
