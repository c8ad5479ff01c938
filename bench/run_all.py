"""``make bench``: every benchmark, one after the other (never two at once on 2 cores), then
the table of bench/README.md rebuilt from bench/results/*.json.

``--quick`` runs each in its smoke mode; ``--only NAME[,NAME]`` picks some; ``--table`` only
rebuilds the table from the results already there.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import PY, RESULTS  # noqa: E402

SUITE = [
    ("ingest", ["bench/ingest.py"]),
    ("ingest-w2", ["bench/ingest.py", "--workers", "2"]),
    ("compaction", ["bench/compaction.py"]),
    ("freshness", ["bench/freshness.py"]),
    ("queries", ["bench/queries.py"]),
    ("deletions", ["bench/deletions.py"]),
    ("hostile", ["bench/hostile.py"]),
]
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def rows_of(path: Path) -> tuple[list[dict], dict]:
    d = json.loads(path.read_text())
    rows = d.get("summary") if "summary" in d else d.get("rows", [])
    meta = d.get("meta") or {"when": d.get("when"), "git": d.get("git"), "quick": d.get("args", {}).get("quick")}
    return [r for r in rows if "metric" in r], meta


def table() -> str:
    lines = ["| benchmark | metric | peer | peer | pushlake | ratio | target |", "|---|---|---|---:|---:|---:|---|"]
    for path in sorted(RESULTS.glob("*.json")):
        rows, meta = rows_of(path)
        when = (meta.get("when") or meta.get("date") or "")[:16]
        tag = f"{path.stem} ({meta.get('git', '?')}, {when}{', quick' if meta.get('quick') else ''})"
        for r in rows:
            fmt = lambda v: "-" if v is None else f"{v:.4g}"  # noqa: E731
            target = "" if r.get("target") is None else f"≥ {r['target']:.2f}: {'met' if r.get('met') else '**missed**'}"
            lines.append(f"| {tag} | {r['metric']} | {r['peer']} | {fmt(r['peer_value'])} | {fmt(r['pushlake_value'])} "
                         f"| {fmt(r['ratio'])} | {target} |")
            tag = ""
    return "\n".join(lines)


def write_table() -> None:
    readme = ROOT / "bench" / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + table() + "\n" + text[end:])
    print(f"updated {readme.relative_to(ROOT)}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated names: " + ", ".join(n for n, _ in SUITE))
    ap.add_argument("--table", action="store_true", help="only rebuild the README table")
    a = ap.parse_args()
    failed = []
    if not a.table:
        only = set(a.only.split(",")) if a.only else None
        for name, cmd in SUITE:
            if only and name not in only:
                continue
            print(f"== {name}: {' '.join(cmd)}{' --quick' if a.quick else ''}", flush=True)
            if subprocess.run([PY, *cmd] + (["--quick"] if a.quick else []), cwd=ROOT).returncode != 0:
                failed.append(name)
    write_table()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
