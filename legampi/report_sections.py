"""The report's sections, one function each, drawn from checked ``ReportData`` rows: the summary cards,
datasets (status chart, counts, timeline), archived bytes over time, processing runs and throughput,
failed files, and fixity audits."""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from .plots import Bar, Series, hbar_chart, human_bytes, stacked_hbar_chart, time_bytes_chart
from .report_data import AUDIT_RESULTS, ArchivedFile, ReportData, Run
from .report_html import empty, fmt_duration, fmt_ts, mbps, more, table, td, ts_td
from .status import STATUSES, DatasetStatus

# The status chart's colours, in stacking order: done first, then how close to done; failed last.
STATUS_COLOURS: dict[str, str] = {
    "available": "#2e8b57",
    "processing": "#e69f00",
    "received": "#3b7dd8",
    "pending": "#a3acb9",
    "failed": "#d1362f",
}
UNKNOWN_STATUS_COLOUR = "#6e7781"
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#8c6d1f", "#000000")
MAX_DATASET_LINES = len(PALETTE)
RUNS_IN_CHART = 3
RUNS_IN_TABLE = 10
MAX_ROWS = 500


def _section(key: str, title: str, parts: list[str]) -> str:
    return "\n".join([f'<section id="{key}" data-testid="{key}"><h2>{title}</h2>', *parts, "</section>"])


# ---------------------------------------------------------------- summary


def summary_cards(data: ReportData) -> str:
    dsets, runs, audit_counts = data.datasets, data.runs, data.audit_counts
    n_failed = len(data.failed)
    n_files = sum(d.n_files for d in dsets)
    n_bytes = sum(d.n_bytes for d in dsets)
    avail_files = sum(d.count("available").files for d in dsets)
    avail_bytes = sum(d.count("available").bytes for d in dsets)
    avail_plain = sum(d.count("available").plain_bytes for d in dsets)
    pct = f"{100.0 * avail_files / n_files:.0f}% of {n_files} files" if n_files else "no files registered"
    problems = sum(n for r, n in audit_counts.items() if r != "ok")
    cards = [
        ("Datasets", str(len(dsets)), "", ""),
        ("Files archived", f"{avail_files}", pct, "good" if n_files and avail_files == n_files else ""),
        (
            "Data archived",
            human_bytes(avail_bytes),
            f"of {human_bytes(n_bytes)} transferred; {human_bytes(avail_plain)} plaintext",
            "",
        ),
        ("Failed files", str(n_failed), "need attention" if n_failed else "none", "bad" if n_failed else "good"),
        (
            "Audit problems",
            str(problems),
            f"{sum(audit_counts.values())} checks" if audit_counts else "no audits",
            "bad" if problems else "",
        ),
    ]
    if runs:
        last = runs[-1]
        rate = mbps(last.bytes, last.seconds) if last.seconds is not None else None
        cards.append(("Last run", "—" if rate is None else f"{rate:.0f} MB/s", f"job {last.job_id}", ""))
    html = ['<div class="cards" data-testid="summary">']
    for key, value, sub, cls in cards:
        html.append(
            f'<div class="card {cls}"><div class="k">{escape(key)}</div><div class="v">{escape(value)}'
            f'</div><div class="s">{escape(sub)}</div></div>'
        )
    html.append("</div>")
    return "\n".join(html)


# ---------------------------------------------------------------- datasets


def _status_table(dsets: list[DatasetStatus], statuses: tuple[str, ...]) -> str:
    # Transferred: the files as received (encrypted); Plaintext: what the archived ones decrypt to.
    head = [("Dataset", ""), ("Files", "num"), ("Transferred", "num"), ("Plaintext", "num")]
    head += [(s, "num") for s in statuses]
    head.append(("Bytes archived", "num"))
    body = []
    for d in dsets:
        cells = [td(d.dataset_id), td(str(d.n_files), "num"), td(human_bytes(d.n_bytes), "num", f"{d.n_bytes} bytes")]
        plain = d.plain_bytes
        known = d.count("available").files
        cells.append(td(human_bytes(plain), "num", f"{plain} bytes") if known else td("—", "num"))
        for s in statuses:
            c = d.count(s)
            cls = "num" if c.files or c.bytes else "num zero"
            cells.append(
                f'<td class="{cls}" data-status="{escape(s)}" title="{c.bytes} bytes">{c.files}'
                f'<span class="sub">{escape(human_bytes(c.bytes))}</span></td>'
            )
        avail = d.count("available").bytes
        cells.append(td(f"{100.0 * avail / d.n_bytes:.1f}%" if d.n_bytes else "—", "num"))
        body.append("".join(cells))
    return table("table-datasets", head, body)


def _timeline_table(dsets: list[DatasetStatus]) -> str:
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
        req, dl_start, dl_end, proc_end = d.times()
        cells = [
            td(d.dataset_id),
            ts_td(req),
            td(fmt_duration(req, dl_start), "dur"),
            ts_td(dl_start),
            td(fmt_duration(dl_start, dl_end), "dur"),
            ts_td(dl_end),
            td(fmt_duration(dl_end, proc_end), "dur"),
            ts_td(proc_end),
            td(fmt_duration(req, proc_end), "dur"),
        ]
        body.append("".join(cells))
    return table("table-timeline", head, body)


def datasets_section(data: ReportData) -> str:
    dsets = data.datasets
    if not dsets:
        return _section("datasets", "Datasets", [empty("Nothing yet: no datasets have been registered.")])
    extra = tuple(sorted({s for d in dsets for s in d.by_status} - set(STATUSES)))
    colours = list(STATUS_COLOURS.items()) + [(s, UNKNOWN_STATUS_COLOUR) for s in extra]
    rows = [(d.dataset_id, {s: c.files for s, c in d.by_status.items()}) for d in dsets]
    chart = stacked_hbar_chart(
        rows, colours, testid="plot-status", title="Files by status per dataset", x_label="files"
    )
    return _section(
        "datasets",
        "Datasets",
        [
            chart,
            "<h3>Files and bytes by status</h3>",
            _status_table(dsets, STATUSES + extra),
            "<h3>Timeline (UTC) and durations between steps</h3>",
            _timeline_table(dsets),
            '<p class="note">Wait: requested → download start. Download: download start → end. '
            "Processing: download end → processing end. Total: requested → processing end.</p>",
        ],
    )


# ---------------------------------------------------------------- archived bytes over time


def _cumulative(entries: list[ArchivedFile]) -> list[tuple[float, float]]:
    pts = [(entries[0].at, 0.0)]
    acc = 0
    for e in entries:
        acc += e.bytes
        pts.append((e.at, float(acc)))
    return pts


def archived_section(data: ReportData) -> str:
    """Cumulative bytes: one line per dataset (in the datasets' order) when few enough, and the total."""
    entries = data.archived
    title = "Archived data over time"
    if not entries:
        return _section("archived", title, [empty("Nothing yet: no file has been archived.")])
    ids = [d.dataset_id for d in data.datasets if any(e.dataset_id == d.dataset_id for e in entries)]
    ids += sorted({e.dataset_id for e in entries} - set(ids))
    series: list[Series] = []
    if 1 < len(ids) <= MAX_DATASET_LINES:
        for k, ds_id in enumerate(ids):
            series.append(Series(ds_id, PALETTE[k], _cumulative([e for e in entries if e.dataset_id == ds_id])))
    name = "all datasets" if len(ids) > 1 else ids[0]
    total = _cumulative(entries)
    series.append(Series(name, "#333333" if len(ids) > 1 else PALETTE[0], total, dashed=len(ids) > 1))
    note = (
        f"{len(entries)} files, {human_bytes(sum(e.bytes for e in entries))} archived between "
        f"{fmt_ts(datetime.fromtimestamp(entries[0].at, tz=timezone.utc))} and "
        f"{fmt_ts(datetime.fromtimestamp(entries[-1].at, tz=timezone.utc))} UTC."
    )
    if len(ids) > MAX_DATASET_LINES:
        note += f" {len(ids)} datasets: only the total is drawn."
    chart = time_bytes_chart(
        series, testid="plot-archived", title="Cumulative archived bytes (transferred size) over time"
    )
    return _section("archived", title, [chart, f'<p class="note">{escape(note)}</p>'])


# ---------------------------------------------------------------- runs


def _throughput_chart(recent: list[Run]) -> list[str]:
    bars = []
    for k, run in enumerate(recent):
        group = f"job {run.job_id}"
        for rk in run.ranks:
            rate = mbps(rk.bytes, rk.seconds)
            if rate is None and rk.bytes == 0:
                rate = 0.0  # an idle rank (e.g. the coordinator) did nothing: zero, not "unknown"
            bars.append(Bar(f"{group} · rank {rk.rank} ({rk.host})", rate, PALETTE[k], group))
    if not bars:
        return [empty("The recent runs recorded no per-rank figures.")]
    return [
        f"<h3>Throughput per rank, last {len(recent)} run{'s' if len(recent) > 1 else ''}</h3>",
        hbar_chart(
            bars,
            testid="plot-throughput",
            title="Throughput per rank (MB/s)",
            x_label="throughput per rank (MB/s = 10⁶ bytes per second of work)",
        ),
    ]


def _runs_table(runs: list[Run]) -> list[str]:
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
        rate = mbps(run.bytes, run.seconds) if run.seconds is not None else None
        cells = [
            td(run.job_id),
            td(fmt_ts(run.start), "ts"),
            td(fmt_ts(run.end) if run.end else "running", "ts"),
            td(fmt_duration(run.start, run.end), "dur"),
            td(str(len(run.ranks)), "num"),
            td(str(run.files), "num"),
            td(human_bytes(run.bytes), "num", f"{run.bytes} bytes"),
            td(str(run.failed), "num"),
            td("—" if rate is None else f"{rate:.1f}", "num"),
        ]
        body.append("".join(cells))
    return ["<h3>Runs, newest first</h3>", table("table-runs", head, body), more(len(shown), len(runs))]


def _ranks_table(recent: list[Run]) -> list[str]:
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
        for rk in run.ranks:
            rate = mbps(rk.bytes, rk.seconds)
            cells = [
                td(run.job_id),
                td(str(rk.rank), "num"),
                td(rk.host),
                td(str(rk.files), "num"),
                td(human_bytes(rk.bytes), "num", f"{rk.bytes} bytes"),
                td(f"{rk.seconds:.1f} s", "num"),
                td("—" if rate is None else f"{rate:.1f}", "num"),
            ]
            body.append("".join(cells))
    if not body:
        return []
    return ["<h3>Ranks of the recent runs</h3>", table("table-ranks", head, body)]


def runs_section(data: ReportData) -> str:
    """The last RUNS_IN_CHART runs charted per rank, the last RUNS_IN_TABLE listed."""
    runs = data.runs
    title = "Processing runs and throughput"
    if not runs:
        return _section("runs", title, [empty("Nothing yet: no processing run has been recorded.")])
    recent = runs[-RUNS_IN_CHART:]
    return _section("runs", title, _throughput_chart(recent) + _runs_table(runs) + _ranks_table(recent))


# ---------------------------------------------------------------- failed files and audits


def failed_section(data: ReportData) -> str:
    failed = data.failed
    if not failed:
        return '<section id="failed" data-testid="failed"><h2>Failed files</h2>\n' + (
            '<p class="ok-note" data-testid="empty">No failed files.</p></section>'
        )
    head = [("File", ""), ("Dataset", ""), ("Name", ""), ("Error", ""), ("Updated", "")]
    body = []
    for f in failed[:MAX_ROWS]:
        cells = [
            td(f.file_id),
            td(f.dataset_id),
            f'<td class="name"><code>{escape(f.file_name)}</code></td>',
            td("(no reason recorded)" if f.error is None else f.error, "err"),
            td(fmt_ts(f.updated_at), "ts"),
        ]
        body.append("".join(cells))
    return _section(
        "failed",
        "Failed files",
        [
            f'<p class="note">{len(failed)} file{"s" if len(failed) != 1 else ""} failed, most recent first. '
            "They are retried only on request.</p>",
            table("table-failed", head, body),
            more(min(len(failed), MAX_ROWS), len(failed)),
        ],
    )


def _audit_problems(data: ReportData) -> list[str]:
    problems = [a for a in data.audits if a.result != "ok"]
    if not problems:
        return [f'<p class="ok-note">All {len(data.audits)} audited files matched their recorded checksums.</p>']
    head = [("When", ""), ("File", ""), ("Dataset", ""), ("Result", ""), ("Details", "")]
    body = []
    for a in problems[:MAX_ROWS]:
        cells = [
            td(fmt_ts(a.at), "ts"),
            td(a.file_id),
            td(a.dataset_id),
            f'<td><span class="badge b-{a.result}">{escape(a.result)}</span></td>',
            td(a.details, "details"),
        ]
        body.append("".join(cells))
    return [
        "<h3>Problems, most recent first</h3>",
        table("table-audits", head, body),
        more(min(len(problems), MAX_ROWS), len(problems)),
    ]


def audits_section(data: ReportData) -> str:
    if not data.audits:
        return _section("audits", "Fixity audits", [empty("Nothing yet: no fixity audit has been run.")])
    counts = data.audit_counts
    badges = " ".join(
        f'<span class="badge b-{r}" data-result="{r}">{counts[r]} {r}</span>' for r in AUDIT_RESULTS if counts[r]
    )
    times = [a.at for a in data.audits if a.at is not None]
    last = f" Last check {fmt_ts(max(times))} UTC." if times else ""
    counts_html = f'<p data-testid="audit-counts">{badges}<span class="note">{escape(last)}</span></p>'
    return _section("audits", "Fixity audits", [counts_html, *_audit_problems(data)])
