"""The ``pushlake`` command line. Errors are one line on stderr and a non-zero exit code."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .config import Settings, enterprise_key
from .output import TABLE_MAX_ROWS, json_text, plural, write_table

QUERIES_DIR = Path(__file__).resolve().parent.parent / "queries" / "sql"  # queries/sql/*.sql ships as package data


class CliError(Exception):
    pass


def _data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=Path(os.environ.get("PUSHLAKE_DATA", "data")),
                   help="data directory (default ./data or $PUSHLAKE_DATA)")


def _location(p: argparse.ArgumentParser, node: bool = False, default=None) -> None:
    """Where the deployment's shared parts are (``pushlake.location``): on every command, so that
    a reader machine, a node and an administrator's laptop all name them the same way."""
    p.add_argument("--catalog", metavar="URL", default=default,
                   help="the catalog and shared stores: postgresql://user@host:port/db "
                        "(default $PUSHLAKE_CATALOG, else SQLite files in --data)")
    p.add_argument("--lake", metavar="URL", default=default,
                   help="the lake's Parquet files: s3://bucket/prefix (default $PUSHLAKE_LAKE, else under --data)")
    if node:
        p.add_argument("--node", metavar="NAME", default=default,
                       help="this node's name, in its log partitions' names <node>.pN (default $PUSHLAKE_NODE, "
                            "else the host name with a PostgreSQL catalog, none with the embedded one)")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("pushlake")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


def _print_json(obj) -> None:
    sys.stdout.write(json_text(obj))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pushlake", description="Data lake for telematics push data.")
    ap.add_argument("--version", action="version", version=f"pushlake {_version()}",
                    help="print pushlake's version and exit")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="receive pushes and compact them continuously")
    _data(p)
    _location(p, node=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--workers", type=int, default=1, help="receiver processes (SO_REUSEPORT), one log partition each")
    p.add_argument("--retention", type=float, default=7.0, metavar="DAYS",
                   help="keep replaced files and deleted trips' log records this long (default 7, 0 allowed)")
    p.add_argument("--max-body", type=int, default=32 << 20, metavar="BYTES", help="request size limit (413 above)")
    p.add_argument("--min-free", type=int, default=256 << 20, metavar="BYTES",
                   help="answer 503 when free disk falls below this")
    p.add_argument("--segment-bytes", type=int, default=128 << 20, help="seal a log segment at this size")
    p.add_argument("--segment-age", type=float, default=600.0, metavar="SECONDS", help="seal a log segment at this age")
    p.add_argument("--no-compactor", action="store_true", help="receive only (run `pushlake compact` yourself)")
    p.add_argument("--iceberg-interval", type=float, default=5.0, metavar="SECONDS",
                   help="sync the Iceberg mirror this often (default 5; 0: no mirror)")
    p.add_argument("--maintenance-interval", type=float, default=30.0, metavar="SECONDS",
                   help="run vacuum and the log cleaner this often (default 30)")
    p.add_argument("--max-lag", type=float, default=300.0, metavar="SECONDS",
                   help="/health turns degraded when a push waits longer than this to be projected (default 300)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="one line per event on stderr: text, or a JSON object per line (default text)")
    p.add_argument("--access-log", action="store_true",
                   help="also log every request: method, path, status, size, duration (no credentials)")

    p = sub.add_parser("compact", help="project the log into the lake now, then merge, vacuum and clean")
    _data(p)
    _location(p, node=True)
    p.add_argument("--retention", type=float, default=7.0, metavar="DAYS",
                   help="keep replaced files and deleted trips' log records this long (default 7, 0 allowed)")
    p.add_argument("--no-maintenance", action="store_true", help="only project new records")
    _json_flag(p)

    p = sub.add_parser("sql", help="run SQL on the lake's views (no statement: an interactive shell)",
                       description="Run read-only SQL on the lake's views: the statements given, those piped on "
                                   "stdin, or an interactive shell when there are none and stdin is a terminal.")
    _data(p)
    _location(p)
    p.add_argument("--team", help="confine the statements to one team's data (in a process that cannot write)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="how results are printed (default table)")
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    p.add_argument("--max-rows", type=int, metavar="N",
                   help=f"rows printed of each result, then '(N more rows)' (default {TABLE_MAX_ROWS} for a table, "
                        "all for csv and json; 0: all)")
    p.add_argument("--query", metavar="NAME", help="run a named query from queries/sql/ (--list to see them)")
    p.add_argument("--list", action="store_true", help="list the named queries")
    p.add_argument("sql", nargs="?", help="SQL statements, run in order ('-' or none with piped stdin: read stdin)")

    p = sub.add_parser("export", help="export a table to parquet, csv or jsonl")
    _data(p)
    _location(p)
    p.add_argument("table", help="the table (view) to export, e.g. trips")
    p.add_argument("--team", help="only this team's rows")
    p.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="first date included")
    p.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="last date included")
    p.add_argument("--format", choices=("parquet", "csv", "jsonl"),
                   help="default: from --out's extension (.parquet, .csv, .jsonl); csv for --out -")
    p.add_argument("--out", required=True, metavar="PATH", help="file to write (atomically), or - for stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar (shown only on a terminal)")

    p = sub.add_parser("rebuild", help="project the whole log into a fresh lake")
    _data(p)
    _location(p)
    p.add_argument("--into", type=Path, help="build into this new directory instead of replacing the lake")
    _json_flag(p)

    p = sub.add_parser("erase", help="prove (or force) the physical erasure of a deleted trip")
    _data(p)
    _location(p)
    p.add_argument("itin_id", help="the deleted trip's itinId")
    p.add_argument("--team", help="the trip's team (default: every team)")
    p.add_argument("--verify", action="store_true", help="verify only (what erase does without --now)")
    p.add_argument("--now", action="store_true",
                   help="erase now: compact, then vacuum and clean the log with retention 0, then verify")
    _json_flag(p)

    p = sub.add_parser("iceberg", help="the Iceberg mirror of the lake: its catalog, its state, a rebuild")
    _data(p)
    _location(p)
    p.add_argument("--json", action="store_true",
                   help="print only the pyiceberg catalog properties, as JSON: load_catalog('pushlake', **props)")
    p.add_argument("--rebuild", action="store_true",
                   help="drop the Iceberg tables and their metadata, and mirror the catalog's live files afresh")

    p = sub.add_parser("teams", help="create, list, enable and disable teams")
    _data(p)
    _location(p)
    tsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, help_ in (("create", "create a team and print its keys"), ("enable", "enable a team (new keys)"),
                        ("disable", "disable a team (its keys stop working at once)")):
        q = tsub.add_parser(name, help=help_)
        q.add_argument("team", help="the team's id (teamId)")
        _json_flag(q)
        q.add_argument("--data", type=Path, default=argparse.SUPPRESS, help="data directory")
        _location(q, default=argparse.SUPPRESS)
    q = tsub.add_parser("list", help="list teams")
    _json_flag(q)
    q.add_argument("--data", type=Path, default=argparse.SUPPRESS, help="data directory")
    _location(q, default=argparse.SUPPRESS)

    p = sub.add_parser("check", help="verify log CRCs and that the catalog and files agree")
    _data(p)
    _location(p)
    _json_flag(p)

    p = sub.add_parser("failed", help="FAILED items: pushes stored in the log that could not be projected")
    _data(p)
    _location(p)
    p.add_argument("action", choices=("list", "retry"),
                   help="list: the FAILED items with their reasons; retry: re-project them as a task")
    p.add_argument("--kind", choices=tuple(FAILED_KINDS),
                   help="list: only this kind (default every kind); retry: what to retry (default trips)")
    _json_flag(p)

    p = sub.add_parser("nodes", help="the nodes of a cluster: their leases and log cleaning; retire a node")
    _data(p)
    _location(p)
    p.add_argument("action", choices=("list", "remove"), help="list the nodes, or remove one that was drained")
    p.add_argument("name", nargs="?", help="the node to remove")
    _json_flag(p)
    return ap


# Everything pushlake creates in a data directory holds every team's data (the log, catalog.db,
# admin.db, Parquet files...): owner only. Set once here, the mask is inherited by the processes
# `serve` spawns and by the compactor's forkserver workers.
UMASK = 0o077


def main(argv: list[str] | None = None) -> int:
    os.umask(UMASK)
    args = build_parser().parse_args(argv)
    try:
        use_location(args)
        return COMMANDS[args.cmd](args) or 0
    except CliError as e:
        print(f"pushlake {args.cmd}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader of stdout left (`| head`): stop quietly, as a killed pipe would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 141
    except Exception as e:  # one clear line, not a traceback
        if os.environ.get("PUSHLAKE_DEBUG"):
            raise
        print(f"pushlake {args.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def use_location(a) -> None:
    """Check ``--catalog``, ``--lake`` and ``--node`` (or the variables they default to), then
    make them this process's environment, before anything is opened or any child started."""
    from pushlake import location
    from pushlake.db import check_url
    catalog = location.catalog_url(getattr(a, "catalog", None))
    lake = location.lake_url(getattr(a, "lake", None))
    if catalog is not None:
        try:
            check_url(catalog)
        except ValueError as e:
            raise CliError(f"--catalog: {e}") from None
    if lake is not None:
        from lake.storage import parse_s3_url
        try:
            parse_s3_url(lake)
        except ValueError as e:
            raise CliError(f"--lake: {e}") from None
    location.export(getattr(a, "catalog", None), getattr(a, "lake", None), getattr(a, "node", None))
    if hasattr(a, "node"):
        try:
            a.node = location.node_name()
        except ValueError as e:
            raise CliError(f"--node: {e}") from None


def require_catalog(data: Path, table: str = "meta", what: str = "catalog") -> None:
    """A read command's catalog must exist (the catalog, or with ``table="teams"`` the teams'
    store): the SQLite file in ``data``, or on PostgreSQL its tables. Nothing is created: a
    reader given the wrong directory or no ``--catalog`` is told where it looked."""
    from pushlake import location
    from pushlake.db import open_db, redact
    url = location.catalog_url()
    if url is None:
        path = data / ("admin.db" if table == "teams" else "catalog.db")
        hint = "a reader of a shared deployment needs --catalog postgresql://… or $PUSHLAKE_CATALOG"
        if not data.is_dir():
            raise CliError(f"no data directory at {data} ({hint})")
        if not path.exists():
            raise CliError(f"no {what} at {path} ({hint})")
        return
    try:
        db = open_db(url, readonly=True)
    except Exception as e:  # noqa: BLE001 - psycopg's errors name the host, never the password
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CliError(f"cannot reach the catalog {redact(url)}: {first}") from None
    try:
        found = db.execute("SELECT to_regclass(?) IS NOT NULL", (table,)).fetchone()[0]
    finally:
        db.close()
    if not found:
        raise CliError(f"no {what} in {redact(url)} (no pushlake tables there: wrong database?)")


def require_data_dir(data: Path) -> None:
    """A command that works on this machine's data directory (its log) needs it to exist."""
    if not data.is_dir():
        raise CliError(f"no data directory at {data}")


def require_team(data: Path, team: str) -> None:
    """``--team`` must name a team, as the HTTP API's ``teamId`` (404 there): one in the teams'
    store, or one the catalog holds data of (a lake rebuilt from a log has no teams' store). A
    misspelt team is an error, not an empty result. Only reads: nothing is created."""
    from pushlake import location
    from pushlake.db import open_db
    from lake.catalog import Catalog
    url = location.catalog_url()
    admin = url or (data / "admin.db")
    if url is not None or admin.exists():
        db = open_db(admin, readonly=True)
        try:
            there = url is None or db.execute("SELECT to_regclass('teams') IS NOT NULL").fetchone()[0]
            if there and db.execute("SELECT 1 FROM teams WHERE team_id = ?", (team,)).fetchone():
                return
        finally:
            db.close()
    cat = Catalog(data, readonly=True)
    try:
        if cat.db.execute("SELECT 1 FROM push_stats WHERE team = ? UNION ALL "
                          "SELECT 1 FROM files WHERE team = ? LIMIT 1", (team, team)).fetchone():
            return
    finally:
        cat.close()
    raise CliError(f"unknown team '{team}' (pushlake teams list shows the teams)")


def cmd_serve(a) -> int:
    from .serve import serve, setup_logging
    if a.workers < 1:
        raise CliError("--workers must be at least 1")
    if a.retention < 0:
        raise CliError("--retention must be >= 0")
    if a.iceberg_interval < 0:
        raise CliError("--iceberg-interval must be >= 0")
    if a.maintenance_interval <= 0:
        raise CliError("--maintenance-interval must be > 0")
    if a.max_lag <= 0:
        raise CliError("--max-lag must be > 0")
    setup_logging(a.log_format)
    private_data_dir(a.data)
    from pushlake import location
    from pushlake.db import redact
    catalog, lake = location.catalog_url(), location.lake_url()
    print(f"Node: {a.node or '(none: partitions p0, p1…)'}; catalog: "
          f"{redact(catalog) if catalog else a.data / 'catalog.db'}; lake: {lake or a.data / 'lake'}", file=sys.stderr)
    key, created = enterprise_key(a.data)
    where = "$PUSHLAKE_ENTERPRISE_KEY" if os.environ.get("PUSHLAKE_ENTERPRISE_KEY") else a.data / "enterprise.key"
    base = f"http://{a.host}:{a.port}"
    print(("Created the enterprise API key in " if created else "Enterprise API key: ") + f"{where}"
          + (" (mode 0600)." if created else "."), file=sys.stderr)
    print(f"Create a team:  curl -H \"x-dq-enterprise-api-key: $(cat {where})\" -H 'Content-Type: application/json' "
          f"-d '{{\"teamId\":\"my-team\"}}' {base}/v1/enterprise/team", file=sys.stderr)
    print(f"  (or locally:  .venv/bin/pushlake teams create my-team --data {a.data})", file=sys.stderr)
    print(f"Push a trip:    curl -H 'Authorization: Bearer <pushApiKey>' -H 'Content-Type: application/json' "
          f"--data @trip.json {base}/push/trip", file=sys.stderr)
    print(f"API reference:  {base}/docs", file=sys.stderr)
    serve(Settings(data_dir=a.data, host=a.host, port=a.port, workers=a.workers, retention_days=a.retention,
                   max_body_bytes=a.max_body, min_free_bytes=a.min_free, segment_bytes=a.segment_bytes,
                   segment_age_s=a.segment_age, compactor=not a.no_compactor,
                   iceberg_interval_s=a.iceberg_interval, maintenance_interval_s=a.maintenance_interval,
                   node=a.node, log_format=a.log_format, access_log=a.access_log, health_max_lag_s=a.max_lag))
    return 0


def private_data_dir(path: Path) -> None:
    """Create the data directory 0700, or tighten an existing one (an older pushlake made it
    0755): nothing in it is then reachable by other users, whatever the modes of older files."""
    import logging
    import stat
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log = logging.getLogger("pushlake.serve")
        try:
            os.chmod(path, 0o700)
        except OSError as e:
            log.warning("data directory %s is %04o and could not be made 0700 (%s): other users may read it",
                        path, mode, e)
        else:
            log.warning("data directory %s was %04o: made it 0700 (it holds every team's data)", path, mode)


def cmd_compact(a) -> int:
    from lake.compactor import Compactor, CompactorBusy
    if a.retention < 0:
        raise CliError("--retention must be >= 0")
    require_data_dir(a.data)
    if not (a.data / "log").exists():
        raise CliError(f"no log in {a.data} (nothing was ever received there)")
    try:
        c = Compactor(a.data, retention_days=a.retention)
    except CompactorBusy:
        raise CliError("a compactor is already running on this data directory (inside pushlake serve?)") from None
    with c:
        bar = _progress(None if a.json else
                        lambda s: f"compacted {plural(s.records, 'record')} ({s.stored} stored, {s.failed} failed)")
        s = c.drain(bar)
        bar.done()
        maint = {} if a.no_maintenance else c.maintain()
    out = {"records": s.records, "stored": s.stored, "stale": s.stale, "deleted": s.deleted, "failed": s.failed,
           "files_written": s.files_written, "files_rewritten": s.files_rewritten, **maint}
    if a.json:
        _print_json(out)
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def _named_queries() -> dict[str, Path]:
    return {p.stem: p for p in sorted(QUERIES_DIR.glob("*.sql"))}


def cmd_sql(a) -> int:
    """Statements from the argument, ``--query``, or piped stdin run in order and stop at the
    first error (one line, exit 2); with none of them and a terminal on stdin, the shell."""
    import queries

    from . import shell
    named = _named_queries()
    if a.list:
        for name, p in named.items():
            first = p.read_text().splitlines()[0].lstrip("- ").strip()
            print(f"{name:28} {first}")
        return 0
    if a.max_rows is not None and a.max_rows < 0:
        raise CliError("--max-rows must be >= 0 (0: every row)")
    interactive = False
    if a.query:
        if a.query not in named:
            raise CliError(f"no named query '{a.query}' (have: {', '.join(named)})")
        text = named[a.query].read_text()
    elif a.sql is not None and a.sql != "-":
        text = a.sql
    elif a.sql == "-" or not sys.stdin.isatty():
        text = sys.stdin.read()
        if not shell.has_code(text):
            raise CliError("no statement on stdin (give SQL, --query NAME, or run it on a terminal for the shell)")
    else:
        interactive = True
    require_catalog(a.data)
    if a.team is not None:
        require_team(a.data, a.team)
    history = None
    if interactive:  # opened, and readline loaded, before a team's process gives up writing files
        history = shell.History(shell.history_path())
        shell.load_readline()
    con = _team_connection(a.data, a.team) if a.team is not None else queries.connect(a.data)
    try:
        session = shell.Session(con, a.format, a.max_rows)
        if interactive:
            where = f"team {a.team}" if a.team is not None else "every team"
            return shell.shell(session, history, f"pushlake {_version()} SQL on {a.data} ({where}), read-only. "
                                                 "End statements with ';'; .help for help, Ctrl-D to quit.")
        try:
            shell.run_script(session, text)
        except shell.SqlError as e:
            sys.stdout.flush()
            raise CliError(e.line) from None
    finally:
        con.close()
        if history is not None:
            history.close()
    return 0


def _team_connection(data: Path, team: str):
    """A team's connection in a process that can no longer write any file (Landlock, where the
    kernel has it): the catalog is opened first, then the process gives up writing, then DuckDB
    starts (without a temp directory). Output goes to the already open stdout."""
    from queries import sandbox
    from queries.connection import LakeConnection, open_catalog
    data = Path(data).resolve()
    cat = open_catalog(data)
    sandbox.restrict()
    return LakeConnection(data, team=team, catalog=cat, spill=False)


def _print_table(cols: list[str], rows: list[tuple]) -> None:
    write_table(sys.stdout, cols, rows)


class _progress:
    """A progress line redrawn in place (``\\r``) on stderr, only when stderr is a terminal: a log
    gets no frames. ``text`` makes the line from what the callback is given (None: no line)."""

    def __init__(self, text):
        self.text = text if text is not None and sys.stderr.isatty() else None
        self.shown = False

    def __call__(self, *args) -> None:
        if self.text is not None:
            sys.stderr.write("\r" + self.text(*args))
            sys.stderr.flush()
            self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            self.shown = False


def cmd_export(a) -> int:
    from queries.export import ExportError, export, format_for, progress_bar
    to_stdout = a.out == "-"
    try:
        fmt = a.format or format_for(a.out)
    except ExportError as e:
        raise CliError(str(e)) from None
    if to_stdout and fmt == "parquet" and sys.stdout.isatty():
        raise CliError("Parquet is binary: redirect stdout (> file.parquet) or give --format csv|jsonl")
    require_catalog(a.data)
    if a.team is not None:
        require_team(a.data, a.team)
    out = sys.stdout.buffer if to_stdout else Path(a.out)
    try:
        n = export(a.data, a.table, out, fmt, a.team, a.date_from, a.date_to,
                   progress=progress_bar() if not a.quiet and sys.stderr.isatty() else None)
    except ExportError as e:
        raise CliError(str(e)) from None
    if not to_stdout:
        print(f"exported {plural(n, 'row')} of {a.table} to {a.out} ({fmt})")
    elif not a.quiet:
        print(f"exported {plural(n, 'row')} of {a.table} ({fmt})", file=sys.stderr)
    return 0


def cmd_rebuild(a) -> int:
    from lake.rebuild import RebuildRefused, rebuild
    bar = _progress(None if a.json else lambda s: f"projected {plural(s.records, 'record')}")
    try:
        s = rebuild(a.data, a.into, progress=bar)
    except RebuildRefused as e:
        raise CliError(str(e)) from None
    finally:
        bar.done()
    out = {"records": s.records, "stored": s.stored, "failed": s.failed, "deleted": s.deleted,
           "into": str(a.into or a.data)}
    if a.json:
        _print_json(out)
    else:
        print(" ".join(f"{k}={v}" for k, v in out.items()))
    return 0


def cmd_erase(a) -> int:
    from lake.compactor import Compactor, CompactorBusy
    from lake.erase import verify_erased
    if a.now:
        require_data_dir(a.data)
        if not (a.data / "log").exists() and not (a.data / "catalog.db").exists():
            raise CliError(f"no log and no catalog in {a.data}: nothing to erase there")
    else:
        require_catalog(a.data)
    if a.team is not None:
        require_team(a.data, a.team)
    if a.now:
        try:
            with Compactor(a.data, retention_days=0) as c:
                c.drain()
                c.maintain()
        except CompactorBusy:
            raise CliError("a compactor is running (pushlake serve): start it with --retention 0 or stop it") from None
    findings, examined = verify_erased(a.data, a.itin_id, a.team)
    if a.json:
        _print_json({"itinId": a.itin_id, "erased": not findings, "findings": findings, "filesExamined": examined})
    elif findings:
        print(f"trip {a.itin_id} is NOT erased:")
        for f in findings:
            print(f"  - {f}")
    else:
        print(f"trip {a.itin_id} is erased: no trip data in the {plural(examined, 'file')} of {a.data} "
              "(only its deletion record and tombstone remain)")
    return 1 if findings else 0


def cmd_iceberg(a) -> int:
    """The Iceberg mirror (lake/iceberg.py): the properties for scripts, a summary per table, or
    a rebuild (safe beside a running compactor: the mirror's writers take turns)."""
    from lake.catalog import Catalog
    from lake.iceberg import Mirror
    require_catalog(a.data)
    with Mirror(a.data) as m:
        if a.json and not a.rebuild:
            _print_json(m.properties())
            return 0
        cat = Catalog(a.data, readonly=True)
        try:
            if a.rebuild:
                m.rebuild(cat)
            if a.json:
                _print_json(m.properties())
                return 0
            head, tables = m.status(cat)
        finally:
            cat.close()
    if not tables:
        print(f"no Iceberg tables yet in {a.data} (the compactor of pushlake serve mirrors the lake)")
        return 0
    # a table's mark moves only when a lake commit changes it: in step says whether it holds the
    # live files of the latest lake snapshot
    _print_table(["table", "iceberg snapshot", "files", "rows", "snapshots kept", "lake snapshot"],
                 [(t.table, t.snapshot_id, t.files, t.rows, t.snapshots,
                   f"in step with {head}" if t.in_step else f"behind {head} (mirrors {t.mirrored})")
                  for t in tables])
    print("read it with pyiceberg.catalog.load_catalog('pushlake', **props), props from `pushlake iceberg --json`")
    return 0


def cmd_teams(a) -> int:
    from .teams import TeamError, Teams
    if a.action != "create":  # only `teams create` (and serve) makes a data directory
        require_catalog(a.data, "teams", "teams' store")
    t = Teams(a.data)
    try:
        if a.action == "list":
            rows = [{"teamId": r.team_id, "status": r.status, "creationDate": r.creation_date()} for r in t.all()]
            if a.json:
                _print_json(rows)
            else:
                _print_table(["teamId", "status", "creationDate"], [tuple(r.values()) for r in rows])
            return 0
        if a.action == "create":
            out = t.create(a.team)
        else:
            out = {"teamId": a.team, **t.set_status(a.team, "ENABLED" if a.action == "enable" else "DISABLED")}
    except TeamError as e:
        raise CliError(str(e)) from None
    finally:
        t.close()
    if a.json:
        _print_json(out)
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
        if "pushApiKey" in out:
            print("Keep these keys: they are stored only as hashes and cannot be shown again.", file=sys.stderr)
    return 0


def cmd_check(a) -> int:
    from lake.check import NoData, check
    try:
        rep = check(a.data)
    except NoData as e:
        raise CliError(str(e)) from None
    if a.json:
        _print_json({"ok": rep.ok, "errors": rep.errors, "warnings": rep.warnings, "info": rep.info,
                     "failed": rep.failed})
    else:
        for e in rep.errors:
            print(f"ERROR   {e}")
        for w in rep.warnings:
            print(f"WARNING {w}")
        for f in rep.failed:
            print(f"FAILED  {f['team']} {f['key']} ({f['part']}@{f['offset']}): {f['reason']}")
        print(f"{'OK' if rep.ok else 'PROBLEMS FOUND'}: " + ", ".join(f"{k}={v}" for k, v in rep.info.items()))
    return 0 if rep.ok else 1


def cmd_nodes(a) -> int:
    """The nodes that take part in log cleaning (``erase --verify`` waits for each), with the
    leases; ``remove`` retires a drained node, whose log no one will clean any more."""
    import time

    from lake.catalog import Catalog
    require_catalog(a.data)
    if a.action == "remove":
        if not a.name:
            raise CliError("nodes remove: name the node to remove")
        cat = Catalog(a.data)
        try:
            lease = [r for r in cat.leases() if r[0] == f"partitions:{a.name}" and r[3] > time.time()]
            if lease:
                raise CliError(f"node {a.name!r} is running (its compactor holds its lease until "
                               f"{time.strftime('%H:%M:%S', time.localtime(lease[0][3]))}): drain and stop it first")
            if not cat.remove_node(a.name):
                raise CliError(f"no node {a.name!r} in the catalog (pushlake nodes list)")
        finally:
            cat.close()
        print(f"node {a.name} removed: erasure no longer waits for its log")
        return 0
    cat = Catalog(a.data, readonly=True)
    try:
        now = time.time()
        leases = {name: (holder, epoch, expires) for name, holder, epoch, expires in cat.leases()}
        rows = []
        for n in cat.nodes():
            holder, epoch, expires = leases.get(f"partitions:{n.name}", (None, None, 0.0))
            rows.append({"node": n.name or "(local)", "registered": _iso(n.registered_at),
                         "compactor": holder if expires > now else None, "epoch": epoch})
        maint = leases.get("maintenance")
        maintenance = maint[0] if maint and maint[2] > now else None
    finally:
        cat.close()
    if a.json:
        _print_json({"nodes": rows, "maintenance": maintenance})
    else:
        _print_table(["node", "registered", "compactor", "epoch"], [tuple(r.values()) for r in rows])
        print(f"maintenance: {maintenance or 'no holder'}")
    return 0


def _iso(t: float) -> str:
    import datetime as dt
    return dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


# `failed --kind`: the retry task's type (lake.catalog.Catalog.TASK_KINDS gives its kind of push)
FAILED_KINDS = {"trips": "PUSH_FAILED_TRIPS", "crashes": "PUSH_FAILED_CRASHES", "diagnoses": "PUSH_FAILED_DIAGNOSES"}


def cmd_failed(a) -> int:
    """List FAILED items, or retry them: a task that re-projects them (run here and now when no
    compactor is running, else by the running one), and how many it fixed and how many still fail."""
    import secrets

    from ingest.record import kind_label
    from lake.catalog import Catalog, TaskRunning
    from lake.compactor import Compactor, CompactorBusy
    require_catalog(a.data)
    if a.action == "retry":
        cat = Catalog(a.data)
        try:
            task_id, n = cat.create_task(FAILED_KINDS[a.kind or "trips"], secrets.token_hex(12))
            try:
                with Compactor(a.data) as c:
                    while c.run_tasks_safely():
                        pass
            except CompactorBusy:
                pass  # the running compactor (pushlake serve) picks the task up
            row = cat.get_task(task_id)
        except TaskRunning as e:
            raise CliError(str(e)) from None
        finally:
            cat.close()
        out = {"taskId": task_id, "nbItems": n, "status": row.status, "nbRemainingItems": row.nb_remaining,
               "nbFixedItems": row.nb_fixed, "nbStillFailedItems": row.nb_still_failed}
        if row.error:
            out["error"] = row.error
        _print_json(out) if a.json else print(" ".join(f"{k}={v}" for k, v in out.items()))
        return 0
    cat = Catalog(a.data, readonly=True)
    try:
        kind = Catalog.TASK_KINDS[FAILED_KINDS[a.kind]] if a.kind else None
        rows = [{"id": f.id, "kind": kind_label(f.kind), "team": f.team, "key": f.key, "part": f.part,
                 "offset": f.offset, "received": _iso(f.received_us / 1e6), "attempts": f.attempts,
                 "reason": f.reason} for f in cat.failed_items("FAILED", kind)]
    finally:
        cat.close()
    if a.json:
        _print_json(rows)
    else:
        _print_table(["id", "kind", "team", "key", "part", "offset", "received", "attempts", "reason"],
                     [tuple(r.values()) for r in rows])
    return 0


COMMANDS = {"serve": cmd_serve, "compact": cmd_compact, "sql": cmd_sql, "export": cmd_export,
            "rebuild": cmd_rebuild, "erase": cmd_erase, "teams": cmd_teams, "check": cmd_check,
            "failed": cmd_failed, "iceberg": cmd_iceberg, "nodes": cmd_nodes}

if __name__ == "__main__":
    sys.exit(main())
