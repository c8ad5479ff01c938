"""The compactor's own account of itself (``compactor.status``), for ``/health`` and ``check``.

A compactor that fails or stops advancing must be seen, not only logged: every step (and a
heartbeat every few seconds when idle) rewrites a small JSON file beside the catalog, by rename,
so a reader never sees half of it. Readers compare it with the ends of the log: records behind
the compactor's positions for longer than ``STALL_S`` mean it is not advancing, whatever the
reason (failing, hung, dead).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from pushlake.fsutil import FILE_MODE

FILE = "compactor.status"
STALL_S = 60.0      # records waiting this long without progress: not advancing
FAILING_S = 15.0    # failing this long (or FAILING_N times in a row): failing
FAILING_N = 3


@dataclass
class Status:
    pid: int = field(default_factory=os.getpid)
    started_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    caught_up_at: float = 0.0      # last time a step found nothing new to read
    progress_at: float = 0.0       # last time a step committed records
    failing_since: float | None = None
    failures: int = 0              # consecutive failed steps
    last_error: str | None = None
    isolating: bool = False        # bisecting a batch to find a record that fails its step
    positions: dict[str, int] = field(default_factory=dict)
    last_step: dict = field(default_factory=dict)

    def succeeded(self, records: int, positions: dict[str, int], summary: dict) -> None:
        now = time.time()
        if records:
            self.progress_at = now
            self.last_step = {"at": now, **summary}
        else:
            self.caught_up_at = now
        self.failing_since, self.failures, self.positions = None, 0, positions

    def failed(self, error: BaseException, isolating: bool) -> None:
        now = time.time()
        self.failing_since = self.failing_since or now
        self.failures += 1
        self.last_error = f"{type(error).__name__}: {error}"[:500]
        self.isolating = isolating


def write(data_dir: Path, st: Status) -> None:
    st.updated_at = time.time()
    path = Path(data_dir) / FILE
    tmp = path.with_name(f".{FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.write(fd, orjson.dumps(asdict(st)))
    finally:
        os.close(fd)
    os.replace(tmp, path)


def read(data_dir: Path) -> Status | None:
    try:
        doc = orjson.loads((Path(data_dir) / FILE).read_bytes())
        return Status(**{k: v for k, v in doc.items() if k in Status.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def problems(st: Status | None, ends: dict[str, int], now: float | None = None,
             stall_s: float = STALL_S) -> tuple[list[str], dict[str, int]]:
    """What is wrong with the compactor, in sentences, and its lag in records per partition,
    given ``ends``: the next offset of each log partition (those the caller can see)."""
    now = time.time() if now is None else now
    positions = st.positions if st else {}
    lag = {p: max(0, end - positions.get(p, 0)) for p, end in ends.items()}
    out: list[str] = []
    if st is None:
        return out, lag
    if st.failing_since is not None and (st.failures >= FAILING_N or now - st.failing_since >= FAILING_S):
        what = "isolating a record that makes its step fail" if st.isolating else "failing"
        out.append(f"compactor {what} for {now - st.failing_since:.0f} s ({st.failures} failed steps): "
                   f"{st.last_error}")
    behind = {p: n for p, n in lag.items() if n}
    since = max(st.caught_up_at, st.progress_at, st.started_at)
    if behind and now - since > stall_s:
        parts = ", ".join(f"{n} in {p}" for p, n in sorted(behind.items()))
        out.append(f"compactor not advancing: {parts} record(s) behind, no progress for {now - since:.0f} s")
    return out, lag
