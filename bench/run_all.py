"""``make bench``: every benchmark, one after the other (never two at once on 2 cores), then
the table of bench/README.md rebuilt from bench/results/*.json.

Run from the repository root: ``.venv/bin/python -m bench.run_all [--quick] [--only NAME,...]
[--table] [--results-dir DIR]``. ``--quick`` runs each in its smoke mode; ``--only`` picks some;
``--table`` only rebuilds the table from the results already there. With ``--results-dir``
(or ``$PUSHLAKE_BENCH_RESULTS``) other than bench/results the table is printed, and
bench/README.md is left alone.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench.common import PY, RESULTS, ROOT, add_results_arg, rel

# name (of the result file) -> the module and its arguments
SUITE = [
    ("ingest", ["bench.ingest_bench"]),
    ("ingest-w2", ["bench.ingest_bench", "--workers", "2"]),
    ("compaction", ["bench.compaction_bench"]),
    ("freshness", ["bench.freshness_bench"]),
    ("sustained", ["bench.sustained_bench"]),
    ("queries", ["bench.queries_bench"]),
    ("deletions", ["bench.deletions_bench"]),
    ("hostile", ["bench.hostile_bench"]),
    ("openlake", ["bench.openlake_bench"]),
    ("scaleout", ["bench.scaleout_bench"]),
    ("files", ["bench.files_bench"]),
    ("routes", ["bench.routes_bench"]),
]
README = ROOT / "bench" / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def command(name: str, quick: bool, results_dir: Path) -> list[str]:
    """The command line of one benchmark (run with cwd = the repository root)."""
    module, *args = dict(SUITE)[name]
    return [PY, "-m", module, *args, *(["--quick"] if quick else []), "--results-dir", str(results_dir)]


def rows_of(path: Path) -> tuple[list[dict], dict]:
    d = json.loads(path.read_text())
    # results written before bench/common.py's format was the only one (ingest): rows under "summary"
    rows = d.get("summary") if "summary" in d else d.get("rows", [])
    meta = d.get("meta") or {"when": d.get("when"), "git": d.get("git"), "quick": d.get("args", {}).get("quick")}
    return [r for r in rows if "metric" in r], meta


def table(results_dir: Path) -> str:
    lines = ["| benchmark | metric | peer | peer | pushlake | ratio | target |", "|---|---|---|---:|---:|---:|---|"]
    for path in sorted(Path(results_dir).glob("*.json")):
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


def write_table(results_dir: Path) -> None:
    if Path(results_dir).resolve() != RESULTS.resolve():
        print(table(results_dir))
        return
    text = README.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + "\n" + table(results_dir) + "\n" + text[end:])
    print(f"updated {rel(README)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated names: " + ", ".join(n for n, _ in SUITE))
    ap.add_argument("--table", action="store_true", help="only rebuild the README table")
    add_results_arg(ap)
    a = ap.parse_args(argv)
    failed = []
    if not a.table:
        only = set(a.only.split(",")) if a.only else None
        unknown = (only or set()) - {n for n, _ in SUITE}
        if unknown:
            ap.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
        for name, _ in SUITE:
            if only and name not in only:
                continue
            cmd = command(name, a.quick, a.results_dir)
            print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
            if subprocess.run(cmd, cwd=ROOT).returncode != 0:
                failed.append(name)
    write_table(a.results_dir)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
