"""``pushlake sql``'s statements: run in order on a lake connection, from an argument, a pipe or an
interactive shell (history, statements over several lines, dot commands).

Only queries run: each statement is checked before any runs (``queries.connection.check_read_only``,
the guard a team's connection applies itself), and one that would write (CREATE, INSERT, COPY,
ATTACH, SET...) is answered with one "read-only" line. Statements are found by DuckDB's own
parser (``extract_statements``), and a line ends a statement when DuckDB's tokenizer sees a final
``;`` outside strings and comments.

The shell's history is kept in ``~/.pushlake_history`` (``$PUSHLAKE_HISTORY``; empty: none), one
JSON string per entry, so that a statement of several lines comes back whole. The file is opened
before a team's shell gives up writing files (Landlock) and written to as each entry is entered.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import IO

import duckdb
import orjson

from queries.connection import check_read_only

from .output import TABLE_MAX_ROWS, row_count, write_csv, write_json, write_table

FORMATS = ("table", "csv", "json")
HISTORY_ENV = "PUSHLAKE_HISTORY"
HISTORY_KEEP = 1000  # entries kept in the history file
PROMPT, MORE = "pushlake> ", "     ...> "

HELP = """\
Statements end with ';' and may span lines; only queries run (the lake's views are read-only).
  .tables                 the lake's tables (views)
  .schema [TABLE]         a table's columns (every table's without TABLE)
  .mode [table|csv|json]  how results are shown
  .maxrows [N]            rows shown of each result (0: all)
  .help                   this text
  .quit                   leave (or Ctrl-D)
"""


class SqlError(Exception):
    """A statement or command that failed: its message, to show as it is (the shell) or as its
    first line (a script, which stops there)."""

    @property
    def line(self) -> str:
        text = str(self).strip()
        return text.splitlines()[0] if text else type(self).__name__


class ReadOnly(SqlError):
    pass


def statement_complete(text: str) -> bool:
    """Whether ``text`` ends a statement: its last token that is not a comment is a ``;`` (so a
    ``;`` inside a string, a quoted name or a comment does not)."""
    try:
        tokens = duckdb.tokenize(text)
    except duckdb.Error:
        return True  # let the parser say what is wrong
    ends = [off for off, _ in tokens[1:]] + [len(text)]
    code = [(off, end, kind) for (off, kind), end in zip(tokens, ends) if kind != duckdb.token_type.comment]
    if not code:
        return False
    off, end, kind = code[-1]
    return kind == duckdb.token_type.operator and text[off:end].strip().endswith(";")


def has_code(text: str) -> bool:
    """Whether ``text`` holds anything but blanks and comments."""
    try:
        return any(kind != duckdb.token_type.comment for _, kind in duckdb.tokenize(text))
    except duckdb.Error:
        return bool(text.strip())


def _gist(sql: str, width: int = 40) -> str:
    """A statement's beginning on one line, for messages."""
    try:
        start = next((off for off, kind in duckdb.tokenize(sql) if kind != duckdb.token_type.comment), 0)
    except duckdb.Error:
        start = 0
    text = " ".join(sql[start:].split()).rstrip(";").rstrip()
    return text if len(text) <= width else text[:width].rstrip() + " …"


def refuse_writes(con, st) -> None:
    """Raise ReadOnly unless ``st`` (one parsed statement) only reads."""
    try:
        check_read_only(con, st.query)
    except PermissionError:
        if st.type == duckdb.StatementType.EXPLAIN:
            raise ReadOnly(f"read-only: only queries and a plain EXPLAIN of one run here ({_gist(st.query)})") from None
        raise ReadOnly(f"read-only: the lake's views cannot be changed ({_gist(st.query)})") from None


def _count_rest(cur) -> int:
    """Rows left in a result, counted in Arrow batches (not turned into Python values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "an extra copy": it is only counted
        reader = cur.to_arrow_reader(1 << 16) if hasattr(cur, "to_arrow_reader") else cur.fetch_record_batch(1 << 16)
        return sum(b.num_rows for b in reader)


class Session:
    """Statements and dot commands on one connection, their results written to ``out`` in the
    current format. ``max_rows`` None: the format's default (``TABLE_MAX_ROWS`` for a table,
    every row for CSV and JSON); 0: every row."""

    def __init__(self, con, fmt: str = "table", max_rows: int | None = None, out: IO[str] | None = None,
                 err: IO[str] | None = None, hint: str = "--max-rows 0"):
        self.con = con
        self.fmt = fmt
        self.max_rows = max_rows
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.hint = hint
        self.results = 0

    def limit(self) -> int:
        if self.max_rows is not None:
            return self.max_rows
        return TABLE_MAX_ROWS if self.fmt == "table" else 0

    def run(self, text: str) -> None:
        """Every statement of ``text`` in order; none runs if one of them would write or if the
        text does not parse."""
        try:
            stmts = self.con.extract_statements(text)
        except duckdb.Error as e:
            raise SqlError(str(e)) from None
        for st in stmts:
            refuse_writes(self.con, st)
        for st in stmts:
            self._one(st.query)

    def _one(self, sql: str) -> None:
        limit = self.limit()
        try:
            cur = self.con.execute(sql)
            if cur.description is None:
                return
            cols = [d[0] for d in cur.description]
            rows = cur.fetchmany(limit) if limit else cur.fetchall()
            more = _count_rest(cur) if limit and len(rows) == limit else 0
        except PermissionError as e:  # a team connection's own guard
            raise ReadOnly(f"read-only: {e}") from None
        except (duckdb.Error, RuntimeError) as e:  # RuntimeError: "Query interrupted" (Ctrl-C)
            raise SqlError(str(e)) from None
        self.show(cols, rows, more)

    def show(self, cols: list[str], rows: list, more: int = 0) -> None:
        if self.results and self.fmt != "json":
            self.out.write("\n")  # results of several statements apart
        self.results += 1
        if self.fmt == "table":
            write_table(self.out, cols, rows, more, self.hint)
        else:
            (write_csv if self.fmt == "csv" else write_json)(self.out, cols, rows)
            if more:
                self.out.flush()
                self.err.write(row_count(len(rows), more, self.hint) + "\n")
        self.out.flush()

    # -- dot commands --------------------------------------------------------------------------

    def tables(self) -> list[str]:
        return [r[0] for r in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' ORDER BY 1").fetchall()]

    def columns(self, table: str) -> list[tuple[str, str]]:
        quoted = '"' + table.replace('"', '""') + '"'
        return [(r[0], r[1]) for r in self.con.execute(f"DESCRIBE {quoted}").fetchall()]

    def dot(self, line: str) -> bool:
        """Run a dot command; False for ``.quit``."""
        try:
            return self._dot(line)
        except (duckdb.Error, RuntimeError) as e:
            raise SqlError(str(e)) from None

    def _dot(self, line: str) -> bool:
        word, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        if word in (".quit", ".exit", ".q"):
            return False
        if word == ".help":
            self.out.write(HELP)
        elif word == ".tables":
            self.out.write("".join(t + "\n" for t in self.tables()))
        elif word == ".schema":
            names = self.tables()
            if arg and arg not in names:
                raise SqlError(f"no table '{arg}' (.tables lists them)")
            if arg:
                self.show(["column", "type"], self.columns(arg))
            else:
                for t in names:
                    self.out.write(f"{t}({', '.join(f'{c} {ty}' for c, ty in self.columns(t))})\n")
        elif word == ".mode":
            if not arg:
                self.out.write(self.fmt + "\n")
            elif arg in FORMATS:
                self.fmt = arg
            else:
                raise SqlError(f"unknown mode '{arg}' (one of: {', '.join(FORMATS)})")
        elif word == ".maxrows":
            if not arg:
                self.out.write(f"{self.limit() or 'all'}\n")
            elif arg.isdigit():
                self.max_rows = int(arg)
            else:
                raise SqlError(f".maxrows takes a number of rows (0: all), not '{arg}'")
        else:
            raise SqlError(f"unknown command {word} (.help lists them)")
        self.out.flush()
        return True


class Lines:
    """Lines in; complete statements and dot commands out: what the shell and a script share. A
    dot command is a line that starts with '.' where a statement would begin."""

    def __init__(self):
        self.buf: list[str] = []

    def push(self, line: str) -> tuple[str, str] | None:
        """("dot", line) or ("sql", text) once one is complete, else None."""
        if not self.buf and line.strip().startswith("."):
            return "dot", line.strip()
        if not self.buf and not line.strip():
            return None
        self.buf.append(line)
        text = "\n".join(self.buf)
        if statement_complete(text):
            self.buf = []
            return "sql", text
        return None

    def rest(self) -> str | None:
        """What is left once the input ends (a last statement without its ';'), if anything."""
        text = "\n".join(self.buf)
        self.buf = []
        return text if has_code(text) else None


def run_script(session: Session, text: str) -> None:
    """Statements and dot commands of ``text`` in order, stopping at the first error (SqlError)."""
    lines = Lines()
    for line in text.splitlines():
        item = lines.push(line)
        if item is None:
            continue
        kind, body = item
        if kind == "dot":
            if not session.dot(body):
                return
        else:
            session.run(body)
    rest = lines.rest()
    if rest is not None:
        session.run(rest)


# -- the interactive shell ---------------------------------------------------------------------

def history_path() -> Path | None:
    v = os.environ.get(HISTORY_ENV)
    if v is not None:
        return Path(v).expanduser() if v else None
    return Path.home() / ".pushlake_history"


class History:
    """The shell's history file: read, trimmed to ``HISTORY_KEEP`` entries, and kept open for
    appending. A file that cannot be used leaves the shell without history (``problem`` says why)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: list[str] = []
        self.problem: str | None = None
        self._fd: int | None = None
        if path is None:
            return
        try:
            if path.exists():
                self.entries = [_entry(ln) for ln in path.read_bytes().splitlines() if ln.strip()]
                if len(self.entries) > HISTORY_KEEP:
                    self.entries = self.entries[-HISTORY_KEEP:]
                    tmp = path.with_name(path.name + ".tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(b"".join(orjson.dumps(e) + b"\n" for e in self.entries))
                    os.replace(tmp, path)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            self.problem = f"no history kept ({path}: {e.strerror or e})"

    def add(self, entry: str) -> None:
        if self.entries and self.entries[-1] == entry:
            return
        self.entries.append(entry)
        if self._fd is not None:
            try:
                os.write(self._fd, orjson.dumps(entry) + b"\n")
            except OSError:
                pass  # a full disk costs the history, not the session

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _entry(raw: bytes) -> str:
    try:
        v = orjson.loads(raw)
        if isinstance(v, str):
            return v
    except orjson.JSONDecodeError:
        pass
    return raw.decode("utf-8", "replace")  # a line written by hand


def load_readline():
    """The readline module (line editing, history keys), or None where Python has none. Imported
    before a sandbox starts: it reads its settings once."""
    try:
        import readline
    except ImportError:
        return None
    return readline


def shell(session: Session, history: History, banner: str) -> int:
    """The interactive loop: prompts, statements over several lines, dot commands; an error is
    shown and the shell goes on. Ctrl-C drops the statement being typed (or stops a running one),
    Ctrl-D leaves."""
    rl = load_readline()
    if rl is not None:
        rl.set_auto_history(False)
        rl.clear_history()
        for e in history.entries:
            rl.add_history(e)
    session.hint = ".maxrows 0"
    session.out.write(banner + "\n")
    if history.problem:
        session.err.write(history.problem + "\n")
    lines = Lines()
    while True:
        try:
            text = input(MORE if lines.buf else PROMPT)
        except EOFError:
            session.out.write("\n")
            return 0
        except KeyboardInterrupt:
            session.out.write("^C\n")
            lines.buf = []
            continue
        try:
            if not _enter(session, history, rl, lines, text):
                return 0
        except KeyboardInterrupt:  # Ctrl-C while a statement ran, or at any moment between
            session.out.flush()
            session.err.write("interrupted\n")
            lines.buf = []


def _enter(session: Session, history: History, rl, lines: Lines, text: str) -> bool:
    """What one Enter gives: run what it completes; False for ``.quit``."""
    for line in text.split("\n"):  # an entry from the history may hold several lines
        item = lines.push(line)
        if item is None:
            continue
        kind, body = item
        session.results = 0  # the prompt sets results apart
        history.add(body)
        if rl is not None:
            rl.add_history(body)
        try:
            if kind == "dot":
                if not session.dot(body):
                    return False
            else:
                session.run(body)
        except SqlError as e:
            session.out.flush()
            session.err.write(str(e).rstrip() + "\n")
            session.err.flush()
    return True
