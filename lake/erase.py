"""``pushlake erase --verify``: prove that no data of a deleted trip remains in the data directory
and the lake.

Every file under the data directory is examined, and on an S3 lake (``lake.storage``) every object
under the lake's prefix too (both trees, the Iceberg mirror's files, anything else found there).
What may still name the trip is its deletion: TRIP_DELETION records in the log, the
``trip_deletions`` audit table, the catalog's tombstone and ``pending.db`` (``lake.pending``:
deletions acknowledged, not yet compacted; nothing else).
Anything else that holds the trip id (a trip record in a log segment, a row in a Parquet file,
old files not yet vacuumed, a torn tail, a FAILED item, a catalog index entry) is a finding.
In a cluster each node's log is on its own disk: this run reads this node's log, and the catalog
says which other nodes have not cleaned theirs yet (each node records its cleaning there).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from ingest import record as rec
from ingest.log import scan_segment

from pushlake import location

from .catalog import Catalog
from .hive import PUBLIC, STORE
from .pending import FILE as PENDING_FILE
from .schema import TRIP_TABLES
from .storage import open_storage


def verify_erased(data_dir: Path, itin: str, team: str | None = None) -> tuple[list[str], int]:
    """(findings, number of files examined). No findings means erased."""
    data_dir = Path(data_dir)
    needle = itin.encode()
    findings: list[str] = []
    examined = 0
    st = open_storage(data_dir)
    for p in sorted(data_dir.rglob("*")):
        if not p.is_file():
            continue
        try:
            examined += _examine_local(findings, data_dir, p, itin, team, needle)
        except FileNotFoundError:
            pass  # vacuumed (or a segment rewritten) between the listing and the read: gone
    if not st.local:
        for rel in sorted(st.list_files()):
            try:
                examined += _examine_object(findings, st, rel, itin, needle)
            except OSError:  # pyarrow's S3 errors are OSError, not always FileNotFoundError
                if st.exists(rel):
                    raise
                # vacuumed between the listing and the read: gone
    if (data_dir / "catalog.db").exists() or location.shared():

        cat = Catalog(data_dir, readonly=True)
        try:
            con = cat.con
            tq = "" if team is None else " AND team = ?"
            args = (itin,) if team is None else (itin, team)
            if not con.execute(f"SELECT count(*) FROM tombstones WHERE itin_id = ?{tq}", args).fetchone()[0]:
                findings.append("no TRIP_DELETION is recorded for this trip")
            pending = con.execute(f"SELECT team FROM tombstones WHERE itin_id = ?{tq} AND log_cleaned = 0", args).fetchall()
            waiting = sorted({n for (t,) in pending for n in cat.uncleaned_nodes(t, itin)})
            if waiting and waiting != [""]:
                # a cluster: each node cleans its own log (this run read only this node's)
                findings.append(f"the log cleaner of node(s) {', '.join(n or '(local)' for n in waiting)} has not yet "
                                "processed this deletion (retention not elapsed, or the node is down?)")
            elif pending:
                findings.append("the log cleaner has not yet processed this deletion (retention not elapsed?)")
            n = con.execute(f"SELECT count(*) FROM versions WHERE kind = ? AND key = ?{tq}",
                            (rec.Kind.TRIP, *args)).fetchone()[0]
            if n:
                findings.append("the catalog still lists a stored version of the trip")
            n = con.execute(f"SELECT count(*) FROM failed WHERE kind = ? AND key = ?{tq} AND status = 'FAILED'",
                            (rec.Kind.TRIP, *args)).fetchone()[0]
            if n:
                findings.append(f"{n} FAILED item(s) of the trip are still quarantined")
        finally:
            cat.close()
    else:
        findings.append("no catalog: nothing was ever compacted here")
    return findings, examined


def _examine_local(findings: list[str], data_dir: Path, p: Path, itin: str, team: str | None, needle: bytes) -> int:
    """A file of the data directory: 1 once examined (a catalog file is examined through SQL)."""
    rel = p.relative_to(data_dir)
    parts = rel.parts
    if parts[0] == "log" and p.name.endswith(".log"):
        def visit(r: rec.Record, s: int, e: int) -> None:
            if r.kind == rec.Kind.TRIP and r.key == itin and (team is None or r.team == team):
                findings.append(f"{rel}: trip record at offset {r.offset} holds the trip")
        res = scan_segment(p, visit)
        if res.good_bytes < res.total_bytes and needle in p.read_bytes()[res.good_bytes:]:
            findings.append(f"{rel}: unreadable tail bytes hold the trip id")
    elif p.suffix == ".parquet" and parts[0] in (PUBLIC, STORE):
        _parquet(findings, str(rel), parts, itin, lambda: pq.read_table(p, columns=["itin_id"]))
    elif p.name.startswith(("catalog.db", "admin.db")):
        pass  # examined through SQL: ids and FAILED reasons (a few characters), no bodies
    elif p.name.startswith(PENDING_FILE):
        pass  # deletions only (their trip ids), what the log's TRIP_DELETION records hold too
    elif needle in p.read_bytes():
        findings.append(f"{rel}: holds the trip id")
    return 1


def _examine_object(findings: list[str], st, rel: str, itin: str, needle: bytes) -> int:
    """An object under the S3 lake's prefix."""
    parts = tuple(rel.split("/"))
    where = st.uri(rel)
    if rel.endswith(".parquet") and parts[0] in (PUBLIC, STORE):
        _parquet(findings, where, parts, itin, lambda: st.read_table(rel, columns=["itin_id"]))
    elif needle in st.read_bytes(rel):
        findings.append(f"{where}: holds the trip id")
    return 1


def _parquet(findings: list[str], where: str, parts: tuple, itin: str, read) -> None:
    """A data file of either tree: the rows of the trip it holds (the audit table may name it)."""
    tbl = parts[1] if len(parts) > 1 else ""
    if tbl == "trip_deletions" or tbl not in TRIP_TABLES:
        return
    t = read()
    n = pc.sum(pc.equal(t["itin_id"], itin)).as_py() or 0
    if n:
        findings.append(f"{where}: {n} row(s) of the trip")
