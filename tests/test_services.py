"""The real test services of tests/services.py: PostgreSQL and S3 (moto_server) answer like the real ones."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest




def test_postgres_transaction(postgres):  # noqa: F811
    import psycopg

    assert postgres.url == f"postgresql://postgres@127.0.0.1:{postgres.port}/pushlake"
    with psycopg.connect(postgres.url) as con:
        con.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        con.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
        con.commit()
        assert con.execute("SELECT id, v FROM t ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
        con.execute("INSERT INTO t VALUES (3, 'c')")
        con.rollback()
        assert con.execute("SELECT count(*) FROM t").fetchone() == (2,)
        con.execute("DROP TABLE t")
        con.commit()


def test_postgres_two_connections(postgres):  # noqa: F811
    import psycopg

    with psycopg.connect(postgres.dsn) as a, psycopg.connect(postgres.url) as b:
        a.execute("CREATE TABLE shared (x int)")
        a.commit()
        a.execute("INSERT INTO shared VALUES (42)")
        assert b.execute("SELECT count(*) FROM shared").fetchone() == (0,)  # not committed yet
        b.rollback()
        a.commit()
        assert b.execute("SELECT x FROM shared").fetchall() == [(42,)]
        b.rollback()
        assert a.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'pushlake'").fetchone()[0] >= 2
        a.execute("DROP TABLE shared")
        a.commit()


def test_postgres_fresh_database_isolates(postgres):  # noqa: F811
    import psycopg

    one = postgres.fresh_database("iso_one")
    two = postgres.fresh_database("iso_two")
    assert one.endswith("/iso_one") and two.endswith("/iso_two")
    with psycopg.connect(one) as con:
        con.execute("CREATE TABLE only_here (x int)")
        con.execute("INSERT INTO only_here VALUES (1)")
        con.commit()
    with psycopg.connect(two) as con:
        assert con.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
    again = postgres.fresh_database("iso_one")  # dropped and created again: empty
    with psycopg.connect(again) as con:
        assert con.execute("SELECT to_regclass('only_here')").fetchone() == (None,)


@pytest.fixture(scope="module")
def parquet_in_s3(s3):  # noqa: F811
    """A Parquet file written through pyarrow's S3 filesystem: (bucket, key, table)."""
    from pyarrow import fs

    bucket = s3.bucket("lake")
    table = pa.table({"id": list(range(1000)), "team": ["acme", "globex"] * 500})
    s3fs_ = fs.S3FileSystem(
        endpoint_override=s3.host_port, scheme="http", access_key=s3.access_key,
        secret_key=s3.secret_key, region=s3.region,
    )
    pq.write_table(table, f"{bucket}/x.parquet", filesystem=s3fs_)
    return s3fs_, bucket, table


def _s3fs(s3):  # noqa: F811 (the server, not the fixture)
    import s3fs

    return s3fs.S3FileSystem(
        key=s3.access_key, secret=s3.secret_key, endpoint_url=s3.endpoint,
        client_kwargs={"region_name": s3.region}, use_listings_cache=False,
    )


def test_s3_pyarrow_roundtrip(s3, parquet_in_s3):  # noqa: F811
    fs_, bucket, table = parquet_in_s3
    assert s3.endpoint == f"http://127.0.0.1:{s3.port}"
    assert s3.env["AWS_ENDPOINT_URL"] == s3.endpoint and s3.env["AWS_ACCESS_KEY_ID"] == "test"
    assert pq.read_table(f"{bucket}/x.parquet", filesystem=fs_).equals(table)


def test_s3fs_lists(s3, parquet_in_s3):  # noqa: F811
    _, bucket, _ = parquet_in_s3
    listing = _s3fs(s3).ls(bucket, detail=True)
    assert [(e["name"], e["type"]) for e in listing] == [(f"{bucket}/x.parquet", "file")]
    assert listing[0]["size"] > 0


def test_duckdb_reads_s3_through_s3fs(s3, parquet_in_s3):  # noqa: F811
    import duckdb

    _, bucket, _ = parquet_in_s3
    con = duckdb.connect()
    con.register_filesystem(_s3fs(s3))
    rows = con.execute(
        f"SELECT team, count(*), sum(id) FROM read_parquet('s3://{bucket}/x.parquet') GROUP BY team ORDER BY team"
    ).fetchall()
    assert rows == [("acme", 500, sum(range(0, 1000, 2))), ("globex", 500, sum(range(1, 1000, 2)))]
