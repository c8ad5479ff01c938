"""The status page: ``GET /status`` for a person, ``GET /status.json`` for scripts and the page's
own refresh, ``GET /`` redirecting to the page.

One self-contained HTML page: inline CSS, a small inline script, charts drawn here as SVG, no
external resource at all (the Content-Security-Policy forbids any), so it works offline and
behind any proxy. What it shows comes from ``pushlake.history`` (one point per minute, sampled by
``serve``'s supervisor) for the charts, and from every process's metrics, the disk and this
receiver's ``/health`` at the request for the current numbers. Protected like ``/metrics``
(``operators.operator``): a browser gets a Basic login prompt for a hyper-admin.
"""
from __future__ import annotations

import asyncio
import hashlib
import html
import math
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import orjson
from aiohttp import web

from ingest.app import SETTINGS, error, health
from ingest.record import Kind
from pushlake import history, metrics

from .bodies import Response, text
from .operators import operator

MAX_HOURS = history.KEEP_MINUTES // 60
DEFAULT_REFRESH_S = 10
MIN_SPAN_MINUTES = 60  # the charts span at least the last hour, even on a fresh install
CSP = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer"}
UTC = "%Y-%m-%dT%H:%M:%SZ"


# -- the document (status.json; the page is drawn from it) ----------------------------------------------
class PushCount(Response):
    """Pushes answered for one team and kind."""
    team: Annotated[str, text("The team; empty for refusals whose credentials named no team.")]
    kind: Annotated[str, text("trip, event, crash or diagnosis.")]
    ok: Annotated[int, text("Answered 200 (stored durably).")]
    refused: Annotated[int, text("Answered anything else (nothing stored).")]


class StatusMinute(Response):
    """One minute of the history (every field null when no process reported it)."""
    time: Annotated[str, text("Start of the minute, UTC (`yyyy-MM-ddTHH:mm:ssZ`).")]
    pushes: list[PushCount]
    acks: Annotated[int, text("Pushes acknowledged (200) in the minute, every kind.")]
    ackP50: Annotated[float | None, text("Median time from arrival to 200, seconds.")]
    ackP99: Annotated[float | None, text("99th percentile of that time, seconds.")]
    lagRecords: Annotated[int | None, text("Most records waiting for the compactor, over partitions and samples.")]
    lagSeconds: Annotated[float | None, text("Largest age of the oldest record waiting for the compactor.")]
    failedItems: Annotated[int | None, text("FAILED items at the minute's last sample.")]
    pendingTombstones: Annotated[int | None, text("Deletions not yet applied to the lake's files.")]
    diskFreeBytes: Annotated[int | None, text("Free space of the data directory's file system.")]


class PartitionLag(Response):
    """The compactor over one log partition."""
    partition: str
    lagRecords: Annotated[int | None, text("Records not yet projected.")]
    lagSeconds: Annotated[float | None, text("Age of the oldest of them, seconds (0 when caught up).")]
    degraded: Annotated[bool, text("Its receiver's `/health` answers degraded.")]


class StatusCurrent(Response):
    """The numbers now (null when no process reported them yet)."""
    failedItems: Annotated[int | None, text("Pushes in the log that could not be projected (`pushlake failed list`).")]
    pendingTombstones: Annotated[int | None, text("Deletions published but not yet applied to the lake's files.")]
    diskFreeBytes: Annotated[int, text("Free space of the data directory's file system.")]
    diskTotalBytes: Annotated[int, text("Size of that file system.")]
    lagRecords: Annotated[int | None, text("Records waiting for the compactor, the most over partitions.")]
    lagSeconds: Annotated[float | None, text("Age of the oldest waiting record, the most over partitions.")]
    partitions: list[PartitionLag]


class StatusHealth(Response):
    """This receiver's `/health`."""
    status: Literal["ok", "degraded"]
    reasons: Annotated[list[str], text("Why it is degraded, one sentence each.")]
    partition: Annotated[str, text("The log partition of the receiver that answered.")]


class StatusWindow(Response):
    """The minutes the charts span."""
    start: Annotated[str, text("First minute, UTC.")]
    end: Annotated[str, text("Last minute (the current one), UTC.")]
    minutes: Annotated[int, text("Minutes spanned.", ge=1)]


class StatusReport(Response):
    """What the status page shows."""
    generatedAt: Annotated[str, text("When this answer was made, UTC.")]
    sampledAt: Annotated[str | None, text("The history's last sample, UTC (null before the first one).")]
    revision: Annotated[str, text("Changes whenever anything but `generatedAt` does.")]
    window: StatusWindow
    health: StatusHealth
    current: StatusCurrent
    totals: Annotated[list[PushCount], text("Pushes per team and kind over the window.")]
    minutes: Annotated[list[StatusMinute], text("The window's sampled minutes, oldest first (a minute "
                                                "without a sample, the service down, is left out).")]


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime(UTC)


def _counts(pushes: dict) -> list[PushCount]:
    return [PushCount(team, kind, int(c.get("ok", 0)), int(c.get("refused", 0)))
            for team, kinds in sorted(pushes.items()) for kind, c in sorted(kinds.items())]


def _int(v) -> int | None:
    return None if v is None else int(v)


def report(data_dir: Path, hours: int, health_body: dict, now: float | None = None) -> StatusReport:
    """The document, from the history, every process's metrics and the disk (blocking: reads files)."""
    now = time.time() if now is None else now
    hist = history.load(data_dir)
    snap = history.Snapshot(metrics.exposition().decode()).current()
    disk = shutil.disk_usage(data_dir)
    end = int(now // 60) * 60
    first = min((m["t"] for m in hist["minutes"] if m["t"] <= end), default=end)
    start = max(end - (hours * 60 - 1) * 60, min(first, end - (MIN_SPAN_MINUTES - 1) * 60))
    minutes, totals = [], {}
    for m in hist["minutes"]:
        if not start <= m["t"] <= end:
            continue
        for team, kinds in m.get("pushes", {}).items():
            for kind, c in kinds.items():
                t = totals.setdefault(team, {}).setdefault(kind, {"ok": 0, "refused": 0})
                t["ok"] += int(c.get("ok", 0))
                t["refused"] += int(c.get("refused", 0))
        minutes.append(StatusMinute(
            _utc(m["t"]), _counts(m.get("pushes", {})), int(m.get("acks") or 0), m.get("ackP50"), m.get("ackP99"),
            _int(m.get("lagRecords")), m.get("lagSeconds"), _int(m.get("failed")), _int(m.get("tombstones")),
            _int(m.get("diskFree"))))
    doc = StatusReport(
        generatedAt=_utc(now), sampledAt=_utc(hist["sampledAt"]) if hist.get("sampledAt") else None, revision="",
        window=StatusWindow(_utc(start), _utc(end), (end - start) // 60 + 1),
        health=StatusHealth(health_body.get("status", "ok"), list(health_body.get("reasons", [])),
                            health_body.get("partition", "")),
        current=StatusCurrent(
            failedItems=snap["failedItems"], pendingTombstones=snap["pendingTombstones"],
            diskFreeBytes=disk.free, diskTotalBytes=disk.total, lagRecords=snap["lagRecords"],
            lagSeconds=snap["lagSeconds"], partitions=[PartitionLag(**p) for p in snap["partitions"]]),
        totals=_counts(totals), minutes=minutes)
    doc.generatedAt, stamp = "", doc.generatedAt
    doc.revision = hashlib.sha256(msgspec.json.encode(doc)).hexdigest()[:16]
    doc.generatedAt = stamp
    return doc


# -- formatting -----------------------------------------------------------------------------------------
def _e(s) -> str:
    return html.escape(str(s), quote=True)


def fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}".replace(",", "\u202f")


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def fmt_latency(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1000:.3g} ms" if s < 1 else f"{s:.3g} s"


def fmt_age(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def _team(team: str) -> str:
    return team or "(no team)"


# -- charts (SVG) ---------------------------------------------------------------------------------------
W, HALF, H = 960, 470, 200  # the viewBox: a full-width chart, a half-width one, and their height
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 10, 24
PH = H - TOP - BOTTOM
HUES = (217, 142, 27, 271, 188, 45, 325, 95, 250, 165)  # one per team: blue, green, orange, purple...
SHADES = {"trip": 34, "event": 84, "crash": 70, "diagnosis": 56}  # lightness per kind, darkest for trips
KINDS = [k.label for k in Kind]
REFUSED = "#dc2626"


def nice_ticks(top: float, integer: bool = False) -> list[float]:
    """0 and 3-6 round steps (1, 2, 2.5 or 5 times a power of ten) reaching at least ``top``."""
    if not top or top <= 0 or not math.isfinite(top):
        return [0, 1]
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    if integer:
        step = max(1, math.ceil(step))
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


class Axes:
    """Minute slots along x (``start``..``end``), a linear y from 0 to the last tick."""

    def __init__(self, start: int, end: int, ticks: list[float], width: int = W):
        self.start, self.n, self.width = start, (end - start) // 60 + 1, width
        self.slot = (width - LEFT - RIGHT) / self.n
        self.ticks, self.top = ticks, ticks[-1] or 1

    def x(self, t: int) -> float:
        return LEFT + (t - self.start) / 60 * self.slot

    def y(self, v: float) -> float:
        return TOP + PH - min(v, self.top) / self.top * PH

    def frame(self, label) -> list[str]:
        out = []
        for v in self.ticks:
            y = self.y(v)
            out.append(f'<line class="grid" x1="{LEFT}" x2="{self.width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                       f'<text class="ylab" x="{LEFT - 6}" y="{y + 4:.1f}">{_e(label(v))}</text>')
        labels = 8 if self.width == W else 4
        every = next((s for s in (5, 10, 15, 30, 60, 120) if self.n / s <= labels), 180)
        for i in range(self.n):
            t = self.start + i * 60
            if (t // 60) % every == 0:
                x = self.x(t) + self.slot / 2
                out.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + PH}" y2="{TOP + PH + 4}"/>'
                           f'<text class="xlab" x="{x:.1f}" y="{H - 6}">{_utc(t)[11:16]}</text>')
        out.append(f'<line class="axis" x1="{LEFT}" x2="{self.width - RIGHT}" y1="{TOP + PH}" y2="{TOP + PH}"/>')
        return out


def _svg(name: str, title: str, body: list[str], empty: str | None = None, width: int = W) -> str:
    note = (f'<text class="empty" x="{(LEFT + width - RIGHT) / 2}" y="{TOP + PH / 2}">{_e(empty)}</text>'
            if empty else "")
    return (f'<svg id="chart-{name}" class="chart" viewBox="0 0 {width} {H}" role="img" aria-label="{_e(title)}" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(body)}{note}</svg>')


def series_colors(doc: StatusReport) -> dict[tuple[str, str], str]:
    """A colour per team and kind: a hue per team (never the refusals' red), a shade per kind."""
    teams = sorted({c.team for c in doc.totals if c.ok})
    return {(c.team, c.kind): f"hsl({HUES[teams.index(c.team) % len(HUES)]} 68% {SHADES.get(c.kind, 60)}%)"
            for c in doc.totals if c.ok}


def pushes_chart(doc: StatusReport, start: int, end: int) -> str:
    """Stacked bars per minute: accepted pushes by team and kind, then every refusal (red) on top."""
    color = series_colors(doc)
    peak = max((sum(c.ok + c.refused for c in m.pushes) for m in doc.minutes), default=0)
    ax = Axes(start, end, nice_ticks(peak, integer=True))
    body = ax.frame(lambda v: f"{v:g}")
    width = max(ax.slot * 0.8, 1.0)
    for m in doc.minutes:
        x, base = ax.x(_parse(m.time)) + (ax.slot - width) / 2, 0
        stack = [(c.team, c.kind, "ok", c.ok, color[(c.team, c.kind)]) for c in m.pushes if c.ok]
        refused = sum(c.refused for c in m.pushes)
        if refused:
            stack.append(("", "", "refused", refused, REFUSED))
        for team, kind, outcome, n, fill in stack:
            y0, y1 = ax.y(base), ax.y(base + n)
            base += n
            what = f"{_team(team)} {kind}" if outcome == "ok" else "refused (every team and kind)"
            body.append(f'<rect fill="{fill}" x="{x:.1f}" y="{y1:.1f}" width="{width:.1f}" height="{y0 - y1:.1f}" '
                        f'data-team="{_e(team)}" data-kind="{_e(kind)}" data-outcome="{outcome}" '
                        f'data-minute="{m.time}" data-value="{n}"><title>{m.time[11:16]} UTC, {_e(what)}: {n}'
                        f'</title></rect>')
    return _svg("pushes", "Pushes per minute", body, None if peak else "no pushes in this window")


def pushes_legend(doc: StatusReport) -> str:
    """One entry per team: a swatch and the total of each kind it pushed; then the refusals."""
    color, out = series_colors(doc), []
    for team in sorted({c.team for c in doc.totals if c.ok}):
        kinds = " ".join(f'<span class="sw" style="background:{color[(c.team, c.kind)]}"></span>{_e(c.kind)} '
                         f'<b>{fmt_int(c.ok)}</b>' for c in _by_kind(doc.totals, team) if c.ok)
        out.append(f'<li data-team="{_e(team)}"><b>{_e(_team(team))}</b>: {kinds}</li>')
    refused = sum(c.refused for c in doc.totals)
    if refused:
        out.append(f'<li data-team=""><span class="sw" style="background:{REFUSED}"></span>refused '
                   f'<b>{fmt_int(refused)}</b></li>')
    return "".join(out)


def totals_table(doc: StatusReport) -> str:
    """Teams by kinds: the pushes accepted over the window, and every refusal of the team."""
    rows = []
    for team in sorted({c.team for c in doc.totals}):
        ok = {c.kind: c.ok for c in doc.totals if c.team == team}
        refused = sum(c.refused for c in doc.totals if c.team == team)
        cells = "".join(f'<td class=n data-kind="{k}">{fmt_int(ok.get(k, 0))}</td>' for k in KINDS)
        rows.append(f'<tr data-team="{_e(team)}"><td>{_e(_team(team))}</td>{cells}'
                    f'<td class="n{" bad" if refused else ""}" data-kind="refused">{fmt_int(refused)}</td></tr>')
    if not rows:
        return ""
    head = "".join(f"<th class=n>{k}</th>" for k in KINDS)
    return f'<table id="totals"><tr><th>team</th>{head}<th class=n>refused</th></tr>{"".join(rows)}</table>'


def _by_kind(counts: list[PushCount], team: str) -> list[PushCount]:
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted((c for c in counts if c.team == team), key=lambda c: (order.get(c.kind, len(order)), c.kind))


def line_chart(name: str, title: str, doc: StatusReport, start: int, end: int,
               series: list[tuple[str, str, str]], label, tip, floor: float = 0.0, width: int = W,
               integer: bool = False) -> str:
    """One line per (field of StatusMinute, CSS class, name), broken where a minute has no value;
    a lone point is a dot. Every minute has a transparent column whose tooltip gives its values."""
    per_minute = {_parse(m.time): m for m in doc.minutes}
    values = [getattr(m, f) for m in doc.minutes for f, _, _ in series if getattr(m, f) is not None]
    ax = Axes(start, end, nice_ticks(max(max(values, default=0), floor), integer), width)
    body = ax.frame(label)
    for field, cls, sname in series:
        runs, run = [], []
        for i in range(ax.n):
            t = start + i * 60
            m = per_minute.get(t)
            v = None if m is None else getattr(m, field)
            if v is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append((ax.x(t) + ax.slot / 2, ax.y(v)))
        if run:
            runs.append(run)
        d = " ".join("M" + " L".join(f"{x:.1f} {y:.1f}" for x, y in r) for r in runs if len(r) > 1)
        if d:
            body.append(f'<path class="line {cls}" d="{d}" data-series="{_e(field)}"><title>{_e(sname)}</title></path>')
        body += [f'<circle class="dot {cls}" cx="{r[0][0]:.1f}" cy="{r[0][1]:.1f}" r="2.5" data-series="{_e(field)}">'
                 f'</circle>' for r in runs if len(r) == 1]
    for t, m in sorted(per_minute.items()):
        body.append(f'<rect class="hit" x="{ax.x(t):.1f}" y="{TOP}" width="{ax.slot:.1f}" height="{PH}">'
                    f'<title>{m.time[11:16]} UTC: {_e(tip(m))}</title></rect>')
    return _svg(name, title, body, None if values else "no samples in this window", width)


def _parse(s: str) -> int:
    return int(datetime.strptime(s, UTC).replace(tzinfo=timezone.utc).timestamp())


# -- the page -------------------------------------------------------------------------------------------
CSS = """
:root{--fg:#1f2937;--mute:#6b7280;--line:#e5e7eb;--bad:#dc2626;--good:#15803d}
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:var(--fg);margin:0;background:#f8fafc}
header{display:flex;flex-wrap:wrap;gap:.5rem 1.5rem;align-items:baseline;padding:.8rem 1.5rem;background:#0f172a;
color:#e2e8f0}
header h1{font-size:1.15rem;margin:0}header a{color:#93c5fd}header .sp{flex:1}
#refreshed.bad{color:#fca5a5}
main{max-width:1100px;margin:0 auto;padding:1rem 1.5rem 2rem}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(9.5rem,1fr));gap:.75rem;margin:.5rem 0 1rem}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.6rem .8rem}
.card .k{color:var(--mute);font-size:.8rem}.card .v{font-size:1.45rem;font-weight:600;white-space:nowrap}
.card .s{color:var(--mute);font-size:.8rem}
.card.bad{border-color:var(--bad)}.card.bad .v{color:var(--bad)}.card.good .v{color:var(--good)}
ul.reasons{margin:.4rem 0 0;padding-left:1.1rem;color:var(--bad)}
section{background:#fff;border:1px solid var(--line);border-radius:6px;padding:.6rem .9rem;margin:0 0 1rem}
h2{font-size:1rem;margin:.1rem 0 .3rem}h2 small{color:var(--mute);font-weight:normal}
.chart{width:100%;height:auto;display:block}
.grid{stroke:#eef0f3}.axis,.tick{stroke:#9ca3af}
.ylab,.xlab{font-size:11px;fill:var(--mute)}.ylab{text-anchor:end}.xlab{text-anchor:middle}
.empty{font-size:14px;fill:#9ca3af;text-anchor:middle}
path.line{fill:none;stroke-width:2}td.bad{color:var(--bad)}.hit{fill:transparent}.hit:hover{fill:rgba(15,23,42,.06)}
.legend{display:flex;flex-wrap:wrap;gap:.3rem 1rem;margin:.3rem 0 0;padding:0;list-style:none;font-size:.85rem}
.sw{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;vertical-align:-1px}
table{border-collapse:collapse;margin:.5rem 0 0;font-size:.85rem}
td,th{padding:.2rem .8rem .2rem 0;text-align:left;border-bottom:1px solid var(--line)}
td.n,th.n{text-align:right}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:1rem;margin:0 0 1rem}.grid2 section{margin:0}
@media (max-width:800px){.grid2{grid-template-columns:1fr}}
footer{color:var(--mute);font-size:.8rem}
"""


LINES = {"p50": "#2563eb", "p99": "#ea580c", "lagr": "#9333ea", "lags": "#0891b2"}  # the line charts' series


def _palette_css() -> str:
    return "".join(f".line.{n}{{stroke:{c}}}.dot.{n}{{fill:{c}}}.sw.{n}{{background:{c}}}" for n, c in LINES.items())


SCRIPT = """
(() => {
  const body = document.body, every = Number(body.dataset.refresh) * 1000;
  const note = document.getElementById('refreshed');
  const get = async (url) => {
    const r = await fetch(url + location.search, {cache: 'no-store', credentials: 'same-origin'});
    if (!r.ok) throw new Error('HTTP ' + r.status);
    return r;
  };
  async function tick() {
    try {
      const d = await (await get('status.json')).json();
      if (d.revision !== body.dataset.revision) {
        const page = new DOMParser().parseFromString(await (await get('status')).text(), 'text/html');
        document.querySelector('main').replaceWith(document.adoptNode(page.querySelector('main')));
        body.dataset.revision = page.body.dataset.revision;
      }
      note.textContent = 'updated ' + d.generatedAt.slice(11, 19) + ' UTC';
      note.className = '';
    } catch (e) {
      note.textContent = 'refresh failed (' + e.message + '), retrying';
      note.className = 'bad';
    }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
})();
"""


def _card(key: str, value: str, sub: str = "", cls: str = "", field: str = "") -> str:
    return (f'<div class="card {cls}" id="card-{field}"><div class="k">{_e(key)}</div>'
            f'<div class="v">{_e(value)}</div><div class="s">{sub}</div></div>')


def page(doc: StatusReport, who: str, hours: int, refresh: int) -> str:
    start, end = _parse(doc.window.start), _parse(doc.window.end)
    cur, ok = doc.current, doc.health.status == "ok"
    reasons = "".join(f"<li>{_e(r)}</li>" for r in doc.health.reasons)
    free_pct = 100 * cur.diskFreeBytes / cur.diskTotalBytes if cur.diskTotalBytes else 0
    pushed = sum(c.ok for c in doc.totals)
    refused = sum(c.refused for c in doc.totals)
    cards = [
        _card("Health", "OK" if ok else "DEGRADED",
              f"receiver {_e(doc.health.partition)}" + (f'<ul class="reasons">{reasons}</ul>' if reasons else ""),
              "good" if ok else "bad", "health"),
        _card("FAILED items", fmt_int(cur.failedItems), "not projectable: <code>pushlake failed list</code>",
              "bad" if cur.failedItems else "", "failed"),
        _card("Pending tombstones", fmt_int(cur.pendingTombstones), "deletions not yet applied to files", "",
              "tombstones"),
        _card("Free disk", fmt_bytes(cur.diskFreeBytes),
              f"{free_pct:.0f} % of {_e(fmt_bytes(cur.diskTotalBytes))}", "bad" if free_pct < 10 else "", "disk"),
        _card("Compactor lag", f"{fmt_int(cur.lagRecords)} record{'' if cur.lagRecords == 1 else 's'}",
              f"oldest waiting {_e(fmt_age(cur.lagSeconds))}",
              "bad" if (cur.lagSeconds or 0) > 60 else "", "lag"),
        _card(f"Pushes, last {doc.window.minutes} min", fmt_int(pushed), f"{fmt_int(refused)} refused", "", "pushes"),
    ]
    chart = pushes_chart(doc, start, end)
    ack = line_chart("ack", "Ack latency", doc, start, end, [("ackP50", "p50", "p50"), ("ackP99", "p99", "p99")],
                     fmt_latency, lambda m: f"p50 {fmt_latency(m.ackP50)}, p99 {fmt_latency(m.ackP99)}, "
                                            f"{m.acks} acks", floor=0.001)
    lag_r = line_chart("lag-records", "Compactor lag, records", doc, start, end,
                       [("lagRecords", "lagr", "records")], lambda v: f"{v:g}",
                       lambda m: f"{fmt_int(m.lagRecords)} records", floor=1, width=HALF, integer=True)
    lag_s = line_chart("lag-seconds", "Compactor lag, seconds", doc, start, end,
                       [("lagSeconds", "lags", "seconds")], lambda v: f"{v:g} s",
                       lambda m: f"oldest waiting {fmt_age(m.lagSeconds)}", floor=1, width=HALF)
    parts = "".join(f"<tr><td>{_e(p.partition)}</td><td class=n>{fmt_int(p.lagRecords)}</td>"
                    f"<td class=n>{_e(fmt_age(p.lagSeconds))}</td><td>{'degraded' if p.degraded else 'ok'}</td></tr>"
                    for p in cur.partitions)
    windows = " ".join(f'<a href="?hours={h}&amp;refresh={refresh}">{h} h</a>' if h != hours else f"<b>{h} h</b>"
                       for h in (1, 3, 6))
    sampled = (f"history sampled {_e(doc.sampledAt[11:19])} UTC" if doc.sampledAt
               else "no history sampled yet (pushlake serve samples it every 10 s)")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>pushlake status</title><link rel="icon" href="data:,">
<style>{CSS}{_palette_css()}</style></head>
<body data-refresh="{refresh}" data-revision="{_e(doc.revision)}">
<header><h1>pushlake status</h1><span>window: {windows}</span><span class="sp"></span>
<span id="refreshed">updated {_e(doc.generatedAt[11:19])} UTC</span><span>signed in as {_e(who)}</span></header>
<main>
<div class="cards">{"".join(cards)}</div>
<section><h2>Pushes per minute <small>by team and kind; refusals in red; UTC,
{_e(doc.window.start[:16].replace("T", " "))} to {_e(doc.window.end[11:16])}</small></h2>{chart}
<ul class="legend" id="legend-pushes">{pushes_legend(doc)}</ul>
{totals_table(doc)}</section>
<section><h2>Ack latency <small>time from a push's arrival to its 200, per minute, every kind</small></h2>{ack}
<ul class="legend"><li><span class="sw p50"></span>p50</li><li><span class="sw p99"></span>p99</li></ul></section>
<div class="grid2">
<section><h2>Compactor lag <small>records waiting, most over partitions</small></h2>{lag_r}</section>
<section><h2>Compactor lag <small>age of the oldest waiting record</small></h2>{lag_s}</section>
</div>
<section><h2>Log partitions</h2>{f'<table id="partitions"><tr><th>partition</th><th class=n>lag (records)</th>'
 f'<th class=n>oldest waiting</th><th>health</th></tr>{parts}</table>' if parts else
 '<p class="s">no partition reported yet</p>'}</section>
<footer>{sampled}; this page refreshes every {refresh} s. The same data: <code>GET /status.json</code>;
every metric: <code>GET /metrics</code>.</footer>
</main>
<script>{SCRIPT}</script>
</body></html>
"""


# -- handlers -------------------------------------------------------------------------------------------
def _params(request: web.Request) -> tuple[int, int] | web.Response:
    """``hours`` (1-6, default 6) and ``refresh`` (seconds, 1-3600, default 10), or a 400."""
    out = []
    for name, default, low, high in (("hours", MAX_HOURS, 1, MAX_HOURS), ("refresh", DEFAULT_REFRESH_S, 1, 3600)):
        raw = request.query.get(name)
        if raw is None:
            out.append(default)
            continue
        if not raw.isdigit() or not low <= int(raw) <= high:
            return error(400, "invalid_request", f"{name} must be a whole number from {low} to {high}")
        out.append(int(raw))
    return out[0], out[1]


async def _report(request: web.Request) -> tuple[str, int, int, StatusReport] | web.Response:
    who = await operator(request)
    if isinstance(who, web.StreamResponse):
        return who
    params = _params(request)
    if isinstance(params, web.Response):
        return params
    hours, refresh = params
    health_body = orjson.loads((await health(request)).body)
    data_dir = request.app[SETTINGS].data_dir
    doc = await asyncio.get_running_loop().run_in_executor(None, report, data_dir, hours, health_body)
    return who, hours, refresh, doc


async def status_page(request: web.Request) -> web.Response:
    """The page, drawn off the event loop (pushes must not wait for it)."""
    got = await _report(request)
    if isinstance(got, web.Response):
        return got
    who, hours, refresh, doc = got
    body = await asyncio.get_running_loop().run_in_executor(None, page, doc, who, hours, refresh)
    return web.Response(text=body, content_type="text/html", headers=HEADERS)


async def status_json(request: web.Request) -> web.Response:
    got = await _report(request)
    if isinstance(got, web.Response):
        return got
    return web.Response(body=msgspec.json.encode(got[3]), content_type="application/json", headers=HEADERS)


async def root(request: web.Request) -> web.Response:
    """``/`` is where a person lands first: the status page (which asks for the login)."""
    where = "/status" + (f"?{request.query_string}" if request.query_string else "")
    return web.Response(status=302, headers={"Location": where}, text=f"see {where}", content_type="text/plain")
