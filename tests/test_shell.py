"""``pushlake sql`` for people: the interactive shell driven through a real terminal (line editing,
history across sessions, statements over several lines, dot commands, Ctrl-C and Ctrl-D), statements
piped on stdin, several statements in order, ``--max-rows``, aligned tables."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import orjson
import pytest

from ingest.log import LogWriter
from ingest.record import Kind
from pushlake import shell
from pushlake.output import display_width, table_lines
from queries import sandbox
from tests.conftest import compact
from tests.helpers import PUSHLAKE, ROOT, itin_id, trip
from tests.terminal import Terminal

PROMPT = "pushlake> "


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """12 trips of two teams (8 of acme, 4 of globex), compacted; read-only for every test here."""
    data = tmp_path_factory.mktemp("shell") / "data"
    data.mkdir()
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_750_000_000_000_000 + i, "acme" if i % 3 else "globex", itin_id(i),
               orjson.dumps(trip(itin_id(i), user=f"d{i % 2}", start=f"2025-03-0{1 + i % 3}T10:00:00.000+0000")))
              for i in range(12)])
    w.close()
    compact(data)
    return data


@pytest.fixture
def home(tmp_path) -> dict:
    """The shell's history in this test's directory, never the user's."""
    return {"HOME": str(tmp_path), "PUSHLAKE_HISTORY": str(tmp_path / "history")}


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n")  # a terminal ends lines with CR LF


def _history(home: dict) -> list[str]:
    return [json.loads(line) for line in Path(home["PUSHLAKE_HISTORY"]).read_text().splitlines()]


def sql(lake: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PUSHLAKE, "sql", "--data", str(lake), *args], cwd=ROOT, input=stdin or "",
                          capture_output=True, text=True, timeout=60)


def test_the_shell_on_a_terminal(lake, home):
    t = Terminal("sql", "--data", str(lake), env=home)
    try:
        assert "read-only" in t.expect(PROMPT)
        # a statement over two lines: the continuation prompt, then one result
        t.send("SELECT team_id, count(*) AS n\r")
        t.expect("...> ")
        t.send("FROM trips GROUP BY 1 ORDER BY 1;\r")
        out = _lines(t.expect(PROMPT))
        assert " team_id | n\n---------+---\n acme    | 8\n globex  | 4\n(2 rows)\n" in out
        t.send(".tables\r")
        assert "crashes\ndiagnoses\ntrip_deletions\ntrip_events\ntrip_samples\ntrips\n" in _lines(t.expect(PROMPT))
        t.send(".schema trips\r")
        out = _lines(t.expect(PROMPT))
        assert " itin_id " in out and "| VARCHAR" in out and " distance_m " in out
        t.send(".schema nope\r")
        assert "no table 'nope' (.tables lists them)" in t.expect(PROMPT)
        t.send(".mode csv\r")
        t.expect(PROMPT)
        t.send("SELECT 1 AS a, 'x' AS b; SELECT 2 AS c;\r")  # two statements on one line, in order
        assert "a,b\n1,x\n\nc\n2\n" in _lines(t.expect(PROMPT))
        t.send(".mode table\r")
        t.expect(PROMPT)
        # a write is refused in one line, and the shell goes on
        t.send("CREATE TABLE x AS SELECT 1;\r")
        assert "read-only: the lake's views cannot be changed (CREATE TABLE x AS SELECT 1)" in t.expect(PROMPT)
        t.send("SELEC 1;\r")
        assert 'Parser Error: syntax error at or near "SELEC"' in t.expect(PROMPT)
        # Ctrl-C drops the statement being typed
        t.send("SELECT 'dropped' AS half\r")
        t.expect("...> ")
        _interrupt(t)
        t.send("SELECT 'still here' AS s;\r")
        out = t.expect(PROMPT)
        assert "still here" in out and "dropped" not in out.split("SELECT 'still here'")[1]
        t.send(".help\r")
        assert ".schema [TABLE]" in t.expect(PROMPT)
        t.send(".mode markdown\r")
        assert "unknown mode 'markdown'" in t.expect(PROMPT)
        t.send("\x04")  # Ctrl-D
        assert t.wait() == 0
    finally:
        t.close()
    entries = _history(home)
    assert "SELECT team_id, count(*) AS n\nFROM trips GROUP BY 1 ORDER BY 1;" in entries  # whole, with its line break
    assert entries[-3:] == ["SELECT 'still here' AS s;", ".help", ".mode markdown"]
    assert not any("dropped" in e for e in entries)
    assert os.stat(home["PUSHLAKE_HISTORY"]).st_mode & 0o777 == 0o600


def _interrupt(t: Terminal) -> None:
    """Ctrl-C at the prompt, until the fresh prompt shows. Python's readline can miss a SIGINT
    that arrives between drawing the prompt and waiting for a key (it is handled at the next key):
    a person never types that fast, a test may, so a second Ctrl-C is sent then."""
    t.send("\x03")
    try:
        t.expect(PROMPT, timeout=3)
    except AssertionError:
        t.send("\x03")
        t.expect(PROMPT)


def test_history_comes_back_in_the_next_session(lake, home):
    """The up arrow recalls the previous session's statements, one of several lines whole."""
    Path(home["PUSHLAKE_HISTORY"]).write_text(
        json.dumps("SELECT count(*) AS n\nFROM trips -- every team\n;") + "\n" + json.dumps(".mode csv") + "\n")
    t = Terminal("sql", "--data", str(lake), env=home)
    try:
        t.expect(PROMPT)
        t.send("\x1b[A\x1b[A\r")  # up twice: the statement of three lines
        assert "\n 12\n(1 row)\n" in _lines(t.expect(PROMPT))
        t.send("\x1b[A\x1b[A\r")  # the newest entry is that statement now: up twice is .mode csv
        t.expect(PROMPT)
        t.send("SELECT 7 AS seven;\r")
        assert "seven\n7\n" in _lines(t.expect(PROMPT))
        t.send(".quit\r")
        assert t.wait() == 0
    finally:
        t.close()
    assert _history(home)[-4:] == ["SELECT count(*) AS n\nFROM trips -- every team\n;", ".mode csv",
                                   "SELECT 7 AS seven;", ".quit"]


def test_a_team_shell_runs_sandboxed_and_keeps_its_history(lake, home):
    """``--team``: the shell's process cannot write files (Landlock, as for one statement), and
    the history file, opened before, is still written."""
    t = Terminal("sql", "--team", "acme", "--data", str(lake), env=home)
    try:
        assert "(team acme)" in t.expect(PROMPT)
        if sandbox.abi_version() >= 1:  # restrict() sets no_new_privs with its ruleset
            status = Path(f"/proc/{t.proc.pid}/status").read_text()
            assert "NoNewPrivs:\t1" in status
        t.send("SELECT DISTINCT team_id FROM trips;\r")
        out = _lines(t.expect(PROMPT))
        assert " acme\n(1 row)" in out and "globex" not in out
        target = lake / "lake" / "trips" / "team=acme" / "shell.csv"
        t.send(f"COPY trips TO '{target}';\r")
        assert "read-only: the lake's views cannot be changed (COPY trips TO" in t.expect(PROMPT)
        t.send("\x04")
        assert t.wait() == 0
    finally:
        t.close()
    assert not target.exists()
    assert _history(home) == ["SELECT DISTINCT team_id FROM trips;", f"COPY trips TO '{target}';"]


def test_no_history_file_when_told(lake, tmp_path):
    """``PUSHLAKE_HISTORY=`` (empty) keeps no history; the shell works the same."""
    t = Terminal("sql", "--data", str(lake), env={"HOME": str(tmp_path), "PUSHLAKE_HISTORY": ""})
    try:
        t.expect(PROMPT)
        t.send("SELECT 5 AS five;\r")
        assert "five" in t.expect(PROMPT)
        t.send("\x04")
        assert t.wait() == 0
    finally:
        t.close()
    assert list(tmp_path.iterdir()) == []


def test_history_keeps_the_last_entries(tmp_path):
    path = tmp_path / "history"
    path.write_bytes(b"".join(orjson.dumps(f"SELECT {i};") + b"\n" for i in range(shell.HISTORY_KEEP + 5))
                     + b"a line written by hand\n")
    h = shell.History(path)
    h.add("SELECT 'new';")
    h.add("SELECT 'new';")  # the same twice in a row: once
    h.close()
    assert h.entries[0] == "SELECT 6;" and h.entries[-2:] == ["a line written by hand", "SELECT 'new';"]
    assert len(h.entries) == shell.HISTORY_KEEP + 1
    again = shell.History(path)  # the file holds one more than it keeps: trimmed at the next start
    again.close()
    assert again.entries == h.entries[1:] and len(path.read_bytes().splitlines()) == shell.HISTORY_KEEP


def test_a_history_file_that_cannot_be_opened_is_said_once(tmp_path):
    h = shell.History(tmp_path / "no" / "such" / "dir" / "history")
    h.add("SELECT 1;")  # kept for this session's up arrow all the same
    h.close()
    assert h.problem == f"no history kept ({tmp_path / 'no/such/dir/history'}: No such file or directory)"
    assert h.entries == ["SELECT 1;"] and not (tmp_path / "no").exists()


def test_statements_piped_on_stdin_run_in_order(lake):
    p = sql(lake, stdin="SELECT 1 AS a;\n-- a comment\nSELECT\n  2 AS b;\n.tables\nSELECT 3 AS c")  # last: no ';'
    assert p.returncode == 0, p.stderr
    assert p.stdout == (" a\n---\n 1\n(1 row)\n\n b\n---\n 2\n(1 row)\n"
                        "crashes\ndiagnoses\ntrip_deletions\ntrip_events\ntrip_samples\ntrips\n\n c\n---\n 3\n(1 row)\n")
    same = subprocess.run([*PUSHLAKE, "sql", "--data", str(lake), "--format", "csv", "-"], cwd=ROOT,
                          input="SELECT 1 AS a; SELECT 2 AS b;", capture_output=True, text=True, timeout=60)
    assert same.stdout == "a\n1\n\nb\n2\n"


def test_a_script_stops_at_its_first_error(lake):
    p = sql(lake, stdin="SELECT 1 AS a;\nSELECT nope FROM trips;\nSELECT 3 AS c;\n")
    assert p.returncode == 2
    assert p.stdout == " a\n---\n 1\n(1 row)\n"
    assert p.stderr.startswith("pushlake sql: Binder Error: ") and len(p.stderr.splitlines()) == 1
    p = sql(lake, stdin="  \n-- nothing but a comment\n")
    assert p.returncode == 2 and "no statement on stdin" in p.stderr


def test_several_statements_in_one_argument(lake):
    p = sql(lake, "--json", "SELECT 1 AS a; SELECT count(*) AS n FROM trips WHERE team_id = 'globex'")
    assert p.returncode == 0
    docs = p.stdout.replace("]\n[", "]\x00[").split("\x00")
    assert [json.loads(d) for d in docs] == [[{"a": 1}], [{"n": 4}]]
    # a ';' inside a string or a comment separates nothing
    p = sql(lake, "--format", "csv", "SELECT 'a;b' AS s -- one; statement\n")
    assert p.stdout == "s\na;b\n"


WRITES = ["CREATE TABLE x AS SELECT 1", "INSERT INTO trips SELECT * FROM trips", "COPY trips TO '{dir}/out.csv'",
          "ATTACH '{dir}/other.db'", "SET threads = 1", "DROP VIEW trips", "SELECT 1; CREATE VIEW v AS SELECT 2"]


@pytest.mark.parametrize("statement,team", [(w, None) for w in WRITES] + [(w, "acme") for w in WRITES[2::2]])
def test_a_write_answers_read_only(lake, tmp_path, statement, team):
    """Whatever the statement, and whether the connection is a team's (its own guard and
    Landlock) or the whole lake's: one line, exit 2, nothing written, nothing run before it."""
    text = statement.format(dir=tmp_path)
    p = sql(lake, *(("--team", team) if team else ()), text)
    assert p.returncode == 2 and p.stdout == ""
    verb = text.split(";")[-1].strip()
    assert p.stderr == f"pushlake sql: read-only: the lake's views cannot be changed ({verb[:40].rstrip()}" + \
        (" …" if len(verb) > 40 else "") + ")\n"
    assert list(tmp_path.iterdir()) == []


def test_explain_analyze_is_refused_and_explain_runs(lake):
    p = sql(lake, "EXPLAIN ANALYZE SELECT * FROM trips")
    assert p.returncode == 2 and "read-only: only queries and a plain EXPLAIN of one run here" in p.stderr
    p = sql(lake, "EXPLAIN SELECT * FROM trips")
    assert p.returncode == 0 and "physical_plan" in p.stdout


def test_max_rows(lake):
    p = sql(lake, "SELECT range AS i FROM range(1005)")  # a table shows 1000 rows by default
    lines = p.stdout.splitlines()
    assert lines[:3] == ["   i", "-----", "   0"] and lines[-2] == " 999" and len(lines) == 2 + 1000 + 1
    assert lines[-1] == "(1000 rows shown, 5 more rows; --max-rows 0 shows all)"
    p = sql(lake, "--max-rows", "0", "SELECT range AS i FROM range(1005)")
    assert p.stdout.splitlines()[-1] == "(1005 rows)"
    p = sql(lake, "--max-rows", "11", "SELECT itin_id FROM trips ORDER BY 1")
    assert p.stdout.splitlines()[-1] == "(11 rows shown, 1 more row; --max-rows 0 shows all)"
    p = sql(lake, "--max-rows", "1", "SELECT 1 AS one")
    assert p.stdout.splitlines()[-1] == "(1 row)"
    # CSV and JSON: every row unless told; the note goes to stderr, not into the data
    p = sql(lake, "--json", "SELECT range AS i FROM range(1005)")
    assert len(json.loads(p.stdout)) == 1005 and p.stderr == ""
    p = sql(lake, "--format", "csv", "--max-rows", "3", "SELECT range AS i FROM range(1005)")
    assert p.stdout == "i\n0\n1\n2\n" and p.stderr == "(3 rows shown, 1002 more rows; --max-rows 0 shows all)\n"
    p = sql(lake, "--max-rows", "-1", "SELECT 1")
    assert p.returncode == 2 and "--max-rows must be >= 0" in p.stderr


def test_tables_are_aligned():
    """Numbers to the right, text to the left, by display width (a CJK character is two columns);
    NULL shown, line breaks escaped, long values cut."""
    lines = table_lines(["name", "n", "note"], [("日本", 1, "a\nb"), ("x", 22, None), ("é", None, "y" * 60)])
    assert lines == [
        " name |    n | note",
        "------+------+" + "-" * 50,  # the cut note is 48 wide
        " 日本 |    1 | a\\nb",
        " x    |   22 | NULL",
        " é    | NULL | " + "y" * 47 + "…",
    ]
    bars = {tuple(i for i, c in enumerate(_columns(ln)) if c == "|") for ln in lines if "|" in ln}
    assert len(bars) == 1  # every '|' at the same screen column


def _columns(line: str) -> list[str]:
    """The line as screen cells (a wide character fills two)."""
    out = []
    for c in line:
        out += [c] + [""] * (display_width(c) - 1)
    return out


@pytest.mark.parametrize("text,complete", [
    ("SELECT 1;", True), ("SELECT 1", False), ("SELECT ';'", False), ("SELECT 'a;", False),
    ("SELECT 1; -- done", True), ("SELECT 1 -- not yet;", False), ("SELECT 1 /* ; */", False),
    ("SELECT $$ a; $$;", True), ("-- only a comment", False), ("SELECT (1);", True),
])
def test_a_statement_ends_at_a_semicolon_outside_strings_and_comments(text, complete):
    assert shell.statement_complete(text) is complete

