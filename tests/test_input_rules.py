"""What the administration plane accepts as names: whole-value matches (a final newline never
slips through a ``$``), team ids that are safe as ``team=<id>`` directories, and no two team ids
that only differ by case."""
from __future__ import annotations

import json

import pytest

import queries
from pushlake.hyperadmins import HyperAdmins, password_problems
from pushlake.teams import Conflict, Invalid, Teams
from tests.conftest import compact
from tests.helpers import itin_id, run_cli, trip
from tests.test_enterprise import api  # noqa: F401 (fixture)

BAD_TEAM_IDS = ["beta\n", "beta\r\n", "\nbeta", "be\nta", "beta ", " beta", ".", "..", "...", "./a", "a/b", "a\\b",
                "a=b", "team=x", "a%2Fb", "a.", "a..", "-a", "_a", ".a", "é", "ａ", "a\x00", "a\t", "",
                "a" * 65, "a" * 64 + "\n"]
GOOD_TEAM_IDS = ["a", "B", "0", "a.b", "a..b", "a-", "a_", "fleet-1", "Fleet_2.eu", "a" * 64]


@pytest.mark.parametrize("team_id", BAD_TEAM_IDS, ids=repr)
def test_team_ids_that_are_not_a_safe_directory_name_are_refused(data, team_id):
    t = Teams(data)
    try:
        with pytest.raises(Invalid):
            t.create(team_id)
        assert t.all() == []
    finally:
        t.close()


def test_team_ids_that_are_fine(data):
    t = Teams(data)
    try:
        for team_id in GOOD_TEAM_IDS:
            assert t.create(team_id)["teamId"] == team_id
    finally:
        t.close()


def test_a_refused_newline_id_leaves_all_team_reads_working(data):
    """The defect: ``beta\\n`` was accepted, its files went to ``team=beta\\n/``, and DuckDB's hive
    partitioning failed on every read of all teams."""
    t = Teams(data)
    try:
        t.create("acme")
        with pytest.raises(Invalid):
            t.create("beta\n")
    finally:
        t.close()
    from ingest.log import LogWriter
    import orjson
    w = LogWriter(data, 0)
    w.append([(1, 1, "acme", itin_id(1), orjson.dumps(trip(itin_id(1))))])
    w.close()
    compact(data)
    con = queries.connect(data)
    assert con.execute("SELECT team_id, itin_id FROM trips").fetchall() == [("acme", itin_id(1))]
    con.close()


def test_team_ids_differing_only_by_case_conflict(data):
    t = Teams(data)
    try:
        t.create("Fleet-A")
        for other in ("fleet-a", "FLEET-A", "fLeEt-a"):
            with pytest.raises(Conflict, match="only by case"):
                t.create(other)
        with pytest.raises(Conflict, match="already exists"):
            t.create("Fleet-A")
        assert [r.team_id for r in t.all()] == ["Fleet-A"]
        t.create("fleet-b")  # a different id is fine
    finally:
        t.close()


async def test_enterprise_api_refuses_newline_and_case_twins(api):  # noqa: F811
    a = await api()
    for bad in ("beta\n", "beta.", "a=b", "..", "a/b"):
        status, body = await a.call("POST", "/v1/enterprise/team", {"teamId": bad})
        assert (status, body["error"]) == (422, "unprocessable"), bad
    assert (await a.call("POST", "/v1/enterprise/team", {"teamId": "Acme"}))[0] == 200
    status, body = await a.call("POST", "/v1/enterprise/team", {"teamId": "acme"})
    assert (status, body["error"]) == (409, "conflict") and "only by case" in body["message"]
    _, teams = await a.call("GET", "/v1/enterprise/teams")
    assert [x["teamId"] for x in teams] == ["Acme"]


def test_cli_teams_create_refuses_newline_and_case_twins(data):
    run_cli("teams", "create", "acme", data=data)
    p = run_cli("teams", "create", "ACME", data=data, check=False)
    assert p.returncode == 2 and "only by case" in p.stderr and p.stdout == ""
    p = run_cli("teams", "create", "beta\n", data=data, check=False)
    assert p.returncode == 2 and "teamId must be" in p.stderr
    out = json.loads(run_cli("teams", "list", "--json", data=data).stdout)
    assert [x["teamId"] for x in out] == ["acme"]


GOOD_ADMIN = {"user_id": "jane.doe@example.com", "firstname": "Jane", "lastname": "Doe",
              "password": "PnsPYthv4N?zI%CK"}


@pytest.mark.parametrize("field,value", [("user_id", "jane\n"), ("firstname", "Jane\n"), ("lastname", "Doe\n"),
                                         ("user_id", "\njane"), ("user_id", "ja\nne"), ("user_id", "jane~"),
                                         ("user_id", "jane:x"), ("user_id", "")])
def test_hyperadmin_names_must_match_whole(data, field, value):
    h = HyperAdmins(data)
    try:
        with pytest.raises(Invalid):
            h.create(**{**GOOD_ADMIN, field: value})
        assert h.list() == []
        h.create(**GOOD_ADMIN)
    finally:
        h.close()


def test_password_digit_rule_means_an_ascii_digit():
    assert password_problems("PnsPYthv4N?zI%CK") == []
    # \d took any Unicode digit (Arabic-Indic three here); the documented pattern means 0-9
    assert password_problems("PnsPYthv\u0663N?zI%CK") == ["at least one digit"]
    assert password_problems("Ab1!" * 3) == []
    assert password_problems("Ab1!" * 2 + "\n\n\n\n") == []  # 12 characters, whatever they are
    assert password_problems("Ab1!" * 2 + "\n\n\n") == ["at least 12 characters"]


async def test_report_dates_must_be_yyyy_mm_dd(api):  # noqa: F811
    a = await api()
    ok = ("2025-01-01", "2025-01-01T00:00:00.000+0000", "2025-01-01T10:00:00Z")
    for v in ok:
        status, body = await a.call("GET", "/v1/enterprise/push/trips/report",
                                    params={"startDate": v, "endDate": "2025-01-31"})
        assert status == 200 and body["startDate"] == "2025-01-01", v
    for v in ("2025-W01-1", "20250101", "2025-01-01\n", "2025-1-1", "2025-01-01T", "2025-01-01x",
              "\u0662\u0660\u0662\u0665-01-01", "2025-02-30"):
        status, body = await a.call("GET", "/v1/enterprise/push/trips/report",
                                    params={"startDate": v, "endDate": "2025-12-31"})
        assert (status, body["error"]) == (400, "bad_request"), v


def test_only_names_the_log_writes_are_partitions_and_segments(data):
    """Directory and file names read back from the data directory are matched whole too:
    ``str.isdigit`` took 'p١' (an Arabic-Indic one) for partition 1, and 'p01' for p1."""
    from ingest.log import LogWriter, list_partitions, list_segments
    import orjson
    w = LogWriter(data, 0)
    w.append([(1, 1, "acme", itin_id(1), orjson.dumps(trip(itin_id(1))))])
    w.close()
    for stray in ("p\u0661", "p01", "p", "p1x", "p-1", "q1", "p1\n"):
        (data / "log" / stray).mkdir()
    (data / "log" / "p12").mkdir()
    assert list_partitions(data) == ["p0", "p12"]
    pdir = data / "log" / "p0"
    for stray in ("5.log", "\u0661" * 20 + ".log", "0" * 20 + ".log.tmp", "0" * 19 + "1.log\n", "0" * 21 + ".log"):
        (pdir / stray).write_bytes(b"")
    assert [b for b, _ in list_segments(pdir)] == [0]


async def test_ids_an_older_release_let_in_are_reported_at_start(data, aiohttp_client, caplog):
    """An upgrade keeps admin.db: a 'beta\\n' or a case twin made before the rules is still
    there. It keeps working, and every server start says what is wrong with it."""
    import logging
    from pushlake.api import make_app
    from tests.conftest import settings
    t = Teams(data)
    t.create("acme")
    now = 0.0
    for legacy in ("beta\n", "ACME", "gamma."):
        t.con.execute("INSERT INTO teams VALUES (?,?,?,?,?,?)", (legacy, "ENABLED", now, legacy + "p", legacy + "a", now))
    problems = t.id_problems()
    t.close()
    assert len(problems) == 3
    assert any("'beta\\n'" in p for p in problems) and any("'ACME' and 'acme'" in p for p in problems)
    with caplog.at_level(logging.WARNING, logger="pushlake.enterprise"):
        await aiohttp_client(make_app(settings(data)))
    assert sum("team id" in r.getMessage() for r in caplog.records) == 3
