"""The service's Prometheus metrics, one definition each, for every process of ``pushlake serve``.

Receivers (``--workers N``), the compactor and the supervisor are separate processes, so the
values live in ``prometheus_client``'s multi-process mode: each process writes its own memory-
mapped files in one directory (``<data>/.metrics``, emptied at every start by ``serve``), and
``GET /metrics`` sums them, whichever receiver answers. ``enable`` must run before the first
import of ``prometheus_client`` in the process (the library picks its storage at import), which
is why this module imports it lazily: ``serve`` calls ``enable`` first, its children inherit the
variable. Without it (tests building the app in-process, ``pushlake compact``) the values stay in
the process's own registry.

Gauges written by one process at a time (a receiver's partition, the compactor's counts) use the
``mostrecent`` mode: a restarted process takes over its predecessor's series.
"""
from __future__ import annotations

import os
import shutil
import struct
import sys
import threading
import time
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"
DIR_NAME = ".metrics"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# seconds: from 0.25 ms (an idle fsync on NVMe) to 10 s (a disk in trouble)
LATENCY = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STEP = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


def enable(data_dir: Path) -> Path:
    """Multi-process mode for this process and the children it starts, in an emptied directory
    (files of an earlier run would add its totals to this one's)."""
    d = Path(data_dir) / DIR_NAME
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(mode=0o700, parents=True)
    os.environ[ENV] = str(d)
    if "prometheus_client.values" in sys.modules and _M is None:  # imported early, but nothing measured yet
        from prometheus_client import values
        values.ValueClass = values.get_value_class()
    return d


def multiprocess() -> bool:
    return bool(os.environ.get(ENV))


class _Metrics:
    """Created at first use (``M()``), after ``enable`` had its chance to run."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram
        # -- the receiver
        self.pushes = Counter("pushlake_pushes", "Push requests answered, by team, kind, HTTP status and code "
                              "(ok, or the error code); team is empty when the credentials did not name one",
                              ["team", "kind", "status", "code"])
        self.ack = Histogram("pushlake_push_ack_seconds", "Time from a push's arrival to its 200 (durable, and for "
                             "a deletion published)", ["kind"], buckets=LATENCY)
        self.fsync = Histogram("pushlake_log_fsync_seconds", "fdatasync of one group commit", buckets=LATENCY)
        self.batch = Histogram("pushlake_group_commit_records", "Records made durable by one fdatasync",
                               buckets=BATCH)
        self.lag_records = Gauge("pushlake_compactor_lag_records", "Records of a log partition not yet projected "
                                 "into the lake", ["partition"], multiprocess_mode="mostrecent")
        self.lag_seconds = Gauge("pushlake_compactor_lag_seconds", "Age of the oldest record of a log partition "
                                 "not yet projected (0 when caught up)", ["partition"], multiprocess_mode="mostrecent")
        self.disk_free = Gauge("pushlake_disk_free_bytes", "Free space on the data directory's file system",
                               multiprocess_mode="mostrecent")
        self.degraded = Gauge("pushlake_health_degraded", "1 while /health answers degraded (low disk, compactor "
                              "failing or not advancing)", ["partition"], multiprocess_mode="mostrecent")
        # -- reads
        self.queries = Counter("pushlake_queries", "Queries and exports answered, by route and HTTP status",
                               ["route", "status"])
        self.query_seconds = Histogram("pushlake_query_seconds", "Time to answer a query or an export, by route "
                                       "and HTTP status", ["route", "status"], buckets=LATENCY)
        # -- the compactor
        self.steps = Counter("pushlake_compactor_steps", "Compaction steps that committed records, or failed",
                             ["result"])
        self.step_seconds = Histogram("pushlake_compactor_step_seconds", "Duration of a compaction step that "
                                      "committed records", buckets=STEP)
        self.projected = Counter("pushlake_compactor_records", "Records the compactor decided, by fate",
                                 ["fate"])
        self.failed_items = Gauge("pushlake_failed_items", "Pushes in the log that could not be projected "
                                  "(FAILED, see pushlake failed list)", multiprocess_mode="mostrecent")
        self.pending_tombstones = Gauge("pushlake_pending_tombstones", "Deletions published but not yet applied "
                                        "to the lake's files (their trips are hidden by the readers meanwhile)",
                                        multiprocess_mode="mostrecent")


_M: _Metrics | None = None
_LOCK = threading.Lock()  # the supervisor's history thread and the receiver may ask first at once


def M() -> _Metrics:
    global _M
    if _M is None:
        with _LOCK:
            if _M is None:
                _M = _Metrics()
    return _M


def exposition(tries: int = 3) -> bytes:
    """The text format of every process's values (or this process's only, outside ``serve``).
    Tried again a moment later when it fails: prometheus_client reads a file that a starting
    process is still creating (empty) as an error."""
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
    M()  # every family is listed, even before its first value
    if not multiprocess():
        return generate_latest(REGISTRY)
    from prometheus_client.multiprocess import MultiProcessCollector
    for attempt in range(tries):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        try:
            return generate_latest(registry)
        except (struct.error, RuntimeError):
            if attempt == tries - 1:
                raise
            time.sleep(0.01)
    raise AssertionError("unreachable")


def process_dead(pid: int) -> None:
    """A child that exited: its ``live*`` gauges stop counting (counters keep their totals)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp
        mp.mark_process_dead(pid)
