"""Retry of FAILED items, as asynchronous tasks (the enterprise API's ``failed/retry``).

A task re-reads its items' records from the log and plans them like a step (``retry=True``: not
counted again as received; an item a newer push has replaced is SUPERSEDED), a chunk at a time,
each chunk its own commit that also advances the task. An item whose projection fails again keeps
its id (new reason, one more attempt); the commit records each item as fixed (no longer FAILED) or
still failed, and the task counts both (``Catalog._finish_task_items``).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from ingest.log import list_partitions, read_at
from ingest.record import Record

from .batches import Batch, BatchReader
from .catalog import Catalog, CatalogConflict, Commit, LeaseLost, TaskDone
from .isolation import transient
from .plan import look_up, plan
from .writer import Writer

log = logging.getLogger("pushlake.compactor")


def run_task(data_dir: Path, catalog: Catalog, batches: BatchReader, writer: Writer, chunk: int = 200) -> int:
    """Advance the oldest unfinished retry task by up to ``chunk`` items; return items done.
    Only the items whose records are in this node's log (in a cluster, each node retries its own)."""
    parts = list_partitions(data_dir) if catalog.url else None
    task = catalog.next_task(parts)
    if task is None:
        return 0
    items = catalog.task_items(task.task_id, chunk, parts)
    if not items:
        return 0
    by_part: dict[str, list[int]] = defaultdict(list)
    for it in items:
        if it.status == "FAILED":
            by_part[it.part].append(it.offset)
    records: list[tuple[str, Record]] = []
    for part, offsets in by_part.items():
        found = read_at(data_dir, part, offsets)
        records.extend((part, found[o]) for o in offsets if o in found)
    b = batches.prepare(Batch(start={}, records=records))
    p = plan(b.records, b.project, b.sha256, look_up(catalog, b.records),
             Commit("retry", task=TaskDone(task.task_id, [it.failed_id for it in items])), retry=True)
    p.commit.summary = f"retry task {task.task_id}: {p.stats.stored} stored, {p.stats.failed} failed again"
    writer.write_and_commit(p, b.routes, failpoint="task.before_commit")
    return len(items)


def run_task_safely(data_dir: Path, catalog: Catalog, batches: BatchReader, writer: Writer) -> int:
    """``run_task``, but a task whose items cannot be processed is marked FAILED with the error
    instead of being retried forever."""
    task = catalog.next_task()
    try:
        return run_task(data_dir, catalog, batches, writer)
    except (CatalogConflict, LeaseLost):
        return 0  # another commit came first: the chunk is planned again next time
    except Exception as e:
        if transient(e):  # the disk, the catalog or the store: the task waits, it has not failed
            log.warning("retry task %s waits: %s", task.task_id if task else "?", e)
            return 0  # noqa: BLE001 - recorded on the task
        log.exception("retry task %s failed", task.task_id if task else "?")
        if task:
            catalog.fail_task(task.task_id, f"{type(e).__name__}: {e}")
        return 0
