"""Render the tracking state as one self-contained HTML page (inline CSS and SVG, no scripts).

The report is read by archive operators on laptops and attached to tickets, so it must open offline,
fetch nothing (a Content-Security-Policy forbids it), and show file names from manifests as text,
never markup. The database side builds the plain ``data`` dict; this module only validates and draws.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from decimal import Decimal
from html import escape
from typing import Any

from legampi.plots import Bar, Series, hbar_chart, human_bytes, stacked_hbar_chart, time_bytes_chart
from legampi.status import ArchiveStatus

STATUSES: tuple[tuple[str, str], ...] = (
    ("available", "#2e8b57"),
    ("processing", "#e69f00"),
    ("received", "#3b7dd8"),
    ("pending", "#a3acb9"),
    ("failed", "#d1362f"),
)
STATUS_ORDER = ("pending", "received", "processing", "available", "failed")
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#8c6d1f", "#000000")
MAX_DATASET_LINES = len(PALETTE)
RUNS_IN_CHART = 3
RUNS_IN_TABLE = 10
MAX_ROWS = 500
AUDIT_RESULTS = ("ok", "mismatch", "missing", "unexpected")

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f8;color:#1f2328;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,
"DejaVu Sans",sans-serif}
main{max-width:1180px;margin:0 auto;padding:20px 24px 40px}
header h1{margin:0 0 2px;font-size:24px}
header .meta{margin:0;color:#59636e}
h2{font-size:18px;margin:0 0 10px}
h3{font-size:14px;margin:16px 0 6px;color:#333}
section{background:#fff;border:1px solid #dde2e7;border-radius:8px;padding:16px 18px;margin:16px 0}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;margin:16px 0}
.card{background:#fff;border:1px solid #dde2e7;border-radius:8px;padding:10px 14px}
.card .v{font-size:22px;font-weight:600;font-variant-numeric:tabular-nums}
.card .k{color:#59636e;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .s{color:#59636e;font-size:12px}
.card.bad .v{color:#b42318}.card.good .v{color:#1a7f37}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #e6e9ed;text-align:left;vertical-align:top}
th{background:#f6f8fa;font-weight:600;white-space:nowrap}
tbody tr:nth-child(even){background:#fafbfc}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ts{white-space:nowrap;font-variant-numeric:tabular-nums}
td.dur{white-space:nowrap;text-align:right;font-variant-numeric:tabular-nums;color:#3d4650}
td.err,td.details{word-break:break-word;max-width:420px}
td .sub{display:block;color:#6e7781;font-size:11px}
code{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px}
td.name{min-width:14em;overflow-wrap:anywhere}
td.zero{color:#b0b7c0}
.empty{color:#6e7781;font-style:italic;margin:6px 0}
.ok-note{color:#1a7f37;margin:6px 0}
.note{color:#6e7781;font-size:12px;margin:6px 0}
.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;font-weight:600;color:#fff}
.b-ok{background:#2e8b57}.b-mismatch,.b-failed{background:#d1362f}.b-missing{background:#b35c00}
.b-unexpected{background:#7b4fb5}
.chart{display:block;width:100%;height:auto;margin:6px 0 4px}
footer{color:#6e7781;font-size:12px;text-align:center}
"""

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


# ---------------------------------------------------------------- input checking


def _get(row: Mapping[str, Any], key: str, where: str) -> Any:
    """Fetch a required key so a malformed ``data`` dict fails naming the field, not with a bare KeyError."""
    if not isinstance(row, Mapping):
        raise ValueError(f"report data: {where} must be a mapping, got {type(row).__name__}")
    if key not in row:
        raise ValueError(f"report data: {where} has no {key!r}")
    return row[key]


def _int(value: Any, where: str) -> int:
    """Counts and byte sizes; PostgreSQL SUM() of BIGINT arrives as Decimal, which is accepted if integral."""
    if isinstance(value, bool):
        raise ValueError(f"report data: {where} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, (Decimal, float)) and value == int(value):
        return int(value)
    raise ValueError(f"report data: {where} must be an integer, got {value!r}")


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal)):
        raise ValueError(f"report data: {where} must be a number, got {value!r}")
    return float(value)


def _ts(value: Any, where: str) -> datetime | None:
    """Parse ISO-8601 (``Z`` allowed); a naive value is taken as UTC, which is what the database stores."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"report data: {where} must be an ISO-8601 string or None, got {value!r}")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(f"report data: {where} is not an ISO-8601 timestamp: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _list(data: Mapping[str, Any], key: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"report data: {key!r} must be a list, got {type(value).__name__}")
    return list(value)


# ---------------------------------------------------------------- formatting


def fmt_ts(t: datetime | None) -> str:
    """Timestamps to the second in UTC; the database is in UTC and operators sit in several zones."""
    return "—" if t is None else t.strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(start: datetime | None, end: datetime | None) -> str:
    """Compact duration (``2 h 05 min``); "—" when either end is unknown."""
    if start is None or end is None:
        return "—"
    seconds = (end - start).total_seconds()
    sign = "−" if seconds < 0 else ""
    s = abs(seconds)
    if s < 10:
        body = f"{s:.1f} s"
    elif s < 60:
        body = f"{s:.0f} s"
    elif s < 3600:
        m, sec = divmod(int(round(s)), 60)
        body = f"{m} min {sec:02d} s"
    elif s < 86400:
        h, rem = divmod(int(round(s)), 3600)
        body = f"{h} h {rem // 60:02d} min"
    else:
        d, rem = divmod(int(round(s)), 86400)
        body = f"{d} d {rem // 3600} h"
    return sign + body


def _mbps(nbytes: int, seconds: float) -> float | None:
    """MB/s in decimal megabytes (what disks and networks are rated in); None when time is not positive."""
    return nbytes / seconds / 1e6 if seconds > 0 else None


def _td(text: str, cls: str = "", title: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    t = f' title="{escape(title)}"' if title else ""
    return f"<td{c}{t}>{escape(text)}</td>"


def _ts_td(t: datetime | None) -> str:
    """Minute precision keeps the wide timeline table on one laptop screen; seconds stay in the tooltip."""
    if t is None:
        return _td("—", "ts")
    return _td(t.strftime("%Y-%m-%d %H:%M"), "ts", fmt_ts(t) + " UTC")


def _table(testid: str, head: Sequence[tuple[str, str]], rows: Iterable[str]) -> str:
    ths = "".join(f'<th class="{cls}">{escape(h)}</th>' if cls else f"<th>{escape(h)}</th>" for h, cls in head)
    body = "\n".join(f"<tr>{r}</tr>" for r in rows)
    return (
        f'<div class="scroll"><table data-testid="{testid}"><thead><tr>{ths}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def _empty(text: str) -> str:
    return f'<p class="empty" data-testid="empty">{escape(text)}</p>'


def _more(shown: int, total: int) -> str:
    if total <= shown:
        return ""
    return f'<p class="note">Showing {shown} of {total}; {total - shown} more not shown.</p>'


# ---------------------------------------------------------------- sections


def _datasets(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate and normalise dataset rows once, so every section works from checked values."""
    out = []
    for i, ds in enumerate(datasets):
        where = f"datasets[{i}]"
        by_status_raw = _get(ds, "by_status", where) or {}
        if not isinstance(by_status_raw, Mapping):
            raise ValueError(f"report data: {where}.by_status must be a mapping")
        by_status: dict[str, tuple[int, int]] = {}
        for status, counts in by_status_raw.items():
            w = f"{where}.by_status[{status!r}]"
            by_status[str(status)] = (
                _int(_get(counts, "files", w), f"{w}.files"),
                _int(_get(counts, "bytes", w), f"{w}.bytes"),
            )
        out.append(
            {
                "id": str(_get(ds, "dataset_id", where)),
                "n_files": _int(_get(ds, "n_files", where), f"{where}.n_files"),
                "n_bytes": _int(_get(ds, "n_bytes", where), f"{where}.n_bytes"),
                "times": [
                    _ts(_get(ds, k, where), f"{where}.{k}")
                    for k in (
                        "date_requested",
                        "date_download_start",
                        "date_download_end",
                        "date_processing_end",
                    )
                ],
                "by_status": by_status,
            }
        )
    return out


def _summary(dsets: list[dict[str, Any]], runs: list[dict[str, Any]], n_failed: int, audit_counts: Counter[str]) -> str:
    n_files = sum(d["n_files"] for d in dsets)
    n_bytes = sum(d["n_bytes"] for d in dsets)
    avail_files = sum(d["by_status"].get("available", (0, 0))[0] for d in dsets)
    avail_bytes = sum(d["by_status"].get("available", (0, 0))[1] for d in dsets)
    pct = f"{100.0 * avail_files / n_files:.0f}% of {n_files} files" if n_files else "no files registered"
    problems = sum(n for r, n in audit_counts.items() if r != "ok")
    cards = [
        ("Datasets", str(len(dsets)), "", ""),
        ("Files archived", f"{avail_files}", pct, "good" if n_files and avail_files == n_files else ""),
        ("Data archived", human_bytes(avail_bytes), f"of {human_bytes(n_bytes)}", ""),
        (
            "Failed files",
            str(n_failed),
            "need attention" if n_failed else "none",
            "bad" if n_failed else "good",
        ),
        (
            "Audit problems",
            str(problems),
            f"{sum(audit_counts.values())} checks" if audit_counts else "no audits",
            "bad" if problems else "",
        ),
    ]
    if runs:
        last = runs[-1]
        rate = _mbps(last["bytes"], last["seconds"]) if last["seconds"] is not None else None
        cards.append(("Last run", "—" if rate is None else f"{rate:.0f} MB/s", f"job {last['job_id']}", ""))
    html = ['<div class="cards" data-testid="summary">']
    for key, value, sub, cls in cards:
        html.append(
            f'<div class="card {cls}"><div class="k">{escape(key)}</div><div class="v">{escape(value)}'
            f'</div><div class="s">{escape(sub)}</div></div>'
        )
    html.append("</div>")
    return "\n".join(html)


def _datasets_section(dsets: list[dict[str, Any]]) -> str:
    parts = ['<section id="datasets" data-testid="datasets"><h2>Datasets</h2>']
    if not dsets:
        parts.append(_empty("Nothing yet: no datasets have been registered."))
        parts.append("</section>")
        return "\n".join(parts)
    known = set(STATUS_ORDER)
    extra = sorted({s for d in dsets for s in d["by_status"]} - known)
    colours = list(STATUSES) + [(s, "#6e7781") for s in extra]
    rows = [(d["id"], {s: fc[0] for s, fc in d["by_status"].items()}) for d in dsets]
    parts.append(
        stacked_hbar_chart(rows, colours, testid="plot-status", title="Files by status per dataset", x_label="files")
    )
    head = [("Dataset", ""), ("Files", "num"), ("Size", "num")] + [(s, "num") for s in STATUS_ORDER + tuple(extra)]
    head.append(("Bytes archived", "num"))
    body = []
    for d in dsets:
        cells = [
            _td(d["id"]),
            _td(str(d["n_files"]), "num"),
            _td(human_bytes(d["n_bytes"]), "num", f"{d['n_bytes']} bytes"),
        ]
        for s in STATUS_ORDER + tuple(extra):
            files, nbytes = d["by_status"].get(s, (0, 0))
            cls = "num" if files or nbytes else "num zero"
            cells.append(
                f'<td class="{cls}" data-status="{escape(s)}" title="{nbytes} bytes">{files}'
                f'<span class="sub">{escape(human_bytes(nbytes))}</span></td>'
            )
        avail = d["by_status"].get("available", (0, 0))[1]
        share = f"{100.0 * avail / d['n_bytes']:.1f}%" if d["n_bytes"] else "—"
        cells.append(_td(share, "num"))
        body.append("".join(cells))
    parts.append("<h3>Files and bytes by status</h3>")
    parts.append(_table("table-datasets", head, body))
    head = [
        ("Dataset", ""),
        ("Requested", ""),
        ("Wait", "num"),
        ("Download start", ""),
        ("Download", "num"),
        ("Download end", ""),
        ("Processing", "num"),
        ("Processing end", ""),
        ("Total", "num"),
    ]
    body = []
    for d in dsets:
        req, dl_start, dl_end, proc_end = d["times"]
        body.append(
            "".join(
                [
                    _td(d["id"]),
                    _ts_td(req),
                    _td(fmt_duration(req, dl_start), "dur"),
                    _ts_td(dl_start),
                    _td(fmt_duration(dl_start, dl_end), "dur"),
                    _ts_td(dl_end),
                    _td(fmt_duration(dl_end, proc_end), "dur"),
                    _ts_td(proc_end),
                    _td(fmt_duration(req, proc_end), "dur"),
                ]
            )
        )
    parts.append("<h3>Timeline (UTC) and durations between steps</h3>")
    parts.append(_table("table-timeline", head, body))
    parts.append(
        '<p class="note">Wait: requested → download start. Download: download start → end. '
        "Processing: download end → processing end. Total: requested → processing end.</p>"
    )
    parts.append("</section>")
    return "\n".join(parts)


def _archived_section(archived: list[dict[str, Any]], dataset_order: list[str]) -> str:
    parts = ['<section id="archived" data-testid="archived"><h2>Archived data over time</h2>']
    entries = []
    for i, a in enumerate(archived):
        where = f"archived[{i}]"
        at = _ts(_get(a, "at", where), f"{where}.at")
        if at is None:
            raise ValueError(f"report data: {where}.at is None; an archived file must have a time")
        entries.append(
            (
                at.timestamp(),
                _int(_get(a, "bytes", where), f"{where}.bytes"),
                str(_get(a, "dataset_id", where)),
            )
        )
    if not entries:
        parts.append(_empty("Nothing yet: no file has been archived."))
        parts.append("</section>")
        return "\n".join(parts)
    entries.sort(key=lambda e: e[0])
    ids = [d for d in dataset_order if any(e[2] == d for e in entries)]
    ids += sorted({e[2] for e in entries} - set(ids))
    series: list[Series] = []
    if 1 < len(ids) <= MAX_DATASET_LINES:
        for k, ds_id in enumerate(ids):
            mine = [e for e in entries if e[2] == ds_id]
            pts = [(mine[0][0], 0.0)]
            acc = 0
            for t, b, _ in mine:
                acc += b
                pts.append((t, float(acc)))
            series.append(Series(ds_id, PALETTE[k], pts))
    total_pts = [(entries[0][0], 0.0)]
    acc = 0
    for t, b, _ in entries:
        acc += b
        total_pts.append((t, float(acc)))
    name = "all datasets" if len(ids) > 1 else ids[0]
    series.append(Series(name, "#333333" if len(ids) > 1 else PALETTE[0], total_pts, dashed=len(ids) > 1))
    parts.append(time_bytes_chart(series, testid="plot-archived", title="Cumulative archived bytes over time"))
    note = (
        f"{len(entries)} files, {human_bytes(acc)} archived between "
        f"{fmt_ts(datetime.fromtimestamp(entries[0][0], tz=timezone.utc))} and "
        f"{fmt_ts(datetime.fromtimestamp(entries[-1][0], tz=timezone.utc))} UTC."
    )
    if len(ids) > MAX_DATASET_LINES:
        note += f" {len(ids)} datasets: only the total is drawn."
    parts.append(f'<p class="note">{escape(note)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _runs(runs_raw: list[dict[str, Any]]) -> list[dict[str, Any]]:
    runs = []
    for i, r in enumerate(runs_raw):
        where = f"runs[{i}]"
        start = _ts(_get(r, "started_at", where), f"{where}.started_at")
        end = _ts(_get(r, "ended_at", where), f"{where}.ended_at")
        ranks = []
        for j, rk in enumerate(_get(r, "ranks", where) or []):
            w = f"{where}.ranks[{j}]"
            ranks.append(
                {
                    "rank": _int(_get(rk, "rank", w), f"{w}.rank"),
                    "host": str(_get(rk, "host", w)),
                    "files": _int(_get(rk, "files", w), f"{w}.files"),
                    "bytes": _int(_get(rk, "bytes", w), f"{w}.bytes"),
                    "seconds": _float(_get(rk, "seconds", w), f"{w}.seconds"),
                }
            )
        runs.append(
            {
                "job_id": str(_get(r, "job_id", where)),
                "start": start,
                "end": end,
                "files": _int(_get(r, "files", where), f"{where}.files"),
                "bytes": _int(_get(r, "bytes", where), f"{where}.bytes"),
                "failed": _int(_get(r, "failed", where), f"{where}.failed"),
                "seconds": (end - start).total_seconds() if start and end else None,
                "ranks": sorted(ranks, key=lambda x: x["rank"]),
            }
        )
    runs.sort(key=lambda r: (r["start"] is None, r["start"] or datetime.min.replace(tzinfo=timezone.utc)))
    return runs


def _runs_section(runs: list[dict[str, Any]]) -> str:
    parts = ['<section id="runs" data-testid="runs"><h2>Processing runs and throughput</h2>']
    if not runs:
        parts.append(_empty("Nothing yet: no processing run has been recorded."))
        parts.append("</section>")
        return "\n".join(parts)
    recent = runs[-RUNS_IN_CHART:]
    bars = []
    for k, run in enumerate(recent):
        group = f"job {run['job_id']}"
        for rk in run["ranks"]:
            rate = _mbps(rk["bytes"], rk["seconds"])
            if rate is None and rk["bytes"] == 0:
                rate = 0.0  # an idle rank (e.g. the coordinator) did nothing: zero, not "unknown"
            bars.append(Bar(f"{group} · rank {rk['rank']} ({rk['host']})", rate, PALETTE[k], group))
    if bars:
        parts.append(f"<h3>Throughput per rank, last {len(recent)} run{'s' if len(recent) > 1 else ''}</h3>")
        parts.append(
            hbar_chart(
                bars,
                testid="plot-throughput",
                title="Throughput per rank (MB/s)",
                x_label="throughput per rank (MB/s = 10⁶ bytes per second of work)",
            )
        )
    else:
        parts.append(_empty("The recent runs recorded no per-rank figures."))
    head = [
        ("Job", ""),
        ("Started", ""),
        ("Ended", ""),
        ("Duration", "num"),
        ("Ranks", "num"),
        ("Files", "num"),
        ("Bytes", "num"),
        ("Failed", "num"),
        ("MB/s", "num"),
    ]
    body = []
    shown = runs[-RUNS_IN_TABLE:]
    for run in reversed(shown):
        rate = _mbps(run["bytes"], run["seconds"]) if run["seconds"] is not None else None
        body.append(
            "".join(
                [
                    _td(run["job_id"]),
                    _td(fmt_ts(run["start"]), "ts"),
                    _td(fmt_ts(run["end"]) if run["end"] else "running", "ts"),
                    _td(fmt_duration(run["start"], run["end"]), "dur"),
                    _td(str(len(run["ranks"])), "num"),
                    _td(str(run["files"]), "num"),
                    _td(human_bytes(run["bytes"]), "num", f"{run['bytes']} bytes"),
                    _td(str(run["failed"]), "num"),
                    _td("—" if rate is None else f"{rate:.1f}", "num"),
                ]
            )
        )
    parts.append("<h3>Runs, newest first</h3>")
    parts.append(_table("table-runs", head, body))
    parts.append(_more(len(shown), len(runs)))
    head = [
        ("Job", ""),
        ("Rank", "num"),
        ("Host", ""),
        ("Files", "num"),
        ("Bytes", "num"),
        ("Busy", "num"),
        ("MB/s", "num"),
    ]
    body = []
    for run in reversed(recent):
        for rk in run["ranks"]:
            rate = _mbps(rk["bytes"], rk["seconds"])
            body.append(
                "".join(
                    [
                        _td(run["job_id"]),
                        _td(str(rk["rank"]), "num"),
                        _td(rk["host"]),
                        _td(str(rk["files"]), "num"),
                        _td(human_bytes(rk["bytes"]), "num", f"{rk['bytes']} bytes"),
                        _td(f"{rk['seconds']:.1f} s", "num"),
                        _td("—" if rate is None else f"{rate:.1f}", "num"),
                    ]
                )
            )
    if body:
        parts.append("<h3>Ranks of the recent runs</h3>")
        parts.append(_table("table-ranks", head, body))
    parts.append("</section>")
    return "\n".join(parts)


def _failed_section(failed: list[dict[str, Any]]) -> str:
    parts = ['<section id="failed" data-testid="failed"><h2>Failed files</h2>']
    rows = []
    for i, f in enumerate(failed):
        where = f"failed[{i}]"
        rows.append((_ts(_get(f, "updated_at", where), f"{where}.updated_at"), f, where))
    if not rows:
        parts.append('<p class="ok-note" data-testid="empty">No failed files.</p></section>')
        return "\n".join(parts)
    rows.sort(key=lambda r: r[0].timestamp() if r[0] else float("-inf"), reverse=True)
    head = [("File", ""), ("Dataset", ""), ("Name", ""), ("Error", ""), ("Updated", "")]
    body = []
    for t, f, where in rows[:MAX_ROWS]:
        error = _get(f, "error", where)
        body.append(
            "".join(
                [
                    _td(str(_get(f, "file_id", where))),
                    _td(str(_get(f, "dataset_id", where))),
                    f'<td class="name"><code>{escape(str(_get(f, "file_name", where)))}</code></td>',
                    _td("(no reason recorded)" if error in (None, "") else str(error), "err"),
                    _td(fmt_ts(t), "ts"),
                ]
            )
        )
    parts.append(
        f'<p class="note">{len(rows)} file{"s" if len(rows) != 1 else ""} failed, most recent first. '
        "They are retried only on request.</p>"
    )
    parts.append(_table("table-failed", head, body))
    parts.append(_more(min(len(rows), MAX_ROWS), len(rows)))
    parts.append("</section>")
    return "\n".join(parts)


def _audits_section(audits: list[dict[str, Any]]) -> tuple[str, Counter[str]]:
    parts = ['<section id="audits" data-testid="audits"><h2>Fixity audits</h2>']
    rows = []
    counts: Counter[str] = Counter()
    for i, a in enumerate(audits):
        where = f"audits[{i}]"
        result = str(_get(a, "result", where))
        if result not in AUDIT_RESULTS:
            raise ValueError(f"report data: {where}.result must be one of {', '.join(AUDIT_RESULTS)}, got {result!r}")
        counts[result] += 1
        rows.append((_ts(_get(a, "at", where), f"{where}.at"), result, a, where))
    if not rows:
        parts.append(_empty("Nothing yet: no fixity audit has been run."))
        parts.append("</section>")
        return "\n".join(parts), counts
    badges = " ".join(
        f'<span class="badge b-{r}" data-result="{r}">{counts[r]} {r}</span>' for r in AUDIT_RESULTS if counts[r]
    )
    times = [t for t, *_ in rows if t is not None]
    last = f" Last check {fmt_ts(max(times))} UTC." if times else ""
    parts.append(f'<p data-testid="audit-counts">{badges}<span class="note">{escape(last)}</span></p>')
    problems = [r for r in rows if r[1] != "ok"]
    if not problems:
        parts.append(f'<p class="ok-note">All {len(rows)} audited files matched their recorded checksums.</p>')
    else:
        problems.sort(key=lambda r: r[0].timestamp() if r[0] else float("-inf"), reverse=True)
        head = [("When", ""), ("File", ""), ("Dataset", ""), ("Result", ""), ("Details", "")]
        body = []
        for t, result, a, where in problems[:MAX_ROWS]:
            details = _get(a, "details", where)
            body.append(
                "".join(
                    [
                        _td(fmt_ts(t), "ts"),
                        _td(str(_get(a, "file_id", where))),
                        _td(str(_get(a, "dataset_id", where))),
                        f'<td><span class="badge b-{result}">{escape(result)}</span></td>',
                        _td("" if details is None else str(details), "details"),
                    ]
                )
            )
        parts.append("<h3>Problems, most recent first</h3>")
        parts.append(_table("table-audits", head, body))
        parts.append(_more(min(len(problems), MAX_ROWS), len(problems)))
    parts.append("</section>")
    return "\n".join(parts), counts


def render_report(data: dict) -> str:
    """Return one self-contained HTML document (inline CSS + inline SVG, no scripts or network fetches)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"report data must be a mapping, got {type(data).__name__}")
    title = str(data.get("title") or "legampi archive report")
    generated = _ts(data.get("generated_at"), "generated_at")
    dsets = _datasets(_list(data, "datasets"))
    runs = _runs(_list(data, "runs"))
    failed = _list(data, "failed")
    audits_html, audit_counts = _audits_section(_list(data, "audits"))
    when = "at an unknown time" if generated is None else escape(fmt_ts(generated)) + " UTC"
    body = [
        f'<header><h1>{escape(title)}</h1><p class="meta">Generated {when} by legampi</p></header>',
        _summary(dsets, runs, len(failed), audit_counts),
        _datasets_section(dsets),
        _archived_section(_list(data, "archived"), [d["id"] for d in dsets]),
        _runs_section(runs),
        _failed_section(failed),
        audits_html,
        "<footer>Sizes in binary units (1 GiB = 2<sup>30</sup> bytes); throughput in MB/s "
        "(10<sup>6</sup> bytes per second). All times UTC.</footer>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )


def collect(db: Any, dataset: str | None = None, runs: int = 10) -> dict[str, Any]:
    """Gather the report's data from the tracking database (the shape render_report takes)."""
    status = ArchiveStatus.read(db, dataset)
    jobs = [j for j in db.jobs(runs) if j["command"] == "process"]
    ranks: dict[str, list[dict[str, Any]]] = {}
    for r in db.job_ranks([j["job_id"] for j in jobs]):
        ranks.setdefault(r["job_id"], []).append(
            {"rank": r["rank"], "host": r["host"], "files": r["files"], "bytes": r["bytes"], "seconds": r["seconds"]}
        )
    failures = db.job_failures([j["job_id"] for j in jobs])
    run_rows = []
    for j in jobs:
        rr = ranks.get(j["job_id"], [])
        run_rows.append(
            {
                "job_id": j["job_id"],
                "started_at": j["started_at"],
                "ended_at": j["ended_at"],
                "files": sum(x["files"] for x in rr),
                "bytes": sum(x["bytes"] for x in rr),
                "failed": failures.get(j["job_id"], 0),
                "ranks": rr,
            }
        )
    failed = [
        {
            "file_id": f.file_id,
            "dataset_id": f.dataset_id,
            "file_name": f.file_name,
            "error": f.error,
            "updated_at": f.updated_at,
        }
        for f in status.with_status("failed")
    ]
    audits = [
        {
            "at": e["at"],
            "file_id": e["file_id"] or "",
            "dataset_id": e["dataset_id"] or "",
            "result": e["event"].removeprefix("audit-"),
            "details": e["details"] or "",
        }
        for e in db.events(dataset_id=dataset)
        if e["event"].startswith("audit-")
    ]
    return {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "title": "legampi archive report" + (f": dataset {dataset}" if dataset else ""),
        "datasets": [d.to_json() for d in status.datasets],
        "archived": db.archived_timeline(dataset),
        "runs": run_rows,
        "failed": failed,
        "audits": audits,
    }
