"""Finding the record that makes a step fail, so one tenant's push cannot stop the lake.

Errors of the machine (``transient``: disk, catalog, memory) retry the same batch after a pause:
quarantining good records because the disk was full would be wrong. Any other error is taken to
come from the records, and the batch is bisected: the next steps read half as many records, then
half again, until the record that fails is alone (log2 of the batch: 18 steps for 200,000
records). Its projection is then FAILED with the error as its reason (``poison``, read by
``lake.plan``); if even that step fails, ``quarantine`` gives the commit that only records it as
FAILED and moves the position past it. Full batches resume once the failed batch is behind.
"""
from __future__ import annotations

import logging
import sqlite3

from ingest.record import Record

from .catalog import Commit, FailedRow
from .plan import count

log = logging.getLogger("pushlake.compactor")


class Isolating(Exception):
    """A step failed on something in its records: the next, smaller step is to run at once."""


def transient(e: BaseException) -> bool:
    """Errors of the machine (the disk, a locked or unreachable catalog, an unreachable object
    store), after which the same batch is retried as it is: an outage must never turn pushes into
    FAILED items. Not ``MemoryError`` (a batch too big to build is halved like any other failing
    batch) nor database errors caused by a value (``DataError``, ``IntegrityError``)."""
    if isinstance(e, (OSError, sqlite3.OperationalError)):
        return True
    mod = type(e).__module__
    if mod.startswith("psycopg"):  # PostgreSQL (an optional dependency: imported only if it raised)
        import psycopg
        return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError))
    # S3 through s3fs/botocore: its errors are of the store or of its credentials, never of a record
    return mod.startswith(("botocore", "aiobotocore", "s3fs", "urllib3", "aiohttp"))


class Isolation:
    def __init__(self) -> None:
        self.limit: int | None = None                 # records per batch while isolating
        self.until: dict[str, int] = {}               # end of the batch that failed, per partition
        self.poison: dict[tuple[str, int], str] = {}  # (part, offset) -> why its step failed

    @property
    def active(self) -> bool:
        return self.limit is not None

    def partitions(self, positions: dict[str, int]) -> set[str] | None:
        """The partitions to read while isolating: those not yet past the failed batch (the
        others wait, so that a busy partition cannot starve the one being searched)."""
        if not self.active:
            return None
        return {p for p, o in self.until.items() if positions.get(p, 0) < o}

    def failed(self, records: list[tuple[str, Record]], end: dict[str, int], e: Exception) -> Commit | None:
        """A step of these records (ending at ``end``) failed with ``e``: narrow the next one.
        Returns the quarantine commit to make when the record alone failed even as FAILED."""
        for p, o in end.items():
            self.until[p] = max(o, self.until.get(p, 0))
        if len(records) > 1:
            self.limit = (len(records) + 1) // 2
            log.warning("a step of %d records failed (%s: %s); retrying with %d records to find the record",
                        len(records), type(e).__name__, e, self.limit)
            return None
        self.limit = 1
        part, r = records[0]
        reason = f"compaction error: {type(e).__name__}: {e}"
        if (part, r.offset) not in self.poison:
            log.warning("record %s@%d (%s) makes its step fail; storing it as FAILED: %s", part, r.offset, r.team,
                        reason)
            self.poison[(part, r.offset)] = reason
            return None
        log.error("record %s@%d (%s) fails even as FAILED; quarantining it: %s", part, r.offset, r.team, reason)
        c = Commit("quarantine", positions={part: r.offset + 1}, summary=f"quarantined {part}@{r.offset}")
        c.failed.append(FailedRow(r.kind, r.team, r.key, part, r.offset, r.received_us, reason[:2000]))
        count(c, r, "received")
        return c

    def committed(self, positions: dict[str, int]) -> None:
        """A step committed up to ``positions``: past the failed batch, full batches again."""
        if self.until and all(positions.get(p, 0) >= o for p, o in self.until.items()):
            log.info("past the batch that failed: full batches again")
            self.limit, self.until = None, {}
            self.poison.clear()
