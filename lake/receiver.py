"""The lake's side of a receiver: what ``ingest.app.build_app`` is handed (``lake=``), so that the
receiver, a layer below the lake, never opens the catalog itself.

- ``compacted_up_to``: the compactor's position in a partition (offsets below it are never
  handed out again, even after the cleaner removed the records that carried them);
- ``republish_tombstones``: tombstones of the log tail the compactor has not reached, inserted
  again before the receiver takes traffic (an OS crash may have dropped an unsynced insert);
- ``tombstone_sink``: publishes a batch's deletions after its fsync and before its ack (no query
  returns a deleted trip from its ``200``): in ``pending.db`` on a SQLite lake (``lake.pending``:
  never behind the compactor's commits), in the catalog on PostgreSQL;
- ``compactor_health``: what ``/health`` says of the compactor over a partition (``lake.status``).
"""
from __future__ import annotations

from pathlib import Path

from ingest.groupcommit import Item
from ingest.keys import deleted_itin
from ingest.log import LogReader
from ingest.record import Kind

from pushlake.location import catalog_url

from . import status
from .catalog import Catalog, TombstoneRow
from .pending import PendingDeletions


class ReceiverLake:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)

    def compacted_up_to(self, part: str) -> int:
        cat = Catalog(self.data_dir)
        try:
            return cat.positions().get(part, 0)
        finally:
            cat.close()

    def republish_tombstones(self, part: str) -> int:
        cat = Catalog(self.data_dir)
        try:
            reader = LogReader(self.data_dir, part)
            pos = cat.positions().get(part, 0)
            rows = []
            while True:
                recs = reader.read(pos, max_records=50_000)
                if not recs:
                    break
                rows += _tombstones(part, ((r.offset, r.kind, r.team, r.key, r.received_us) for r in recs))
                pos = recs[-1].offset + 1
            if rows:  # where deletions_store would put them, through the catalog already open
                (cat.pending if cat.pending is not None else cat).add_tombstones(rows)
            return len(rows)
        finally:
            cat.close()

    def tombstone_sink(self, part: str) -> DeletionSink:
        return DeletionSink(self.data_dir, part)

    def compactor_health(self, part: str, next_offset: int) -> tuple[list[str], dict]:
        """(what is wrong, in sentences; the compactor's lag and last step) over ``part``."""
        st = status.read(self.data_dir)
        problems, lag = status.problems(st, {part: next_offset})
        return problems, {"lagRecords": lag[part], "failures": st.failures if st else None,
                          "lastError": st.last_error if st and st.failures else None,
                          "lastStep": st.last_step if st else None}


class DeletionSink:
    """The group commit's ``on_durable``: publishes a batch's deletions (``deletions_store``,
    opened at the first). The commit is made visible to readers but not fsynced
    (``synchronous=NORMAL``): the log record, fsynced just before, is the durable copy, and
    ``republish_tombstones`` re-inserts any tombstone an OS crash could have dropped."""

    def __init__(self, data_dir: Path, part: str):
        self.data_dir, self.part = data_dir, part
        self.store: PendingDeletions | Catalog | None = None

    def __call__(self, first: int, items: list[Item]) -> None:
        rows = _tombstones(self.part, ((first + n, it.kind, it.team, it.key, it.received_us)
                                       for n, it in enumerate(items)))
        if rows:
            if self.store is None:
                self.store = deletions_store(self.data_dir)
            self.store.add_tombstones(rows)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def deletions_store(data_dir: Path) -> PendingDeletions | Catalog:
    """Where a receiver publishes deletions: ``pending.db`` on a SQLite lake (no wait for the
    catalog's write lock, which the compactor holds at each commit), the catalog on PostgreSQL
    (row locks; readers on other machines)."""
    if catalog_url() is None:
        return PendingDeletions(data_dir, writer=True)
    return Catalog(data_dir)


def _tombstones(part: str, pushes) -> list[TombstoneRow]:
    """The tombstones of the deletions among (offset, kind, team, key, received_us) pushes."""
    rows = []
    for offset, kind, team, key, received_us in pushes:
        itin = deleted_itin(key) if kind == Kind.EVENT else None
        if itin is not None:
            rows.append(TombstoneRow(team, itin, part, offset, received_us))
    return rows
