"""``--catalog``, ``--lake`` and ``--node`` on the command line: every command takes them (or
``$PUSHLAKE_CATALOG`` / ``$PUSHLAKE_LAKE`` / ``$PUSHLAKE_NODE``), bad values are one line and exit 2
before anything is opened, and the read commands work from a machine that has only the catalog:
an empty data directory that nothing writes into. Real PostgreSQL (tests/services.py), real
``pushlake`` subprocesses."""
from __future__ import annotations

import argparse
import json

import pytest

from pushlake.cli import build_parser
from tests.helpers import run_cli


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every command that runs something (``teams list`` and its
    siblings, not ``teams`` itself)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, p in subs[0].choices.items():
        yield from _leaves(p, (*path, name))


def test_every_command_takes_the_location_options():
    leaves = dict(_leaves(build_parser()))
    assert {"serve", "compact", "sql", "export", "rebuild", "erase", "iceberg", "check", "failed",
            "teams create", "teams list", "teams enable", "teams disable"} <= {" ".join(k) for k in leaves}
    for path, p in leaves.items():
        options = p._option_string_actions
        expected = ["--catalog", "--lake"] + (["--node"] if path[0] in ("serve", "compact") else [])
        for opt in expected:
            assert opt in options, f"pushlake {' '.join(path)} has no {opt}"
            assert options[opt].help and options[opt].metavar, f"pushlake {' '.join(path)} {opt}: no help"


@pytest.mark.parametrize("argv", [
    ["teams", "list", "--catalog", "postgresql://u@h/db", "--lake", "s3://b/p"],
    ["teams", "--catalog", "postgresql://u@h/db", "--lake", "s3://b/p", "list"],  # on the group, as --data
    ["sql", "--catalog", "postgresql://u@h/db", "--lake", "s3://b/p", "SELECT 1"],
    ["serve", "--catalog", "postgresql://u@h/db", "--lake", "s3://b/p", "--node", "n1"],
])
def test_the_options_parse_in_either_place(argv):
    a = build_parser().parse_args(argv)
    assert (a.catalog, a.lake) == ("postgresql://u@h/db", "s3://b/p")
    assert getattr(a, "node", "n1") == "n1"


def _files(path):
    return sorted(p.name for p in path.rglob("*")) if path.exists() else None


def test_teams_created_on_one_machine_are_listed_from_another(postgres, tmp_path):  # noqa: F811
    url = postgres.fresh_database("cli_teams")
    admin, reader = tmp_path / "admin", tmp_path / "reader"
    reader.mkdir()
    out = json.loads(run_cli("teams", "create", "acme", "--json", "--catalog", url, data=admin).stdout)
    assert out["teamId"] == "acme" and out["pushApiKey"].startswith("pk_")
    listed = json.loads(run_cli("teams", "list", "--json", "--catalog", url, data=reader).stdout)
    assert [(t["teamId"], t["status"]) for t in listed] == [("acme", "ENABLED")]
    run_cli("teams", "disable", "acme", "--catalog", url, data=reader)
    listed = json.loads(run_cli("teams", "list", "--json", "--catalog", url, data=admin).stdout)
    assert listed[0]["status"] == "DISABLED"
    assert _files(reader) == [] and not list(tmp_path.rglob("admin.db")) and not list(tmp_path.rglob("oauth.secret"))


def test_the_environment_variable_works_the_same(postgres, tmp_path):  # noqa: F811
    url = postgres.fresh_database("cli_env")
    env = {"PUSHLAKE_CATALOG": url}
    run_cli("teams", "create", "globex", data=tmp_path / "a", env=env)
    listed = json.loads(run_cli("teams", "list", "--json", data=tmp_path / "b", env=env).stdout)
    assert [t["teamId"] for t in listed] == ["globex"]
    # an explicit --catalog wins over the variable
    other = postgres.fresh_database("cli_env_other")
    run_cli("teams", "create", "initech", "--catalog", other, data=tmp_path / "a", env=env)
    assert [t["teamId"] for t in json.loads(run_cli("teams", "list", "--json", data=tmp_path / "b",
                                                     env={"PUSHLAKE_CATALOG": other}).stdout)] == ["initech"]
    assert not list(tmp_path.rglob("admin.db"))


@pytest.mark.parametrize("args,env,msg", [
    (("teams", "list", "--catalog", "mysql://root:hunter2secret@db/x"), {}, "--catalog: unsupported catalog URL"),
    (("teams", "list", "--catalog", "catalog.db"), {}, "--catalog: unsupported catalog URL"),
    (("teams", "list"), {"PUSHLAKE_CATALOG": "mysql://root:hunter2secret@db/x"}, "--catalog: unsupported"),
    (("sql", "--lake", "http://bucket/p", "SELECT 1"), {}, "--lake: invalid lake URL"),
    (("sql", "--lake", "s3://bucket/a//b", "SELECT 1"), {}, "--lake: invalid lake URL"),
    (("export", "trips", "--out", "x.parquet"), {"PUSHLAKE_LAKE": "s3:/bucket"}, "--lake: invalid lake URL"),
    (("serve", "--node", "Node_1"), {}, "--node: invalid node name"),
    (("compact",), {"PUSHLAKE_NODE": "-n"}, "--node: invalid node name"),
])
def test_bad_locations_are_one_line_and_exit_2(tmp_path, args, env, msg):
    data = tmp_path / "data"
    p = run_cli(*args, data=data, check=False, env=env)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and msg in lines[0], p.stderr
    assert "hunter2secret" not in p.stderr + p.stdout
    assert not data.exists()  # refused before anything was opened


def test_an_unreachable_catalog_is_one_line_without_the_password(tmp_path):
    from tests.helpers import free_port
    url = f"postgresql://pushlake:hunter2secret@127.0.0.1:{free_port()}/nothing"
    p = run_cli("teams", "list", "--catalog", url, data=tmp_path, check=False)
    lines = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(lines) == 1 and "cannot reach the catalog" in lines[0], p.stderr
    assert "hunter2secret" not in p.stderr and "pushlake:***@127.0.0.1" in p.stderr


def test_read_commands_on_an_empty_directory_with_the_catalog(postgres, tmp_path):  # noqa: F811
    """A reader machine: an empty --data and --catalog. Nothing is created in --data."""
    from lake.catalog import Catalog
    url = postgres.fresh_database("cli_reader")
    run_cli("teams", "create", "acme", "--catalog", url, data=tmp_path / "admin")
    Catalog(tmp_path / "admin", url=url).close()  # what a node's compactor creates
    reader = tmp_path / "reader"
    reader.mkdir()
    assert json.loads(run_cli("failed", "list", "--json", "--catalog", url, data=reader).stdout) == []
    assert [t["teamId"] for t in json.loads(run_cli("teams", "list", "--json", "--catalog", url,
                                                    data=reader).stdout)] == ["acme"]
    assert json.loads(run_cli("sql", "--json", "--catalog", url, "SELECT count(*) AS n FROM trips",
                              data=reader).stdout) == [{"n": 0}]
    out = tmp_path / "trips.parquet"
    assert "exported 0 rows" in run_cli("export", "trips", "--quiet", "--out", str(out), "--catalog", url,
                                        data=reader).stdout
    assert _files(reader) == []
    # a database with no pushlake catalog in it: said so, nothing created there either
    empty = postgres.fresh_database("cli_reader_empty")
    for args in (("failed", "list"), ("teams", "list"), ("sql", "SELECT 1")):
        p = run_cli(*args, "--catalog", empty, data=reader, check=False)
        assert p.returncode == 2 and "no pushlake tables there" in p.stderr and len(p.stderr.splitlines()) == 1
    assert _files(reader) == []


@pytest.mark.parametrize("args", [("failed", "list"), ("teams", "list"), ("sql", "SELECT 1"),
                                  ("export", "trips", "--out", "x.parquet"), ("iceberg",)])
def test_read_commands_without_the_catalog_say_where_they_looked(tmp_path, args):
    empty, missing = tmp_path / "empty", tmp_path / "missing"
    empty.mkdir()
    for data in (empty, missing):
        p = run_cli(*args, data=data, check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and str(data) in lines[0] and "--catalog" in lines[0], p.stderr
    assert _files(empty) == [] and not missing.exists()


def test_serve_names_its_node_catalog_and_lake_and_children_inherit_them(postgres, tmp_path):  # noqa: F811
    """``serve --node`` reaches the receiver through the environment (its partition is
    ``<node>.p0``); the catalog is printed without its password (the test server trusts loopback,
    so a password in the URL is accepted and ignored)."""
    import urllib.request

    import orjson

    from tests.helpers import ServerProcess, trip
    url = postgres.fresh_database("cli_serve").replace("postgres@", "postgres:hunter2secret@")
    key = json.loads(run_cli("teams", "create", "acme", "--json", "--catalog", url, data=tmp_path / "admin")
                     .stdout)["pushApiKey"]
    server = ServerProcess(tmp_path / "node", "--catalog", url, "--node", "n1", "--iceberg-interval", "0")
    try:
        req = urllib.request.Request(f"{server.url}/push/trip", data=orjson.dumps(trip("a" * 24)), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["partition"] == "n1.p0"
    finally:
        server.proc.terminate()
        server.proc.wait(15)
        out = server.output()
        server.stop()
    assert "Node: n1; catalog: postgresql://postgres:***@" in out and "node n1, catalog postgresql://postgres:***@" in out
    assert "hunter2secret" not in out
    assert (tmp_path / "node" / "log" / "n1.p0").is_dir() and not (tmp_path / "node" / "catalog.db").exists()
