"""The status page: its history (pushlake.history) from metrics text, and the page itself in a real
headless Chromium against a real ``pushlake serve`` (charts drawn from the pushes made, current
numbers, no console error, no failed request, a screenshot kept), protected like /metrics."""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pushlake import history, metrics
from pushlake.api import status as status_page
from pushlake.api.status import fmt_bytes
from tests.helpers import ServerProcess, fixture, trip
from tests.services import unavailable

PASSWORD = "PnsPYthv4N?zI%CK"
OPERATOR = "ops@example.com"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# -- the history, from metrics text ---------------------------------------------------------------------
class Registry:
    """The service's push metrics in a registry of their own: real exposition text to sample."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pushes = Counter("pushlake_pushes", "", ["team", "kind", "status", "code"], registry=self.registry)
        self.ack = Histogram("pushlake_push_ack_seconds", "", ["kind"], buckets=metrics.LATENCY,
                             registry=self.registry)
        self.lag = Gauge("pushlake_compactor_lag_records", "", ["partition"], registry=self.registry)
        self.lag_s = Gauge("pushlake_compactor_lag_seconds", "", ["partition"], registry=self.registry)
        self.failed = Gauge("pushlake_failed_items", "", registry=self.registry)
        self.disk = Gauge("pushlake_disk_free_bytes", "", registry=self.registry)

    def snap(self) -> history.Snapshot:
        return history.Snapshot(generate_latest(self.registry).decode())


T0 = 1_767_225_600  # 2026-01-01T00:00:00Z, a minute's start


def test_counters_become_per_minute_deltas_by_team_kind_and_outcome():
    r = Registry()
    r.pushes.labels("acme", "trip", "200", "ok").inc(40)  # before the sampler: the baseline
    s = history.Sampler()
    first = s.sample(r.snap(), T0 + 5)
    assert first["pushes"] == {} and first["t"] == T0  # the minute exists from the first sample
    r.pushes.labels("acme", "trip", "200", "ok").inc(3)
    r.pushes.labels("acme", "trip", "400", "missing_key").inc()
    r.pushes.labels("acme", "crash", "200", "ok").inc(2)
    r.pushes.labels("", "diagnosis", "401", "invalid_credentials").inc()
    s.sample(r.snap(), T0 + 15)
    r.pushes.labels("globex", "trip", "200", "ok").inc(5)
    s.sample(r.snap(), T0 + 65)  # the next minute
    doc = s.document()
    assert [m["t"] for m in doc["minutes"]] == [T0, T0 + 60]
    assert doc["minutes"][0]["pushes"] == {"acme": {"trip": {"ok": 3, "refused": 1}, "crash": {"ok": 2, "refused": 0}},
                                           "": {"diagnosis": {"ok": 0, "refused": 1}}}
    assert doc["minutes"][1]["pushes"] == {"globex": {"trip": {"ok": 5, "refused": 0}}}
    assert doc["sampledAt"] == T0 + 65


def test_under_serve_the_first_sample_counts_from_zero():
    """serve empties the metrics directory at start: every count in it is new."""
    r = Registry()
    r.pushes.labels("acme", "trip", "200", "ok").inc(2)
    s = history.Sampler(from_zero=True)
    assert s.sample(r.snap(), T0)["pushes"] == {"acme": {"trip": {"ok": 2, "refused": 0}}}


def test_a_counter_lower_than_before_starts_a_new_baseline():
    s = history.Sampler(from_zero=True)
    before, after = Registry(), Registry()  # a restarted process: its counters start again
    before.pushes.labels("acme", "trip", "200", "ok").inc(10)
    s.sample(before.snap(), T0)
    after.pushes.labels("acme", "trip", "200", "ok").inc(4)
    s.sample(after.snap(), T0 + 70)
    after.pushes.labels("acme", "trip", "200", "ok").inc(1)
    s.sample(after.snap(), T0 + 80)
    counts = [m["pushes"]["acme"]["trip"]["ok"] for m in s.document()["minutes"]]
    assert counts == [10, 5]  # 4 counted from zero, then +1; never 4 - 10


def test_ack_latency_quantiles_from_the_minute_s_bucket_deltas():
    r = Registry()
    s = history.Sampler(from_zero=True)
    for _ in range(50):
        r.ack.labels("trip").observe(0.002)   # bucket (0.001, 0.0025]
    for _ in range(49):
        r.ack.labels("crash").observe(0.004)  # bucket (0.0025, 0.005]
    r.ack.labels("trip").observe(0.07)        # bucket (0.05, 0.1]
    m = s.sample(r.snap(), T0)
    assert m["ack"] == {"0.0025": 50, "0.005": 49, "0.1": 1} and m["acks"] == 100
    assert m["ackP50"] == pytest.approx(0.0025)  # the 50th of 50 in (0.001, 0.0025]: its top
    assert m["ackP99"] == pytest.approx(0.005)
    for _ in range(100):
        r.ack.labels("trip").observe(0.0003)  # (0.00025, 0.0005], next minute
    m2 = s.sample(r.snap(), T0 + 60)
    assert m2["acks"] == 100 and m2["ackP50"] == pytest.approx(0.000375)  # halfway through its bucket
    assert history.quantile({"+Inf": 3}, 0.5) == max(metrics.LATENCY)  # beyond the last bound: that bound
    assert history.quantile({}, 0.5) is None


def test_gauges_lag_is_the_worst_over_partitions_and_samples():
    r = Registry()
    s = history.Sampler(from_zero=True)
    r.lag.labels("p0").set(7)
    r.lag.labels("p1").set(30)
    r.lag_s.labels("p1").set(4.5)
    r.failed.set(2)
    r.disk.set(123_456)
    s.sample(r.snap(), T0)
    r.lag.labels("p1").set(1)
    r.failed.set(3)
    m = s.sample(r.snap(), T0 + 30)
    assert (m["lagRecords"], m["lagSeconds"], m["failed"], m["diskFree"]) == (30, 4.5, 3, 123_456)
    assert m["tombstones"] is None  # no process reported it
    now = r.snap().current()
    assert now["lagRecords"] == 7 and now["failedItems"] == 3
    assert now["partitions"] == [{"partition": "p0", "lagRecords": 7, "lagSeconds": None, "degraded": False},
                                 {"partition": "p1", "lagRecords": 1, "lagSeconds": 4.5, "degraded": False}]


def test_six_hours_are_kept():
    s = history.Sampler(from_zero=True)
    r = Registry()
    for i in range(400):
        s.sample(r.snap(), T0 + i * 60)
    minutes = s.document()["minutes"]
    assert len(minutes) == history.KEEP_MINUTES == 360
    assert minutes[0]["t"] == T0 + 40 * 60 and minutes[-1]["t"] == T0 + 399 * 60


def test_run_writes_an_owner_only_file_that_a_restart_continues(data: Path):
    r = Registry()
    stop = threading.Event()
    stop.set()  # one sample, then return
    r.pushes.labels("acme", "trip", "200", "ok").inc(2)
    history.run(data, stop, read=lambda: generate_latest(r.registry))
    path = data / history.FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in data.iterdir() if p.name != history.FILE]  # no temporary file left
    first = history.load(data)
    assert len(first["minutes"]) == 1 and first["minutes"][0]["pushes"] == {}  # the baseline (no serve)

    # a later run (a restart) keeps the minutes it reads back and appends to them
    doc = dict(first)
    doc["minutes"] = [{**first["minutes"][0], "t": first["minutes"][0]["t"] - 120,
                       "pushes": {"acme": {"trip": {"ok": 9, "refused": 0}}}}]
    history.save(data, doc)
    history.run(data, stop, read=lambda: generate_latest(r.registry))
    again = history.load(data)
    assert [m["pushes"] for m in again["minutes"]] == [{"acme": {"trip": {"ok": 9, "refused": 0}}}, {}]


def test_an_unreadable_history_is_an_empty_one(data: Path):
    (data / history.FILE).write_text("{not json")
    assert history.load(data) == history.empty()
    (data / history.FILE).write_text(json.dumps({"version": 99, "minutes": []}))
    assert history.load(data) == history.empty()
    assert history.load(data / "missing") == history.empty()


def test_the_window_spans_the_history_within_the_hours_asked(data: Path):
    now = T0 + 5 * 3600 + 30  # 05:00:30
    minutes = [{"t": now // 60 * 60 - k * 60, "pushes": {"acme": {"trip": {"ok": 1, "refused": 0}}}}
               for k in (0, 30, 150, 299)]  # 05:00, 04:30, 02:30, 00:01
    history.save(data, {"version": history.VERSION, "sampledAt": now, "minutes": sorted(minutes, key=lambda m: m["t"])})
    ok = {"status": "ok", "reasons": [], "partition": "p0"}
    for hours, start, n, pushed in ((1, "04:01", 60, 2), (3, "02:01", 180, 3), (6, "00:01", 300, 4)):
        doc = status_page.report(data, hours, ok, now=now)
        assert (doc.window.start[11:16], doc.window.end[11:16], doc.window.minutes) == (start, "05:00", n)
        assert [(c.team, c.kind, c.ok) for c in doc.totals] == [("acme", "trip", pushed)]
    history.save(data, {"version": history.VERSION, "sampledAt": now, "minutes": minutes[:1]})
    fresh = status_page.report(data, 6, ok, now=now)  # one minute of history: the last hour all the same
    assert fresh.window.minutes == status_page.MIN_SPAN_MINUTES


def test_a_degraded_receiver_shows_its_reasons_escaped(data: Path):
    doc = status_page.report(data, 6, {"status": "degraded", "partition": "p0",
                                  "reasons": ["free disk space is below the <safety> threshold"]})
    page = status_page.page(doc, "ops@example.com", 6, 10)
    assert 'class="card bad" id="card-health"' in page and ">DEGRADED<" in page
    assert "<li>free disk space is below the &lt;safety&gt; threshold</li>" in page
    assert "no history sampled yet" in page and "no pushes in this window" in page


# -- the page, in a real server and a real browser ------------------------------------------------------
class Http:
    """Plain requests to the server, redirects not followed."""

    def __init__(self, port: int):
        self.port = port

    def __call__(self, method: str, path: str, body=None, headers: dict | None = None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        h = {"Content-Type": "application/json", **(headers or {})} if data is not None else dict(headers or {})
        c.request(method, path, body=data, headers=h)
        resp = c.getresponse()
        out = resp.status, dict(resp.getheaders()), resp.read()
        c.close()
        return out


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


# what the module's server is pushed: team -> kind -> (ok, refused)
PUSHED = {"acme": {"trip": (3, 0), "crash": (2, 0), "diagnosis": (1, 0)},
          "globex": {"trip": (2, 1)}}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    data = tmp_path_factory.mktemp("status") / "data"
    data.mkdir()
    server = ServerProcess(data, env={history.ENV_EVERY: "1"})
    try:
        call = Http(server.port)
        ek = {"x-dq-enterprise-api-key": (data / "enterprise.key").read_text().strip()}
        teams = {}
        for team in PUSHED:
            status, _, body = call("POST", "/v1/enterprise/team", {"teamId": team}, ek)
            assert status == 200, body
            teams[team] = json.loads(body)
        status, _, body = call("POST", "/v1/enterprise/hyperadmin", {"userId": OPERATOR, "firstname": "Olive",
                                                                     "lastname": "Ops", "password": PASSWORD}, ek)
        assert status == 200, body
        n = 0
        for team, kinds in PUSHED.items():
            auth = {"Authorization": f"Bearer {teams[team]['pushApiKey']}"}
            for kind, (ok, refused) in kinds.items():
                for _ in range(ok):
                    n += 1
                    body = {"trip": trip(f"{n:024x}"), "crash": {**fixture("crash.json"), "crashId": f"c{n}"},
                            "diagnosis": {"userId": f"u{n}"}}[kind]
                    assert call("POST", f"/push/{kind}", body, auth)[0] == 200
                for _ in range(refused):
                    assert call("POST", f"/push/{kind}", {"no": "key"}, auth)[0] == 400
        assert call("POST", "/push/crash", {"crashId": "x"}, {"Authorization": "Bearer pk_nope"})[0] == 401
        want = sorted((t, k, ok, ref) for t, kinds in PUSHED.items() for k, (ok, ref) in kinds.items())
        want = sorted(want + [("", "crash", 0, 1)])
        deadline = time.monotonic() + 15
        while True:  # the sampler (every second) has seen every push, the compactor has reported
            status, _, body = call("GET", "/status.json", headers=ek)
            assert status == 200, body
            doc = json.loads(body)
            if (sorted((c["team"], c["kind"], c["ok"], c["refused"]) for c in doc["totals"]) == want
                    and doc["current"]["failedItems"] is not None):
                break
            assert time.monotonic() < deadline, f"the history never showed the pushes: {doc}"
            time.sleep(0.2)
        yield {"server": server, "data": data, "call": call, "ek": ek, "teams": teams, "doc": doc}
    finally:
        server.kill()  # its data is thrown away: no need for serve's graceful stop (seconds)
        server.log.close()


def chromium() -> str:
    path = shutil.which("chromium") or ("/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None)
    if path is None:
        unavailable("Debian's chromium is not installed (make test-services installs it)")
    return path


def totals(page) -> dict[str, list[int]]:
    """The totals table: team -> pushes accepted per kind (trip, event, crash, diagnosis), refused."""
    assert page.eval_on_selector_all("#totals th", "hs => hs.map(h => h.innerText)") == [
        "team", "trip", "event", "crash", "diagnosis", "refused"]
    rows = page.eval_on_selector_all("#totals tr[data-team]", "rs => rs.map(r => [r.dataset.team, "
                                     "Array.from(r.cells).slice(1).map(c => Number(c.innerText))])")
    return dict(rows)


def test_the_status_page_in_a_real_browser(site, tmp_path):
    exe = chromium()
    from playwright.sync_api import expect, sync_playwright
    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(http_credentials={"username": OPERATOR, "password": PASSWORD},
                                          viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} {r.failure}"))
            resp = page.goto(site["server"].url + "/?refresh=1")  # / redirects, the login is asked and given
            assert resp.status == 200 and resp.url == site["server"].url + "/status?refresh=1"
            assert "default-src 'none'" in resp.headers["content-security-policy"]

            # the pushes chart: one bar per team, kind and minute, adding up to what was pushed
            bars = page.eval_on_selector_all(
                "#chart-pushes rect[data-outcome]", "rs => rs.map(r => [r.dataset.team, r.dataset.kind, "
                "r.dataset.outcome, Number(r.dataset.value), r.getBBox().height])")
            drawn: dict = {}
            for team, kind, outcome, value, height in bars:
                assert height > 0
                key = (team, kind) if outcome == "ok" else ("refused",)
                drawn[key] = drawn.get(key, 0) + value
            assert drawn == {**{(t, k): ok for t, kinds in PUSHED.items() for k, (ok, _) in kinds.items()},
                             ("refused",): 2}
            assert page.inner_text("#legend-pushes li[data-team=acme]") == "acme: trip 3 crash 2 diagnosis 1"
            assert page.inner_text("#legend-pushes li[data-team='']") == "refused 2"
            assert totals(page) == {"acme": [3, 0, 2, 1, 0], "globex": [2, 0, 0, 0, 1], "": [0, 0, 0, 0, 1]}

            # the latency and lag charts drew their series (a line, or a dot for a lone minute)
            for chart, series in (("ack", ("ackP50", "ackP99")), ("lag-records", ("lagRecords",)),
                                  ("lag-seconds", ("lagSeconds",))):
                for name in series:
                    assert page.locator(f"#chart-{chart} [data-series={name}]").count() >= 1, (chart, name)
            acked = [m for m in site["doc"]["minutes"] if m["acks"]]
            assert sum(m["acks"] for m in acked) == sum(ok for k in PUSHED.values() for ok, _ in k.values())
            assert all(0 < m["ackP50"] <= m["ackP99"] < 10 for m in acked)

            # the current numbers
            assert page.inner_text("#card-failed .v") == "0"
            assert page.inner_text("#card-tombstones .v") == "0"
            assert page.inner_text("#card-health .v") == "OK"
            disk = page.inner_text("#card-disk")
            assert re.search(r"\d+\.\d [KMGT]iB", disk)
            assert f"of {fmt_bytes(shutil.disk_usage(site['data']).total)}" in disk
            assert page.inner_text("#card-pushes .v") == str(sum(ok for k in PUSHED.values() for ok, _ in k.values()))

            # it refreshes itself: a new push shows within seconds, without a reload
            auth = {"Authorization": f"Bearer {site['teams']['acme']['pushApiKey']}"}
            assert site["call"]("POST", "/push/crash", {"crashId": "late"}, auth)[0] == 200
            expect(page.locator("#totals tr[data-team=acme] td[data-kind=crash]")).to_have_text("3", timeout=10_000)
            assert totals(page)["acme"] == [3, 0, 3, 1, 0]

            shots = [tmp_path / "status.png"]
            if os.environ.get("PUSHLAKE_SCREENSHOT_DIR"):
                Path(os.environ["PUSHLAKE_SCREENSHOT_DIR"]).mkdir(parents=True, exist_ok=True)
                shots.append(Path(os.environ["PUSHLAKE_SCREENSHOT_DIR"]) / "status.png")
            for shot in shots:
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000
                print(f"status page screenshot: {shot}")
        finally:
            browser.close()
    assert problems == []


def test_the_page_and_its_data_are_for_operators_only(site):
    call, server = site["call"], site["server"]
    for path in ("/status", "/status.json"):
        status, headers, body = call("GET", path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        status, _, body = call("GET", path, headers={"Authorization": f"Bearer {site['teams']['acme']['adminApiKey']}"})
        assert (status, json.loads(body)["error"]) == (403, "forbidden")
        status, _, body = call("GET", path, headers=basic(OPERATOR, "wrong" + PASSWORD))
        assert status == 401
        status, headers, body = call("GET", path, headers=basic(OPERATOR, PASSWORD))
        assert status == 200 and "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        status, _, body = call("GET", path + "?hours=7", headers=site["ek"])
        assert (status, json.loads(body)["error"]) == (400, "invalid_request")
    status, headers, _ = call("GET", "/")
    assert status == 302 and headers["Location"] == "/status"
    status, headers, _ = call("GET", "/?hours=1")
    assert status == 302 and headers["Location"] == "/status?hours=1"
    # the page is one document: nothing it could load from elsewhere
    page = call("GET", "/status", headers=site["ek"])[2].decode()
    assert not re.search(r"""(src|href)=["'](?!data:|\?|#)""", page)
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
    assert stat.S_IMODE((server.data / history.FILE).stat().st_mode) == 0o600
