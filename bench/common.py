"""Shared pieces of the benchmarks: the result file format and a few process helpers.

Every benchmark writes ``bench/results/<name>.json``:
``{"name", "when", "git", "machine", "args", "rows": [{"metric", "unit", "peer", "peer_value",
"pushlake_value", "ratio", "target", "met"}], "notes": [...]}`` — ``ratio`` is pushlake/peer
(or peer/pushlake for "lower is better" metrics, so that > 1 always means pushlake is ahead),
measured in the same run. ``bench/run_all.py`` turns the files into the table in bench/README.md.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PY = str(ROOT / ".venv" / "bin" / "python")
PUSHLAKE = str(ROOT / ".venv" / "bin" / "pushlake")


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def machine() -> dict:
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def row(metric: str, unit: str, peer: str, peer_value: float | None, pushlake_value: float | None,
        higher_is_better: bool = True, target: float | None = None) -> dict:
    """One comparison; ``target`` is the ratio the issue asks for (None: reported only)."""
    ratio = None
    if peer_value and pushlake_value:
        ratio = pushlake_value / peer_value if higher_is_better else peer_value / pushlake_value
    return {"metric": metric, "unit": unit, "peer": peer, "peer_value": peer_value,
            "pushlake_value": pushlake_value, "ratio": ratio, "target": target,
            "met": None if target is None or ratio is None else ratio >= target}


def write_result(name: str, rows: list[dict], args: dict | None = None, notes: list[str] | None = None) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    args = {k: (str(v) if isinstance(v, Path) else v) for k, v in (args or {}).items()}
    out.write_text(json.dumps({"name": name, "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "git": git_rev(), "machine": machine(), "args": args, "rows": rows,
                               "notes": notes or []}, indent=2) + "\n")
    return out


def print_rows(rows: list[dict]) -> None:
    print(f"{'metric':44} {'peer':22} {'peer value':>12} {'pushlake':>12} {'ratio':>7}  target")
    for r in rows:
        pv = "-" if r["peer_value"] is None else f"{r['peer_value']:.4g}"
        lv = "-" if r["pushlake_value"] is None else f"{r['pushlake_value']:.4g}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        tgt = "" if r["target"] is None else f">= {r['target']:.2f} {'met' if r['met'] else 'MISSED'}"
        print(f"{r['metric'][:44]:44} {r['peer'][:22]:22} {pv:>12} {lv:>12} {ratio:>7}  {tgt}")


def proc_kb(pid: int, field: str, file: str = "status") -> int:
    """A field of /proc/<pid>/status (VmHWM, VmRSS) or smaps_rollup (Pss), in kB; 0 if the
    process is gone."""
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """Children of any thread of a process, and theirs, recursively."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids + [d for k in kids for d in descendants(k)]
