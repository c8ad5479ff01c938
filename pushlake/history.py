"""The time series behind the status page: the service's metrics, one point per minute, six hours.

Prometheus keeps history for whoever runs one; the status page must work without it. So the
``serve`` supervisor samples every process's metrics (``metrics.exposition``) every ``every``
seconds (``run``) and keeps, per minute:

- ``pushes``: the pushes answered, by team, kind and outcome (``ok`` for a 200, ``refused`` for
  any other status; team ``""`` when the credentials named none);
- ``ack``: the ack latencies' histogram buckets (every kind), from which ``quantile`` gives the
  minute's p50 and p99 (``ackP50``, ``ackP99``, seconds; ``acks`` is their count);
- ``lagRecords``, ``lagSeconds``: the compactor's lag, the largest over partitions and samples;
- ``failed``, ``tombstones``, ``diskFree``: FAILED items, pending tombstones and free bytes as
  last sampled (``None`` when no process reported them yet).

Counters become per-minute deltas. A series lower than at the previous sample was reset (its
process restarted): it starts a new baseline and counts from zero, never a negative delta. The
first sample of a run is the baseline when the process's own registry serves (it may hold totals
from before); under ``serve`` (multi-process mode) the metrics directory is emptied at each start,
so every count since then is new.

The minutes go to ``<data>/status.history.json`` (atomically, mode 0600) after each sample and are
read back at start, so a restart keeps the history; the current minute is there from the first
sample on, so a page opened a few seconds after pushes shows them.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from . import metrics
from .fsutil import FILE_MODE

log = logging.getLogger("pushlake.history")

FILE = "status.history.json"
ENV_EVERY = "PUSHLAKE_HISTORY_EVERY"  # seconds between samples (tests: 1)
KEEP_MINUTES = 360
VERSION = 1

PUSHES = "pushlake_pushes_total"
ACK = "pushlake_push_ack_seconds_bucket"
LAG_RECORDS = "pushlake_compactor_lag_records"
LAG_SECONDS = "pushlake_compactor_lag_seconds"
DEGRADED = "pushlake_health_degraded"
GAUGES = {"pushlake_failed_items": "failed", "pushlake_pending_tombstones": "tombstones",
          "pushlake_disk_free_bytes": "diskFree"}
QUANTILES = {"ackP50": 0.5, "ackP99": 0.99}

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class Snapshot:
    """One exposition, parsed: the counters' raw series and the gauges the page shows."""

    def __init__(self, text: str):
        from prometheus_client.parser import text_string_to_metric_families
        self.counters: dict[SeriesKey, float] = {}
        self.lag_records: dict[str, float] = {}
        self.lag_seconds: dict[str, float] = {}
        self.degraded: dict[str, float] = {}
        self.gauges: dict[str, float | None] = dict.fromkeys(GAUGES.values())
        by_partition = {LAG_RECORDS: self.lag_records, LAG_SECONDS: self.lag_seconds, DEGRADED: self.degraded}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in (PUSHES, ACK):
                    self.counters[(s.name, tuple(sorted(s.labels.items())))] = s.value
                elif s.name in by_partition:
                    by_partition[s.name][s.labels.get("partition", "")] = s.value
                elif s.name in GAUGES:
                    self.gauges[GAUGES[s.name]] = s.value

    def current(self) -> dict:
        """The gauges as the page's current numbers: per partition, and the worst of them."""
        parts = sorted(set(self.lag_records) | set(self.lag_seconds) | set(self.degraded))
        return {"failedItems": _int(self.gauges["failed"]), "pendingTombstones": _int(self.gauges["tombstones"]),
                "diskFreeBytes": _int(self.gauges["diskFree"]),
                "lagRecords": _int(max(self.lag_records.values(), default=None)),
                "lagSeconds": max(self.lag_seconds.values(), default=None),
                "partitions": [{"partition": p, "lagRecords": _int(self.lag_records.get(p)),
                                "lagSeconds": self.lag_seconds.get(p), "degraded": bool(self.degraded.get(p))}
                               for p in parts]}


def _int(v: float | None) -> int | None:
    return None if v is None else int(v)


def quantile(buckets: dict[str, float], q: float, bounds: tuple[float, ...] = metrics.LATENCY) -> float | None:
    """The q-quantile of a histogram given as counts per bucket (upper bound ``le`` -> count, not
    cumulative; empty buckets may be left out) whose finite bounds are ``bounds``, interpolated
    linearly inside its bucket as Prometheus' ``histogram_quantile`` does; in the open ``+Inf``
    bucket, the largest finite bound. ``None`` without observations."""
    counts = sorted((float(le), n) for le, n in buckets.items() if n > 0)
    total = sum(n for _, n in counts)
    if total <= 0:
        return None
    rank, seen = q * total, 0.0
    for upper, n in counts:
        if seen + n >= rank:
            if math.isinf(upper):
                return max(bounds)
            lower = max((b for b in bounds if b < upper), default=0.0)
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
    return max(bounds)  # not reached: the last bucket holds the rank


class Sampler:
    """Turns successive snapshots into minutes (``minutes``: minute start, epoch seconds -> the
    minute's record)."""

    def __init__(self, minutes: list[dict] | None = None, from_zero: bool = False):
        self.minutes: dict[int, dict] = {m["t"]: m for m in minutes or ()}
        self.last: dict[SeriesKey, float] | None = {} if from_zero else None
        self.sampled_at: float | None = None

    def sample(self, snap: Snapshot, now: float) -> dict:
        """Add one snapshot taken at ``now``; returns the minute it went to."""
        t = int(now // 60) * 60
        m = self.minutes.get(t)
        if m is None:
            m = self.minutes[t] = {"t": t, "pushes": {}, "ack": {}, "lagRecords": None, "lagSeconds": None,
                                   "failed": None, "tombstones": None, "diskFree": None, "acks": 0,
                                   "ackP50": None, "ackP99": None}
        deltas = self._deltas(snap.counters)
        acks: dict[str, float] = {}
        for (name, labels), d in deltas.items():
            lab = dict(labels)
            if name == PUSHES:
                outcome = "ok" if lab.get("status") == "200" else "refused"
                kinds = m["pushes"].setdefault(lab.get("team", ""), {})
                counts = kinds.setdefault(lab.get("kind", ""), {"ok": 0, "refused": 0})
                counts[outcome] += int(d)
            else:
                acks[lab.get("le", "+Inf")] = acks.get(lab.get("le", "+Inf"), 0.0) + d
        # cumulative buckets (le) -> counts per bucket, added to the minute's
        previous = 0.0
        for le in sorted(acks, key=float):
            n = acks[le] - previous
            previous = acks[le]
            if n > 0:
                m["ack"][le] = m["ack"].get(le, 0) + int(n)
        m["acks"] = sum(m["ack"].values())
        for name, q in QUANTILES.items():
            m[name] = quantile(m["ack"], q)
        for key, values in (("lagRecords", snap.lag_records), ("lagSeconds", snap.lag_seconds)):
            if values:
                worst = max(values.values())
                m[key] = worst if m[key] is None else max(m[key], worst)
        for key, v in snap.gauges.items():
            if v is not None:
                m[key] = v
        self.sampled_at = now
        self._prune(t)
        return m

    def _deltas(self, counters: dict[SeriesKey, float]) -> dict[SeriesKey, float]:
        if self.last is None:  # the first sample of a registry that may hold older totals: the baseline
            self.last = dict(counters)
            return {}
        out = {}
        for key, v in counters.items():
            prev = self.last.get(key, 0.0)
            d = v - prev if v >= prev else v  # lower: reset (a restarted process), counting from zero
            if d > 0:
                out[key] = d
        self.last = dict(counters)
        return out

    def _prune(self, t: int) -> None:
        oldest = t - (KEEP_MINUTES - 1) * 60
        for k in [k for k in self.minutes if k < oldest or k > t + 3600]:  # and a clock set far back
            del self.minutes[k]

    def document(self) -> dict:
        return {"version": VERSION, "sampledAt": self.sampled_at,
                "minutes": [self.minutes[t] for t in sorted(self.minutes)]}


def empty() -> dict:
    return {"version": VERSION, "sampledAt": None, "minutes": []}


def load(data_dir: Path) -> dict:
    """The history as last written: ``{"version", "sampledAt", "minutes": [...]}`` (minutes oldest
    first, as ``Sampler.sample`` builds them); an empty history when there is no readable file."""
    try:
        doc = orjson.loads((Path(data_dir) / FILE).read_bytes())
    except (OSError, ValueError):
        return empty()
    if (not isinstance(doc, dict) or doc.get("version") != VERSION or not isinstance(doc.get("minutes"), list)
            or not all(isinstance(m, dict) and isinstance(m.get("t"), int) for m in doc["minutes"])):
        log.warning("ignoring %s: not a history this release wrote", Path(data_dir) / FILE)
        return empty()
    return doc


def save(data_dir: Path, doc: dict) -> None:
    """Write atomically (a reader sees the old file or the new one), owner-only."""
    path = Path(data_dir) / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, orjson.dumps(doc))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def run(data_dir: Path, stop: threading.Event, every: float = 10.0,
        read: Callable[[], bytes] = metrics.exposition) -> None:
    """Sample ``read()`` (every process's metrics) at once, then every ``every`` seconds
    (``PUSHLAKE_HISTORY_EVERY`` overrides it), writing the history after each sample, until
    ``stop`` is set. A sample that fails is logged and skipped, never the end of the history."""
    every = float(os.environ.get(ENV_EVERY) or every)
    sampler = Sampler(load(data_dir)["minutes"], from_zero=metrics.multiprocess())
    while True:
        try:
            sampler.sample(Snapshot(read().decode()), time.time())
            save(data_dir, sampler.document())
        except Exception:  # noqa: BLE001 - the next sample may succeed; the service does not depend on it
            log.warning("could not sample the metrics for the status page", exc_info=True)
        if stop.wait(every):
            return
