"""The benchmarks cannot rot: each one's ``--quick`` run (bench/run_all.py's list) in a subprocess,
as ``make bench`` runs it, must exit 0 and write its result file, into a temporary directory (never
bench/results/). About 70 s for all of them on 2 cores.

The ingest benchmark runs once with its Python load generator and once (``--workers 2``) with wrk.
Without wrk that second run is skipped on a developer's machine; under CI (``CI=true``) it is
installed with ``make bench-tools`` instead, and the test fails if it cannot be.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.common import PY, RESULTS, ROOT, row, write_result
from bench.run_all import SUITE, command

IN_CI = os.environ.get("CI", "").lower() in ("true", "1", "yes")
PACKAGES = {"pushlake", "ingest", "lake", "queries", "tests"}
# ingest: one run with each load generator (the benchmark picks wrk when it is on PATH)
LOADER = {"ingest": "python", "ingest-w2": "wrk"}


def need_wrk() -> None:
    if shutil.which("wrk"):
        return
    if not IN_CI:
        pytest.skip("wrk is not installed (`make bench-tools` installs it)")
    p = subprocess.run(["make", "-C", str(ROOT), "bench-tools"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and shutil.which("wrk"), \
        f"CI: wrk is missing and `make bench-tools` could not install it:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"


def snapshot(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in d.glob("*")} if d.exists() else {}


# ingest-w2 is bench.ingest_bench again with --workers 2 (22 s): its code is the ingest run's, and
# serve --workers 2 is tested in tests/test_metrics.py
@pytest.mark.parametrize("name", [n for n, _ in SUITE if n != "ingest-w2"])
def test_quick_run_writes_its_result(name: str, tmp_path: Path) -> None:
    if LOADER.get(name) == "wrk":
        need_wrk()
    if name == "scaleout":  # PostgreSQL and moto_server: a failure under CI, a skip elsewhere
        from tests.services import ServiceUnavailable, find_moto_server, find_postgres_bin, unavailable
        try:
            find_postgres_bin(), find_moto_server()
        except ServiceUnavailable as e:
            unavailable(str(e))
    results = tmp_path / "results"
    cmd = command(name, quick=True, results_dir=results)
    if name in LOADER:
        cmd += ["--loader", LOADER[name]]
    before = snapshot(RESULTS)
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    files = sorted(x.name for x in results.glob("*"))
    assert files == [f"{name}.json"], files
    doc = json.loads((results / f"{name}.json").read_text())
    assert doc["name"] == name and doc["args"]["quick"] is True
    assert doc["rows"] and all(r["metric"] and "ratio" in r for r in doc["rows"])
    if name in LOADER:
        assert doc["args"]["loader"].startswith("python" if LOADER[name] == "python" else "wrk")
    assert snapshot(RESULTS) == before, "a quick run wrote into bench/results/"


def test_table_from_another_results_dir(tmp_path: Path) -> None:
    """run_all --table --results-dir prints the table of that directory and leaves bench/README.md alone."""
    readme = (ROOT / "bench" / "README.md").read_bytes()
    write_result("smoke", [row("a metric", "ms", "a peer", 2.0, 1.0, higher_is_better=False, target=1.5)],
                 {"quick": True}, results_dir=tmp_path)
    p = subprocess.run([PY, "-m", "bench.run_all", "--table", "--results-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "| a metric | a peer | 2 | 1 | 2 | ≥ 1.50: met |" in p.stdout
    assert ", quick)" in p.stdout
    assert (ROOT / "bench" / "README.md").read_bytes() == readme


def test_no_script_shadows_a_package_or_edits_sys_path() -> None:
    """`python -m bench.<name>` from the root: no bench module named like a package, no sys.path edits."""
    mods = sorted((ROOT / "bench").glob("*.py"))
    assert mods
    for m in mods:
        assert m.stem not in PACKAGES, f"{m} has a package's name"
        assert "sys.path" not in m.read_text(), f"{m} edits sys.path"
    assert {mod for _, (mod, *_) in SUITE} <= {f"bench.{m.stem}" for m in mods}
