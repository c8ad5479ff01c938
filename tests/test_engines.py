"""Every engine docs/reading.md shows reads exactly the rows of pushlake's views.

One lake for the module, built by a real receiver (``pushlake serve --no-compactor``) and the
real compactor at the default retention (replaced files wait in ``files/``): re-pushes with
other bodies (one moving its trip to another date), deletions before and after their trip,
two teams sharing an itinId, crashes, diagnoses, several dates, and enough small commits that
a merge happens. Then, for every table, the views are compared with a DuckDB glob, the
``duckdb`` CLI, a pyarrow dataset, pandas, Polars, Spark and the Iceberg mirror: counts, keys
(with the team and date each row's path gives), sum(log_offset) and a numeric sum, computed by
each engine. The numeric values pushed are dyadic fractions, so every sum is exact whatever
order an engine adds in: equal means equal.

Finally each ```python / ```sh block of docs/reading.md (marked ``# engine: NAME``) is run on
the same lake with its ``DATA`` line pointing at it, and its result compared with the views.

Under CI (``CI=true``) an engine that cannot run fails; elsewhere it is skipped with the reason.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import duckdb
import pytest

import queries
from lake import hive
from lake.compactor import Compactor
from lake.schema import TABLES
from pushlake.teams import Teams
from tests.conftest import compact
from tests.helpers import ROOT, ServerProcess, deletion, fixture, itin_id, trip

DOC = ROOT / "docs" / "reading.md"
BIN = Path(sys.executable).parent  # the venv's bin: duckdb (duckdb-cli), pushlake
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

KEYS = {"trips": ("itin_id",), "trip_samples": ("itin_id", "seq"), "trip_events": ("itin_id", "event_type", "seq"),
        "crashes": ("crash_id",), "diagnoses": ("user_id", "body_sha256"), "trip_deletions": ("itin_id", "event")}
NUM = {"trips": "distance_m", "trip_samples": "latitude", "trip_events": "time_s", "crashes": "probability",
       "diagnoses": "n_events", "trip_deletions": "log_offset"}
DAYS = ["2025-01-20T21:46:01.000+0000", "2025-01-21T07:10:00.000+0000", "2025-01-22T18:30:00.000+0000"]
SHARED = itin_id(100)  # an itinId both teams use

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


def unavailable(what: str) -> None:
    """An engine that cannot run: a failure under CI, a skip elsewhere."""
    if CI:
        pytest.fail(f"{what} (CI=true: every engine must run)")
    pytest.skip(what)


def need(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        unavailable(f"{module} is not installed ({e}); it comes with the `test` extra")


def iceberg_landed() -> bool:
    return (ROOT / "lake" / "iceberg.py").exists()


# -- the lake ------------------------------------------------------------------------------------

def body(itin: str, n: int, *, user: str = "driver-1", day: int = 0, samples: int = 10) -> dict:
    """A trip whose numbers are n's own and exact in binary (sums do not depend on order)."""
    t = trip(itin, user=user, start=DAYS[day])
    t["itineraryStatistics"]["distance"] = 1000 + n / 4
    route = t["route"]
    for k, v in route.items():
        if isinstance(v, list):
            route[k] = v[:samples]
    route["latitude"] = [48 + (n * 16 + k) / 1024 for k in range(samples)]
    for ev in t["safetyEvents"] + t["speedingEvents"]:
        ev["time"] += n
    return t


def crash(crash_id: str, probability: float, date: str) -> dict:
    c = fixture("crash.json")
    c["crashId"] = crash_id
    c["probability"] = probability
    c["parameters"]["date"] = date
    return c


class Lake:
    """The module's lake, and what it was built to hold."""

    def __init__(self, data: Path):
        self.data = data
        self.trips: set[tuple[str, str]] = set()
        self.merges = 0


def build(data: Path) -> Lake:
    data.mkdir(parents=True)
    t = Teams(data)
    try:
        keys = {n: t.create(n)["pushApiKey"] for n in ("acme", "globex")}
    finally:
        t.close()
    srv = ServerProcess(data, "--no-compactor")

    def push(team: str, kind: str, doc: dict) -> None:
        req = urllib.request.Request(f"{srv.url}/push/{kind}", data=json.dumps(doc).encode(), method="POST",
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {keys[team]}"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200, r.read()

    try:
        with Compactor(data, merge_min_files=3) as c:   # the default retention: 7 days
            # small commits, one push each
            push("acme", "trip/event", deletion(itin_id(9)))            # before its trip
            c.step()
            for i in range(3):
                push("acme", "trip", body(itin_id(i), i))
                c.step()
            push("acme", "trip", body(itin_id(3), 3, day=1))
            push("globex", "trip", body(SHARED, 50, day=1))
            push("acme", "trip", body(SHARED, 51))
            c.step()
            assert c.merge_small_files() >= 3                           # acme's 2025-01-20, three tables
            # a mixed batch
            push("acme", "crash", crash("crash-a", 71, "2025-01-27T05:52:24.000+0000"))
            push("globex", "crash", crash("crash-g", 12, "2025-01-28T06:00:00.000+0000"))
            push("acme", "diagnosis", fixture("diagnosis.json"))
            push("acme", "diagnosis", fixture("diagnosis_empty.json"))  # the daily heartbeat
            push("globex", "diagnosis", fixture("diagnosis.json"))
            push("acme", "trip", body(itin_id(1), 11, user="driver-2", day=2, samples=6))  # another date
            push("acme", "trip", body(itin_id(0), 10))                  # its row is in the merged file
            push("acme", "trip", body(itin_id(9), 9))                   # deleted before: discarded
            push("acme", "trip/event", deletion(itin_id(2)))            # after its trip
            push("acme", "trip/event", deletion(SHARED))                # acme's only
            push("globex", "trip", body(itin_id(20), 20, day=2))
            push("globex", "trip", body(itin_id(21), 21))
            c.step()
            # re-pushes again, and a trip re-pushed then deleted in one batch
            push("acme", "crash", crash("crash-a", 99, "2025-01-27T05:52:24.000+0000"))
            push("globex", "trip", body(itin_id(20), 30, day=2))
            push("acme", "trip", body(itin_id(3), 33, day=1))
            push("acme", "trip/event", deletion(itin_id(3)))
            push("acme", "diagnosis", fixture("diagnosis.json"))        # the same body: one row
            c.drain()
            c.drain()                                                   # pending copy-on-writes applied
    finally:
        srv.stop()
    lake = Lake(data)
    lake.trips = {("acme", itin_id(0)), ("acme", itin_id(1)), ("globex", SHARED), ("globex", itin_id(20)),
                  ("globex", itin_id(21))}
    db = sqlite3.connect(data / "catalog.db")
    try:
        lake.merges = db.execute("SELECT count(*) FROM snapshots WHERE operation = 'merge'").fetchone()[0]
    finally:
        db.close()
    return lake


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Lake:
    return build(tmp_path_factory.mktemp("engines") / "data")


@pytest.fixture(scope="module")
def spark():
    """One local Spark for the module, as cheap as Spark gets."""
    need("pyspark")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        unavailable("Spark needs Java (no java on PATH, no JAVA_HOME)")
    from pyspark.sql import SparkSession
    try:
        s = (SparkSession.builder.master("local[1]").appName("pushlake-engines")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "1")
             .config("spark.driver.memory", "512m").config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    except Exception as e:  # noqa: BLE001 - the JVM did not start
        unavailable(f"Spark could not start: {e}")
    s.sparkContext.setLogLevel("ERROR")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def iceberg(lake):
    """The Iceberg mirror synced with the lake's latest snapshot; the catalog as a user loads it."""
    if not iceberg_landed():
        pytest.skip("lake/iceberg.py has not landed: no Iceberg mirror to read")
    need("pyiceberg")
    from pyiceberg.catalog import load_catalog
    from lake.catalog import Catalog
    from lake.iceberg import Mirror
    cat = Catalog(lake.data, readonly=True)
    try:
        with Mirror(lake.data) as m:
            m.sync(cat)
    finally:
        cat.close()
    out = subprocess.run([str(BIN / "pushlake"), "iceberg", "--json", "--data", str(lake.data)],
                         capture_output=True, text=True, check=True, timeout=60)
    return load_catalog("pushlake", **json.loads(out.stdout))


# -- what each engine reads --------------------------------------------------------------------

class Sig:
    """A table as an engine read it: rows as (team of the path, team_id, date, keys...) in text,
    then count(*), sum(log_offset) and sum(NUM), as the engine computed them."""

    def __init__(self, rows, count, offsets, total):
        self.rows = sorted(tuple("" if v is None else str(v) for v in r) for r in rows)
        self.aggs = (int(count), int(offsets), float(total))

    def __eq__(self, other):
        return (self.rows, self.aggs) == (other.rows, other.aggs)

    def __repr__(self):
        return f"Sig({len(self.rows)} rows, count/sum(log_offset)/sum = {self.aggs})"


def sql_of(tbl: str, src: str, team: str = "team") -> tuple[str, str]:
    keys = ", ".join(KEYS[tbl])
    return (f"SELECT {team}, team_id, CAST(date AS VARCHAR), {keys} FROM {src}",
            f"SELECT count(*), sum(log_offset), sum({NUM[tbl]}) FROM {src}")


def glob(data: Path, tbl: str) -> str:
    return f"read_parquet('{data}/lake/{tbl}/**/*.parquet', hive_partitioning = true)"


def views(data: Path, tbl: str) -> Sig:
    rows_sql, agg_sql = sql_of(tbl, tbl, team="team_id")
    with queries.connect(data) as con:
        return Sig(con.execute(rows_sql).fetchall(), *con.execute(agg_sql).fetchone())


def duckdb_glob(data: Path, tbl: str) -> Sig:
    rows_sql, agg_sql = sql_of(tbl, glob(data, tbl))
    con = duckdb.connect()
    try:
        return Sig(con.execute(rows_sql).fetchall(), *con.execute(agg_sql).fetchone())
    finally:
        con.close()


def duckdb_cli_path() -> str:
    exe = BIN / "duckdb"
    if exe.exists():
        return str(exe)
    found = shutil.which("duckdb")
    if found is None:
        unavailable("no duckdb CLI (the duckdb-cli package of the `test` extra puts it in the venv's bin)")
    return found


def duckdb_cli(data: Path, tbl: str) -> Sig:
    exe = duckdb_cli_path()

    def run(q: str) -> list[list[str]]:
        p = subprocess.run([exe, "-csv", "-noheader", "-c", q], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        return list(csv.reader(io.StringIO(p.stdout)))
    rows_sql, agg_sql = sql_of(tbl, glob(data, tbl))
    return Sig(run(rows_sql), *run(agg_sql)[0])


def arrow_sig(tbl: str, t, team: str = "team") -> Sig:
    import pyarrow.compute as pc
    cols = [t[c].to_pylist() for c in (team, "team_id", "date", *KEYS[tbl])]
    return Sig(zip(*cols), t.num_rows, pc.sum(t["log_offset"]).as_py(), pc.sum(t[NUM[tbl]]).as_py())


def pyarrow_dataset(data: Path, tbl: str) -> Sig:
    import pyarrow.dataset as ds
    return arrow_sig(tbl, ds.dataset(data / "lake" / tbl, partitioning="hive").to_table())


def pandas_frame(data: Path, tbl: str):
    """pandas as docs/reading.md shows it (the partitioning given: see test_pandas_needs_the_hive_partitioning_given)."""
    pd = need("pandas")
    import pyarrow.dataset as ds
    return pd.read_parquet(data / "lake" / tbl, partitioning=ds.partitioning(flavor="hive"))


def pandas(data: Path, tbl: str) -> Sig:
    df = pandas_frame(data, tbl)
    cols = [df[c].tolist() for c in ("team", "team_id", "date", *KEYS[tbl])]
    return Sig(zip(*cols), len(df), df["log_offset"].sum(), df[NUM[tbl]].sum())


def polars_frame(data: Path, tbl: str):
    pl = need("polars")
    return pl.scan_parquet(f"{data}/lake/{tbl}/**/*.parquet", hive_partitioning=True)


def polars(data: Path, tbl: str) -> Sig:
    import polars as pl
    lf = polars_frame(data, tbl)
    rows = lf.select("team", "team_id", pl.col("date").cast(pl.String), *KEYS[tbl]).collect().rows()
    aggs = lf.select(pl.len(), pl.col("log_offset").sum().alias("o"), pl.col(NUM[tbl]).sum().alias("n")).collect().row(0)
    return Sig(rows, *aggs)


def spark_sig(spark, data: Path, tbl: str) -> Sig:
    from pyspark.sql import functions as F
    df = spark.read.parquet(str(data / "lake" / tbl))
    rows = df.select("team", "team_id", F.col("date").cast("string"), *KEYS[tbl]).collect()
    aggs = df.agg(F.count(F.lit(1)), F.sum("log_offset"), F.sum(NUM[tbl])).collect()[0]
    return Sig(rows, *aggs)


def iceberg_sig(catalog, tbl: str) -> Sig:
    """Iceberg tables hold the files' columns only: no path `team` (team_id stands in)."""
    return arrow_sig(tbl, catalog.load_table(f"pushlake.{tbl}").scan().to_arrow(), team="team_id")


# -- the lake is what it was built to be -----------------------------------------------------------

def test_the_lake_has_every_case(lake):
    data = lake.data
    assert lake.merges >= 1, "no merge happened"
    with queries.connect(data) as con:
        assert set(con.execute("SELECT team_id, itin_id FROM trips").fetchall()) == lake.trips
        assert con.execute("SELECT count(DISTINCT date) FROM trips").fetchone()[0] == 3
        assert con.execute("SELECT count(DISTINCT date) FROM crashes").fetchone()[0] == 2
        assert con.execute("SELECT n_samples FROM trips WHERE itin_id = ?", [itin_id(1)]).fetchone()[0] == 6
        assert con.execute("SELECT probability FROM crashes WHERE crash_id = 'crash-a'").fetchone()[0] == 99
        assert con.execute("SELECT count(*) FROM trip_deletions").fetchone()[0] == 4
        assert con.execute("SELECT count(*) FROM diagnoses").fetchone()[0] == 3
        for t in TABLES:
            assert con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] > 0, t
    # the replaced files wait out the retention outside the tree: reading files/ would double count
    assert len(hive.store_files(data)) > len(hive.public_files(data))


# -- every engine, every table -------------------------------------------------------------------

PLAIN = {"duckdb": duckdb_glob, "duckdb-cli": duckdb_cli, "pyarrow": pyarrow_dataset, "pandas": pandas,
         "polars": polars}


@pytest.mark.parametrize("tbl", TABLES)
@pytest.mark.parametrize("engine", PLAIN)
def test_a_plain_reader_sees_the_views(lake, engine, tbl):
    assert PLAIN[engine](lake.data, tbl) == views(lake.data, tbl)


@pytest.mark.parametrize("tbl", TABLES)
def test_spark_sees_the_views(lake, spark, tbl):
    assert spark_sig(spark, lake.data, tbl) == views(lake.data, tbl)


@pytest.mark.parametrize("tbl", TABLES)
def test_the_iceberg_mirror_holds_the_views(lake, iceberg, tbl):
    assert iceberg_sig(iceberg, tbl) == views(lake.data, tbl)


def test_the_types_each_engine_gives(lake):
    """What docs/reading.md says of `team` and `date`, engine by engine (Spark: below)."""
    pl = need("polars")
    import pyarrow as pa
    import pyarrow.dataset as ds
    data = lake.data
    with queries.connect(data) as con:
        cols = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE trips)").fetchall())
    assert cols["date"] == "DATE" and cols["team_id"] == "VARCHAR" and "team" not in cols
    cols = dict(duckdb.sql(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {glob(data, 'trips')})").fetchall())
    assert (cols["date"], cols["team"]) == ("DATE", "VARCHAR")
    s = ds.dataset(data / "lake" / "trips", partitioning="hive").schema
    assert (s.field("date").type, s.field("team").type) == (pa.string(), pa.string())
    df = pandas_frame(data, "trips")
    assert isinstance(df["date"].iloc[0], str) and "team" in df.columns
    s = polars_frame(data, "trips").collect_schema()
    assert (s["date"], s["team"]) == (pl.String, pl.String)        # the file's text column wins
    s = pl.scan_parquet(f"{data}/lake/trips/**/*.parquet", hive_schema={"team": pl.String, "date": pl.Date}).collect_schema()
    assert s["date"] == pl.Date


def test_the_types_spark_gives(lake, spark):
    f = {x.name: x.dataType.simpleString() for x in spark.read.parquet(str(lake.data / "lake" / "trips")).schema.fields}
    assert (f["date"], f["team"], f["team_id"]) == ("date", "string", "string")


def test_the_types_iceberg_gives(lake, iceberg):
    s = iceberg.load_table("pushlake.trips").schema()
    assert str(s.find_field("date").field_type) == "string" and "team" not in {f.name for f in s.fields}


def test_pandas_needs_the_hive_partitioning_given(lake):
    """A known limit, pinned so that docs/reading.md stays right: ``pd.read_parquet(<dir>)`` with
    no partitioning argument reads the path keys as dictionaries, which clash with the files'
    text `date` column; with ``partitioning=ds.partitioning(flavor="hive")`` (the docs' snippet)
    it reads every row. If pandas ever reads the default, this fails: simplify the snippet."""
    pd = need("pandas")
    import pyarrow as pa
    with pytest.raises(pa.ArrowTypeError, match="date"):
        pd.read_parquet(lake.data / "lake" / "trips")
    assert len(pandas_frame(lake.data, "trips")) == len(views(lake.data, "trips").rows)


async def test_freshness_of_a_deletion(pusher, data):
    """The views drop a deleted trip at the deletion's 200; plain readers once the compactor
    committed its copy-on-write (within a step or two)."""
    for i in range(3):
        await pusher.push("trip", trip(itin_id(i)))
    compact(data)
    status, _ = await pusher.push("trip/event", deletion(itin_id(1)))
    assert status == 200
    assert views(data, "trips").aggs[0] == 2                         # at the 200
    assert duckdb_glob(data, "trips").aggs[0] == 3                   # the file still holds it
    with Compactor(data) as c:
        steps = 0
        while duckdb_glob(data, "trips").aggs[0] != 2:
            c.step()
            steps += 1
            assert steps <= 2, "the copy-on-write took more than two steps"
    for t in ("trips", "trip_samples", "trip_events"):
        assert duckdb_glob(data, t) == views(data, t)


# -- the snippets of docs/reading.md -----------------------------------------------------------------

BLOCK = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
MARK = re.compile(r"^# engine: ([\w-]+)\s*$", re.M)
SNIPPETS = {"duckdb-cli", "duckdb-views", "duckdb-glob", "pandas", "polars", "spark", "iceberg-props", "pyiceberg"}


def snippets() -> dict[str, tuple[str, str]]:
    """{engine: (language, code)} of every ```python and ```sh block of docs/reading.md."""
    out: dict[str, tuple[str, str]] = {}
    for lang, code in BLOCK.findall(DOC.read_text()):
        if lang not in ("python", "sh"):
            continue
        m = MARK.search(code)
        assert m, f"a ```{lang} block of docs/reading.md has no '# engine: NAME' line:\n{code}"
        assert m.group(1) not in out, f"two blocks for engine {m.group(1)}"
        out[m.group(1)] = (lang, code)
    return out


def with_data(code: str, lang: str, data: Path) -> str:
    line = re.compile(r'^DATA = "data".*$' if lang == "python" else r"^DATA=data.*$", re.M)
    assert len(line.findall(code)) == 1, f"the snippet must set DATA once:\n{code}"
    return line.sub(f'DATA = "{data}"' if lang == "python" else f"DATA='{data}'", code)


def test_every_snippet_is_tested():
    assert set(snippets()) == SNIPPETS


def rows_of(engine: str, obj) -> list[dict]:
    """The `trips` a snippet left, as dicts."""
    if engine.startswith("duckdb"):
        return [dict(zip(obj.columns, r)) for r in obj.fetchall()]
    if engine == "pandas":
        return obj.to_dict("records")
    if engine == "polars":
        return (obj.collect() if hasattr(obj, "collect") else obj).to_dicts()
    if engine == "spark":
        return [r.asDict() for r in obj.collect()]
    return obj.to_pylist()  # pyiceberg: a pyarrow Table


def sig_of_rows(rows: list[dict], tbl: str = "trips") -> Sig:
    return Sig([(r.get("team", r["team_id"]), r["team_id"], r["date"], *(r[k] for k in KEYS[tbl])) for r in rows],
               len(rows), sum(r["log_offset"] for r in rows), math.fsum(r[NUM[tbl]] for r in rows))


def per_team(data: Path) -> list[list[str]]:
    with queries.connect(data) as con:
        return [[t, str(n), repr(d)] for t, n, d in con.execute(
            "SELECT team_id, count(*), sum(distance_m) FROM trips GROUP BY team_id ORDER BY team_id").fetchall()]


@pytest.mark.parametrize("engine", sorted(SNIPPETS))
def test_the_snippet_reads_the_views(lake, engine, request, monkeypatch):
    lang, code = snippets()[engine]
    data = lake.data
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if engine == "duckdb-cli":
        duckdb_cli_path()
    if engine in ("iceberg-props", "pyiceberg"):
        request.getfixturevalue("iceberg")   # synced (or skipped: not landed)
    if engine == "spark":
        request.getfixturevalue("spark")     # the snippet's getOrCreate() finds the module's
    code = with_data(code, lang, data)
    if lang == "sh":
        p = subprocess.run(["bash", "-euo", "pipefail", "-c", code], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        if engine == "duckdb-cli":
            out = list(csv.reader(io.StringIO(p.stdout)))
            assert out[0] == ["team", "trips", "distance_m"]
            assert [[t, n, repr(float(d))] for t, n, d in out[1:]] == per_team(data)
        else:
            from lake.iceberg import properties
            assert json.loads(p.stdout) == properties(data)
        return
    need({"pandas": "pandas", "polars": "polars", "pyiceberg": "pyiceberg"}.get(engine, "duckdb"))
    ns: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, f"docs/reading.md:{engine}", "exec"), ns)
    assert "trips" in ns, "the snippet must leave the table in `trips`"
    assert sig_of_rows(rows_of(engine, ns["trips"])) == views(data, "trips")
    assert printed.getvalue().strip(), "the snippet prints what it found"
