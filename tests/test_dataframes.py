"""`queries.connect()` results as pandas and Polars DataFrames (the `pushlake[pandas]` and
`pushlake[polars]` extras), with the same rows and types as the views, deleted trips excluded."""
from __future__ import annotations

import datetime as dt

import orjson
import pandas as pd
import polars as pl

import queries
from ingest.log import LogWriter
from ingest.record import Kind
from lake.catalog import Catalog
from tests.conftest import compact
from tests.helpers import ROOT, itin_id, trip


def test_results_convert_to_pandas_and_polars(data):
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_750_000_000_000_000 + i, "acme", itin_id(i),
               orjson.dumps(trip(itin_id(i), user=f"d{i}", start=f"2025-03-0{1 + i}T10:00:00.000+0000")))
              for i in range(3)])
    w.close()
    compact(data)
    cat = Catalog(data)
    cat.add_tombstones([("acme", itin_id(2), "p0", 999, 0.0)])  # deleted: in neither frame
    cat.close()
    sql = "SELECT itin_id, user_id, date, distance_m FROM trips ORDER BY itin_id"
    with queries.connect(data) as con:
        df = con.execute(sql).df()
        assert isinstance(df, pd.DataFrame)
        assert df["itin_id"].tolist() == [itin_id(0), itin_id(1)] and df["user_id"].tolist() == ["d0", "d1"]
        assert [d.date() for d in pd.to_datetime(df["date"])] == [dt.date(2025, 3, 1), dt.date(2025, 3, 2)]
        assert df["distance_m"].dtype == "float64"
        frame = con.sql(sql).pl()
        assert isinstance(frame, pl.DataFrame)
        assert frame["itin_id"].to_list() == [itin_id(0), itin_id(1)]
        assert frame.schema["date"] == pl.Date and frame.schema["distance_m"] == pl.Float64
        assert frame["distance_m"].to_list() == df["distance_m"].tolist()
    with queries.connect(data, team="acme") as con:  # a team's confined connection converts the same way
        assert con.sql("SELECT count(*) AS n FROM trips").pl()["n"].to_list() == [2]
        assert con.execute("SELECT count(*) AS n FROM trips").df()["n"].tolist() == [2]


def test_the_guide_s_python_runs(data, monkeypatch):
    """docs/sql.md's Python snippet, as written, on a lake in ./data."""
    w = LogWriter(data, 0)
    w.append([(Kind.TRIP, 1_750_000_000_000_000 + i, "acme", itin_id(i), orjson.dumps(trip(itin_id(i))))
              for i in range(2)])
    w.close()
    compact(data)
    text = (ROOT / "docs" / "sql.md").read_text()
    snippet = text.split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(data.parent)
    scope: dict = {}
    exec(compile(snippet, "docs/sql.md", "exec"), scope)
    assert isinstance(scope["trips"], pd.DataFrame) and len(scope["trips"]) == 2
    assert isinstance(scope["per_day"], pl.DataFrame) and scope["per_day"]["n"].to_list() == [2]
