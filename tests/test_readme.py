"""The README works as written: its blocks run top to bottom in one bash against a live server, and
its command table names every command and option of the command line as they are.

How the walk-through runs: every ```sh block of README.md, and every ```python block (fed to
``.venv/bin/python``), in order, in ONE ``bash`` with ``set -euo pipefail``, so variables set by one
block serve the next. A block right after a line ``<!-- not run: reason -->`` is left out (starting
the server itself, a cluster). The only rewriting is the address: ``127.0.0.1:8080`` becomes the
test server's port; ``PUSHLAKE_DATA`` names the server's fresh data directory, as the README tells
a reader who ran ``make run DATA=...`` to do. The shell's working directory mirrors the repository
(a symbolic link to each of its entries), so that the files the README writes (exports) land in a
temporary directory, not in the checkout.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import html
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import ROOT, ServerProcess, fixture

README = ROOT / "README.md"
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.*?)\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")
ADDRESS = "127.0.0.1:8080"
MARK = "@@@ README block at line "
TRIP_KEPT = fixture("trip_33min.json")["itinId"]        # 9d9b9e60a9ee841fd67a6e92, dated 2025-03-30
TRIP_DELETED = fixture("trip_small.json")["itinId"]     # 0c83a8ad9bb98ef71a0bd659, dated 2025-01-20


@dataclass(frozen=True)
class Block:
    lang: str       # "sh" or "python" (other fences are not code to run: tables, diagrams)
    code: str
    line: int       # 1-based line of the opening fence
    not_run: str | None  # the reason, when marked


def blocks(text: str) -> list[Block]:
    """The README's ```sh and ```python blocks, each with its not-run mark if any."""
    out, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        prev = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mark = NOT_RUN.match(prev)
        if lang in ("sh", "python"):
            out.append(Block(lang, "\n".join(lines[start + 1:end]), start + 1, mark and mark.group(1)))
        i = end + 1
    return out


def script(run: list[Block], port: int) -> str:
    """One bash script of the blocks, each announced by a marker line on stdout."""
    parts = ["set -euo pipefail"]
    for b in run:
        code = b.code.replace(ADDRESS, f"127.0.0.1:{port}")
        parts.append(f"echo '{MARK}{b.line}'")
        if b.lang == "python":
            assert "PYTHON_BLOCK" not in code
            code = f".venv/bin/python - <<'PYTHON_BLOCK'\n{code}\nPYTHON_BLOCK"
        parts.append(code)
    parts.append(f"echo '{MARK}end'")
    return "\n".join(parts) + "\n"


@dataclass
class Walk:
    blocks: list[Block]
    proc: subprocess.CompletedProcess
    cwd: Path
    seconds: float

    def out(self, containing: str) -> str:
        """The output of the one run block whose code contains ``containing``."""
        assert self.proc.returncode == 0, "the walk-through stopped: see test_every_block_runs"
        found = [b for b in self.blocks if containing in b.code]
        assert len(found) == 1, f"{len(found)} README blocks contain {containing!r}"
        chunks = self.proc.stdout.split(MARK)
        by_line = {c.split("\n", 1)[0]: c.split("\n", 1)[1] if "\n" in c else "" for c in chunks[1:]}
        return by_line[str(found[0].line)]


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> Walk:
    base = tmp_path_factory.mktemp("readme")
    cwd = base / "checkout"
    cwd.mkdir()
    for entry in ROOT.iterdir():  # the repository as the README sees it; what it writes stays here
        if entry.name not in (".git", "data"):
            (cwd / entry.name).symlink_to(entry)
    data = base / "data"
    server = ServerProcess(data)
    try:
        run = [b for b in blocks(README.read_text()) if b.not_run is None]
        t0 = time.monotonic()
        proc = _bash(script(run, server.port), cwd, data)
        seconds = time.monotonic() - t0
    finally:
        server.stop()
    return Walk(run, proc, cwd, seconds)


def _bash(text: str, cwd: Path, data: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUSHLAKE_")}  # the README's defaults
    return subprocess.run(["bash", "-c", text], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**env, "PUSHLAKE_DATA": str(data)})


def _json_at(out: str, prefix: str, last: bool = False):
    """The JSON value that starts at the first (or last) ``prefix`` in ``out`` (curl adds no newline)."""
    return json.JSONDecoder().raw_decode(out, out.rindex(prefix) if last else out.index(prefix))[0]


def _table_ids(out: str) -> list[str]:
    """The trip ids that begin the rows of ``pushlake sql``'s table output."""
    return re.findall(r"^\s*([0-9a-f]{24}) +\|", out, re.M)


def _rows(result: dict) -> list[list]:
    """A /v1/query JSON result's rows, as lists of values in column order."""
    names = [c["name"] for c in result["columns"]]
    return [[r[n] for n in names] if isinstance(r, dict) else r for r in result["rows"]]


def test_every_block_runs(walk):
    """``set -e`` and ``curl -f``: any command that fails, any HTTP status >= 400, stops the walk."""
    p = walk.proc
    assert p.returncode == 0 and p.stdout.rstrip().endswith(f"{MARK}end"), (
        f"exit {p.returncode} after block {p.stdout.rsplit(MARK, 1)[-1].splitlines()[0]}\n"
        f"--- stdout\n{p.stdout[-4000:]}\n--- stderr\n{p.stderr[-4000:]}")
    assert walk.seconds < 60, f"the walk-through took {walk.seconds:.1f} s"


def test_pushes_are_stored(walk):
    out = walk.out("trip_small.json")
    assert re.findall(r'\{"status":"OK","partition":"p0","offset":(\d+)\}', out) == ["0", "1", "2", "3", "4"]
    health = _json_at(out, '{"status":"ok"')
    assert (health["status"], health["nextOffset"], health["records"]) == ("ok", 5, 5)


def test_queries_show_both_trips_then_the_deletion_hides_one(walk):
    before = walk.out("ORDER BY start_date")
    assert _table_ids(before) == [TRIP_DELETED, TRIP_KEPT]  # 2025-01-20, then 2025-03-30
    samples = list(csv.reader(before[before.index("itin_id,seq,ts,speed_kmh"):].splitlines()[:4]))
    assert [(r[0], r[1]) for r in samples] == [("itin_id", "seq")] + [(TRIP_DELETED, str(n)) for n in range(3)]
    assert "scores_per_driver_month" in before
    monthly = _json_at(before, "[\n")
    assert [(r["user_id"], str(r["month"]), r["trips"]) for r in monthly] == [
        ("driver-011381", "2025-01-01", 1), ("driver-020769", "2025-03-01", 1)]

    after = walk.out("deletion.json")
    assert after.startswith('{"status":"OK","partition":"p0","offset":5}')
    assert _table_ids(after) == [TRIP_KEPT]


def test_export_and_python(walk):
    march = pq.read_table(walk.cwd / "march.parquet")
    assert march.column("itin_id").to_pylist() == [TRIP_KEPT]
    assert walk.out("queries.connect").strip() == f"[('{TRIP_KEPT}', 27165.4)]"


def test_administration(walk):
    out = walk.out("enterprise/push/trips/report")
    token = _json_at(out, '{"access_token"')
    assert token["access_token"].startswith("at_") and token["token_type"] == "Bearer"
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()  # the walk ran within seconds of this
    report = _json_at(out, '{"startDate"')
    assert report == {"startDate": today, "endDate": today, "items": [
        {"date": today, "teamId": "acme", "received": 3, "stored": 2, "duplicates": 1, "failed": 0, "deleted": 1,
         "discarded": 0}]}
    task = _json_at(out, '{"taskId"', last=True)
    assert (task["status"], task["nbItems"], task["nbRemainingItems"], task["type"]) == (
        "COMPLETED", 0, 0, "PUSH_FAILED_TRIPS")
    assert '"userId":"jane@example.com"' in out and '"status":"DISABLED"' in out
    assert out.rstrip().endswith("403")  # the disabled team's push key is refused at once


def test_reads_over_http(walk):
    out = walk.out("v1/export/trip_samples")
    result, end = json.JSONDecoder().raw_decode(out, out.index('{"columns"'))
    assert (_rows(result), result["rowCount"]) == ([["driver-020769", 6.3]], 1)
    crash = fixture("crash.json")  # the CSV answer follows the JSON one
    assert list(csv.reader(out[end:].splitlines()[:2])) == [["crash_id", "user_id"], [crash["crashId"], crash["userId"]]]
    samples = pq.read_table(walk.cwd / "samples.parquet")
    assert samples.num_rows == len(fixture("trip_33min.json")["route"]["gpsDate"]) == 1996
    assert set(samples.column("itin_id").to_pylist()) == {TRIP_KEPT}
    every_team = _json_at(out, '{"columns"', last=True)
    assert _rows(every_team) == [["acme", 1]]  # fleet-1 pushed nothing


def test_not_run_blocks_say_why():
    """Few blocks are left out, each with its reason; the ones that run include Python."""
    all_blocks = blocks(README.read_text())
    left_out = [b for b in all_blocks if b.not_run is not None]
    assert all(b.not_run for b in left_out), "a <!-- not run: --> mark without a reason"
    assert len(left_out) <= 3, [b.line for b in left_out]
    assert [b.lang for b in all_blocks if b.not_run is None].count("python") >= 1
    assert sum(ADDRESS in b.code for b in all_blocks if b.not_run is None) >= 1


def test_the_walk_stops_at_a_failing_block(tmp_path):
    """The harness can fail: a block marked not run is left out, and a command that fails (here a
    curl -f answered 404) stops the walk before the next block."""
    text = "\n".join([
        "<!-- not run: would stop everything -->", "```sh", "exit 3", "```", "",
        "```python", "print('python ran')", "```",
        "```sh", "curl -fsS http://127.0.0.1:8080/no-such-path", "echo same block", "```",
        "```sh", "echo next block", "```"])
    found = blocks(text)
    assert [(b.lang, b.line, b.not_run) for b in found] == [
        ("sh", 2, "would stop everything"), ("python", 6, None), ("sh", 9, None), ("sh", 13, None)]
    server = ServerProcess(tmp_path / "data")
    try:
        p = _bash(script([b for b in found if b.not_run is None], server.port), ROOT, tmp_path / "data")
    finally:
        server.stop()
    assert p.returncode == 22  # curl's code for an HTTP error
    assert p.stdout == f"{MARK}6\npython ran\n{MARK}9\n" and "404" in p.stderr


def test_docs_stand_alone():
    """No page of the project cites a document the repository does not hold, and ``/docs`` shows
    every request body example of the OpenAPI document."""
    from pushlake.api import openapi
    doc = openapi.document()
    page = openapi.render_html(doc)
    for name, text in [("README.md", README.read_text()), ("/docs", page), ("/openapi.json", json.dumps(doc)),
                       *((f"docs/{p.name}", p.read_text()) for p in sorted((ROOT / "docs").glob("*.md")))]:
        assert not re.search(r"\bSPEC\b", text), f"{name} cites SPEC"
    examples = [(media, m["example"]) for item in doc["paths"].values() for o in item.values()
                for media, m in o.get("requestBody", {}).get("content", {}).items() if "example" in m]
    assert len(examples) >= 9
    for media, example in examples:
        assert f'<pre class="example">{html.escape(openapi._example(media, example))}</pre>' in page
    assert '<pre class="example">grant_type=client_credentials</pre>' in page


# -- the command table --------------------------------------------------------------------------------
COMMON = {"-h", "--help", "--data", "--catalog", "--lake"}


def _subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next((a.choices for a in p._actions if isinstance(a, argparse._SubParsersAction)), {})


def _cli() -> dict[str, argparse.ArgumentParser]:
    """``serve``, ``sql``... and ``teams create``, ``teams list``...: each with its parser."""
    from pushlake.cli import build_parser
    out = {}
    for name, p in _subcommands(build_parser()).items():
        subs = _subcommands(p)
        out.update({f"{name} {s}": q for s, q in subs.items()} if subs else {name: p})
    return out


def _table() -> dict[str, tuple[str, str]]:
    """The README's command table: each command (``teams create|enable|disable`` gives three) with
    its command cell and options cell, ``\\|`` unescaped."""
    text = README.read_text()
    section = text[text.index("\n## Commands"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 3 or not cells[0].startswith("`pushlake "):
            continue
        words = cells[0].strip("`").split()[1:]
        names = [words[0]] if words[0] != "teams" else [f"teams {a}" for a in words[1].split("|")]
        for n in names:
            assert n not in rows, f"{n} twice in the command table"
            rows[n] = (cells[0], cells[1])
    return rows


def test_command_table_lists_every_command_and_option():
    cli, table = _cli(), _table()
    assert sorted(table) == sorted(cli), "commands in the README table differ from `pushlake --help`"
    for name, p in cli.items():
        command, options = table[name]
        listed = re.findall(r"`(--[a-z][a-z-]*)(?: ([^`]+))?`", options)
        assert len(listed) == len(re.findall(r"`[^`]+`", options)), f"{name}: an options cell entry is not `--opt`"
        want = {s: a for a in p._actions for s in a.option_strings if s.startswith("--") and s not in COMMON}
        shown = [o for o, _ in listed]
        assert len(set(shown)) == len(shown), f"{name}: an option twice in the README"
        assert set(want) - set(shown) == set(), f"{name}: options missing from the README's command table"
        assert set(shown) - set(want) == set(), f"{name}: the README's command table lists options it does not take"
        for opt, value in listed:
            a = want[opt]
            if a.choices:
                assert value == "|".join(a.choices), f"{name} {opt}: README says {value!r}, choices {a.choices}"
            elif a.nargs == 0:
                assert not value, f"{name} {opt} takes no value"
            else:
                assert value, f"{name} {opt} takes a value: name it"
        for a in p._actions:  # positionals: their choices, or their name, in the command cell
            if a.option_strings or isinstance(a, argparse._SubParsersAction):
                continue
            arg = "|".join(a.choices) if a.choices else (a.metavar or a.dest).upper()
            assert arg in command, f"{name}: {arg} missing from {command}"


def test_operating_it(walk):
    """The metrics name acme's pushes as the README pushed them; the status page opens with the
    enterprise login; /health shows the compactor caught up."""
    out = walk.out("/metrics")
    ok = {kind: float(n) for kind, n in re.findall(
        r'^pushlake_pushes_total\{code="ok",kind="(\w+)",status="200",team="acme"\} (\S+)$', out, re.M)}
    assert ok == {"trip": 3.0, "event": 1.0, "crash": 1.0, "diagnosis": 1.0}
    assert re.search(r"^200$", out, re.M)  # GET /status with -u enterprise:$EK
    health = _json_at(out, '{"status":"ok"', last=True)
    assert health["compactor"]["lagRecords"] == 0


def test_sql_from_a_pipe_and_read_only(walk):
    out = walk.out("| .venv/bin/pushlake sql")
    assert re.search(r"trips\s*\n-+\s*\n\s*1\s*\n\(1 row\)", out), out
    assert re.search(r"crashes\s*\n-+\s*\n\s*1\s*\n\(1 row\)", out), out
    assert "refused: exit 2" in out
