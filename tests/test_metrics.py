"""``GET /metrics`` and the logs of a real ``pushlake serve --workers 2`` (two receiver processes
and the compactor, in prometheus-client's multi-process mode): exact counter deltas read through
the Prometheus text parser, who may scrape, and the log lines an operator relies on."""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pushlake.config import enterprise_key

from .helpers import ServerProcess, create_team, deletion, run_cli, trip


def request(url: str, body: bytes | None = None, headers: dict | None = None,
            method: str | None = None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def push(srv: ServerProcess, route: str, doc, key: str | None, content_type: str = "application/json") -> int:
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return request(f"{srv.url}/push/{route}", body, headers)[0]


def scrape(srv: ServerProcess, ek: str) -> dict[tuple[str, tuple], float]:
    status, headers, body = request(f"{srv.url}/metrics", headers={"x-dq-enterprise-api-key": ek})
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels) -> float:
    """The sum over every series of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("metrics") / "data"
    key = create_team(data, "acme")
    srv = ServerProcess(data, "--workers", "2", "--log-format", "json", "--access-log", "--iceberg-interval", "0")
    try:
        yield srv, key, enterprise_key(data)[0]
    finally:
        srv.stop()


def wait_for(pred, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_counters_count_every_push_and_refusal_exactly(served):
    srv, key, ek = served
    before = scrape(srv, ek)
    n_trips, n_bad_key, n_no_key, n_not_json, n_wrong_type = 7, 3, 2, 4, 1
    for i in range(n_trips):
        assert push(srv, "trip", trip(f"m{i:023x}"), key) == 200
    assert push(srv, "trip/event", deletion("m" + "0" * 23), key) == 200
    for _ in range(n_bad_key):
        assert push(srv, "trip", trip("x" * 24), "pk_wrong") == 401
    for _ in range(n_no_key):
        assert push(srv, "crash", {"crashId": "c1"}, None) == 401
    for _ in range(n_not_json):
        assert push(srv, "trip", b"{not json", key) == 400
    assert push(srv, "diagnosis", {"userId": "u"}, key, "text/plain") == 415
    after = scrape(srv, ek)

    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)
    # two receiver processes answered these: the sums are whole whichever one did
    assert delta("pushlake_pushes_total", team="acme", kind="trip", status="200", code="ok") == n_trips
    assert delta("pushlake_pushes_total", team="acme", kind="event", status="200", code="ok") == 1
    assert delta("pushlake_pushes_total", team="", kind="trip", status="401", code="invalid_credentials") == n_bad_key
    assert delta("pushlake_pushes_total", team="", kind="crash", status="401", code="missing_credentials") == n_no_key
    assert delta("pushlake_pushes_total", team="acme", kind="trip", status="400", code="invalid_json") == n_not_json
    assert delta("pushlake_pushes_total", team="acme", kind="diagnosis", status="415",
                 code="unsupported_media_type") == n_wrong_type
    assert delta("pushlake_pushes_total") == n_trips + 1 + n_bad_key + n_no_key + n_not_json + n_wrong_type
    # every 200 was timed; every record rode an fsync
    assert delta("pushlake_push_ack_seconds_count", kind="trip") == n_trips
    assert delta("pushlake_push_ack_seconds_count", kind="event") == 1
    assert delta("pushlake_group_commit_records_sum") == n_trips + 1
    assert 1 <= delta("pushlake_log_fsync_seconds_count") <= n_trips + 1
    assert delta("pushlake_push_ack_seconds_bucket", kind="trip", le="+Inf") == n_trips


def test_the_compactor_reports_its_steps_lag_and_counts(served):
    srv, key, ek = served
    bad = trip("f" * 24)
    bad["route"]["latitude"] = bad["route"]["latitude"][:-1]  # accepted (valid JSON), not projectable: FAILED
    assert push(srv, "trip", bad, key) == 200

    def settled():
        s = scrape(srv, ek)
        lag = [v for (n, _), v in s.items() if n == "pushlake_compactor_lag_records"]
        return s if (value(s, "pushlake_failed_items") >= 1 and len(lag) == 2 and not any(lag)
                     and total(s, "pushlake_compactor_records_total") >= 9) else None
    s = wait_for(settled, what="the compactor to project the pushes")
    assert value(s, "pushlake_failed_items") == 1
    assert total(s, "pushlake_compactor_records_total", fate="failed") == 1
    # every record the module's pushes put in the log has exactly one fate: 7 trips, a deletion, this one
    assert total(s, "pushlake_compactor_records_total") == 9
    assert total(s, "pushlake_compactor_steps_total", result="ok") >= 1
    assert total(s, "pushlake_compactor_step_seconds_count") == total(s, "pushlake_compactor_steps_total",
                                                                      result="ok")
    # one series per receiver's partition, both caught up
    parts = sorted(dict(ls)["partition"] for (n, ls) in s if n == "pushlake_compactor_lag_seconds")
    assert parts == ["p0", "p1"]
    assert all(v == 0 for (n, _), v in s.items() if n == "pushlake_compactor_lag_seconds")
    assert value(s, "pushlake_pending_tombstones") == 0  # the deletion was applied
    assert value(s, "pushlake_disk_free_bytes") > 0


def test_queries_are_counted_by_route_and_status(served):
    srv, key, ek = served
    out = json.loads(run_cli("teams", "create", "readers", "--json", data=srv.data).stdout)
    before = scrape(srv, ek)
    h = {"Authorization": f"Bearer {out['adminApiKey']}", "Content-Type": "application/json"}
    assert request(f"{srv.url}/v1/query", b'{"sql": "SELECT 1"}', h)[0] == 200
    assert request(f"{srv.url}/v1/query", b'{"sql": "SELEC nothing"}', h)[0] == 400
    assert request(f"{srv.url}/v1/query", b'{"sql": "SELECT 1"}', {"Content-Type": "application/json"})[0] == 401
    after = scrape(srv, ek)
    for status, n in (("200", 1), ("400", 1), ("401", 1)):
        assert total(after, "pushlake_queries_total", route="query", status=status) - \
            total(before, "pushlake_queries_total", route="query", status=status) == n
        assert total(after, "pushlake_query_seconds_count", route="query", status=status) - \
            total(before, "pushlake_query_seconds_count", route="query", status=status) == n


def test_who_may_scrape(served, tmp_path: Path):
    srv, key, ek = served
    url = f"{srv.url}/metrics"
    status, headers, _ = request(url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert request(url, headers={"x-dq-enterprise-api-key": "ek_wrong"})[0] == 401
    assert request(url, headers={"Authorization": f"Bearer {ek}"})[0] == 200
    basic = base64.b64encode(f"enterprise:{ek}".encode()).decode()
    assert request(url, headers={"Authorization": f"Basic {basic}"})[0] == 200
    wrong = base64.b64encode(b"enterprise:nope").decode()
    assert request(url, headers={"Authorization": f"Basic {wrong}"})[0] == 401
    admin = json.loads(run_cli("teams", "create", "scraper", "--json", data=srv.data).stdout)["adminApiKey"]
    status, _, body = request(url, headers={"Authorization": f"Bearer {admin}"})
    assert status == 403 and json.loads(body)["error"] == "forbidden"
    assert request(url, headers={"Authorization": f"Bearer {key}"})[0] == 401  # a push key reads nothing
    hyper = {"userId": "ops@example.com", "firstname": "O", "lastname": "P", "password": "PnsPYthv4N?zI%CK"}
    assert request(f"{srv.url}/v1/enterprise/hyperadmin", json.dumps(hyper).encode(),
                   {"x-dq-enterprise-api-key": ek, "Content-Type": "application/json"})[0] == 200
    login = base64.b64encode(f"{hyper['userId']}:{hyper['password']}".encode()).decode()
    assert request(url, headers={"Authorization": f"Basic {login}"})[0] == 200


def log_lines(srv: ServerProcess) -> list[dict]:
    """Every line of the server's output is one JSON object (--log-format json)."""
    out = []
    for line in srv.output().splitlines():
        if line.startswith(("Node:", "Created the", "Enterprise API key", "Create a team", "  (or locally",
                            "Push a trip", "API reference")):
            continue  # the start banner, for people, before logging starts
        out.append(json.loads(line))  # fails on a line in another format
    assert out
    return out


def test_refused_pushes_are_logged_with_team_route_and_reason(served):
    srv, key, ek = served
    assert push(srv, "crash", {"crashId": "c-log"}, "pk_nobody") == 401
    big = b'{"itinId": "' + b"a" * 300 + b'"}'
    assert push(srv, "trip", big, key) == 400

    def refused():
        lines = [r for r in log_lines(srv) if r["logger"] == "pushlake.refused"]
        return lines if any(r.get("reason", "").startswith("key field") or r["status"] == 400 for r in lines) \
            and any(r["route"] == "/push/crash" for r in lines) else None
    lines = wait_for(refused, what="the refusals' log lines")
    crash = [r for r in lines if r["route"] == "/push/crash" and r["code"] == "invalid_credentials"][-1]
    assert crash["status"] == 401 and crash["team"] is None and crash["reason"] == "unknown or revoked push key"
    long_key = [r for r in lines if r["route"] == "/push/trip" and r["status"] == 400 and r["team"] == "acme"]
    assert long_key and long_key[-1]["code"] == "missing_key"
    # nothing of the credentials is logged
    assert "pk_nobody" not in srv.output()


def test_access_log_and_listening_lines(served):
    srv, key, ek = served
    assert request(f"{srv.url}/health")[0] == 200

    def accessed():
        return [r for r in log_lines(srv) if r["logger"] == "pushlake.access" and r["path"] == "/health"]
    line = wait_for(accessed, what="the access log line")[-1]
    assert line["method"] == "GET" and line["status"] == 200 and line["duration_ms"] >= 0
    logged = json.dumps(log_lines(srv))
    assert ek not in logged and key not in logged  # the scrapes' and pushes' credentials
    listening = [r["message"] for r in log_lines(srv) if "listening on" in r["message"]]
    assert sorted(listening) == [f"receiver p{i} listening on http://127.0.0.1:{srv.port}" for i in (0, 1)]


def test_listening_is_logged_only_once_the_port_is_bound(tmp_path: Path):
    """A script that waits for the line can connect at once (the line used to come first)."""
    import subprocess

    from .helpers import PUSHLAKE, ROOT, free_port
    port = free_port()
    proc = subprocess.Popen([*PUSHLAKE, "serve", "--data", str(tmp_path / "d"), "--port", str(port), "--min-free",
                             "0", "--no-compactor"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        for line in proc.stderr:
            if "listening on" in line:
                break
            assert time.monotonic() < deadline, "no listening line"
        else:
            raise AssertionError("serve ended without a listening line")
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
        assert f"receiver p0 listening on http://127.0.0.1:{port}" in line
    finally:
        proc.terminate()
        proc.wait(15)


def test_a_compactor_that_cannot_commit_shows_as_lag_then_far_behind(tmp_path: Path):
    """Every commit fails (an injected I/O error): the records wait, the lag in records and seconds
    says so, and past --max-lag /health is degraded with the reason (503, for load balancers)."""
    data = tmp_path / "data"
    key = create_team(data, "acme")
    srv = ServerProcess(data, "--max-lag", "1", "--iceberg-interval", "0",
                        env={"PUSHLAKE_FAILPOINT": "compactor.before_commit=eio"})
    try:
        ek = enterprise_key(data)[0]
        for i in range(2):
            assert push(srv, "trip", trip(f"l{i:023x}"), key) == 200

        def far_behind():
            status, _, body = request(f"{srv.url}/health")
            return (status, json.loads(body)) if status == 503 else None
        status, health = wait_for(far_behind, what="/health to turn degraded")
        assert health["status"] == "degraded" and health["compactor"]["lagRecords"] == 2
        assert health["compactor"]["lagSeconds"] > 1
        assert any(r.startswith("compactor far behind: 2 record(s) waiting") for r in health["reasons"]), health
        s = wait_for(lambda: (lambda s: s if value(s, "pushlake_health_degraded", partition="p0") == 1 else None)(
            scrape(srv, ek)), what="the degraded gauge")
        assert value(s, "pushlake_compactor_lag_records", partition="p0") == 2
        assert value(s, "pushlake_compactor_lag_seconds", partition="p0") > 1
        assert total(s, "pushlake_compactor_steps_total", result="failed") >= 1
        assert total(s, "pushlake_compactor_records_total") == 0
    finally:
        srv.stop()
