"""HTML report: structure, values, plots, escaping and empty states, checked through a real HTML parser."""

from __future__ import annotations

import copy
from decimal import Decimal
from html.parser import HTMLParser

import pytest

from legampi.plots import human_bytes, nice_ticks, step_points, time_ticks
from legampi.report import render_report
from legampi.report_data import collect
from legampi.report_files import MAX_LOCATION_CHARS, shorten
from legampi.report_html import fmt_duration
from legampi.report_sections import MAX_ROWS, RUNS_IN_CHART, STATUS_COLOURS
from legampi.status import DATASET_DATES, FILE_FIELDS, STATUSES

VOID = {"meta", "br", "hr", "img", "input", "link"}
GIB = 1024**3
MIB = 1024**2


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag) and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, **attrs)
        assert len(found) == 1, f"expected one <{tag} {attrs}>, found {len(found)}"
        return found[0]


class TreeBuilder(HTMLParser):
    """Minimal DOM: enough to assert on tables and SVG, and strict about unbalanced tags."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root", {}, None)
        self.cur = self.root
        self.doctype = ""

    def handle_decl(self, decl: str) -> None:
        self.doctype = decl

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.cur.tag == tag, f"</{tag}> closes <{self.cur.tag}>"
        assert self.cur.parent is not None
        self.cur = self.cur.parent

    def handle_data(self, data: str) -> None:
        self.cur.children.append(data)


def parse(html: str) -> tuple[Node, str]:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    assert builder.cur is builder.root, f"unclosed <{builder.cur.tag}>"
    return builder.root, builder.doctype


def rows(table: Node) -> list[list[str]]:
    return [[td.text().strip() for td in tr.find_all("td")] for tr in table.find("tbody").find_all("tr")]


def header(table: Node) -> list[str]:
    return [th.text().strip() for th in table.find("thead").find_all("th")]


def status(files: int = 0, nbytes: int = 0) -> dict[str, int]:
    return {"files": files, "bytes": nbytes}


def base_data() -> dict:
    return {
        "generated_at": "2024-01-03T12:00:00Z",
        "title": "test archive",
        "datasets": [
            {
                "dataset_id": "DS-A",
                "n_files": 3,
                "n_bytes": 3 * GIB,
                "date_requested": "2024-01-01T00:00:00Z",
                "date_download_start": "2024-01-01T02:00:00Z",
                "date_download_end": "2024-01-01T02:30:00+00:00",
                "date_processing_end": "2024-01-01T05:15:00",
                "by_status": {
                    "pending": status(),
                    "received": status(),
                    "processing": status(),
                    "available": status(2, 2 * GIB),
                    "failed": status(1, GIB),
                },
            },
            {
                "dataset_id": "DS-B",
                "n_files": 2,
                "n_bytes": 3 * MIB,
                "date_requested": "2024-01-02T00:00:00Z",
                "date_download_start": None,
                "date_download_end": None,
                "date_processing_end": None,
                "by_status": {"pending": status(1, 2 * MIB), "available": status(1, MIB)},
            },
        ],
        "archived": [
            {"at": "2024-01-01T03:00:00Z", "bytes": GIB, "dataset_id": "DS-A"},
            {"at": "2024-01-01T04:00:00Z", "bytes": GIB, "dataset_id": "DS-A"},
            {"at": "2024-01-01T03:30:00Z", "bytes": MIB, "dataset_id": "DS-B"},
        ],
        "runs": [
            {
                "job_id": "100",
                "started_at": "2024-01-01T02:50:00Z",
                "ended_at": "2024-01-01T04:10:00Z",
                "files": 3,
                "bytes": 2 * GIB + MIB,
                "failed": 1,
                "ranks": [
                    {"rank": 0, "host": "n1", "files": 0, "bytes": 0, "seconds": 0.0},
                    {"rank": 1, "host": "n1", "files": 2, "bytes": 200_000_000, "seconds": 2.0},
                    {"rank": 2, "host": "n2", "files": 1, "bytes": 50_000_000, "seconds": 0.0},
                ],
            },
        ],
        "failed": [
            {
                "file_id": "F3",
                "dataset_id": "DS-A",
                "file_name": "c.bam.c4gh",
                "error": "md5 mismatch: manifest aa, computed bb",
                "updated_at": "2024-01-01T04:05:00Z",
            }
        ],
        "audits": [
            {
                "at": "2024-01-02T01:00:00Z",
                "file_id": "F1",
                "dataset_id": "DS-A",
                "result": "ok",
                "details": None,
            },
            {
                "at": "2024-01-02T01:00:05Z",
                "file_id": "F2",
                "dataset_id": "DS-A",
                "result": "mismatch",
                "details": "sha256 differs",
            },
        ],
    }


def test_document_is_self_contained_and_well_formed() -> None:
    html = render_report(base_data())
    root, doctype = parse(html)
    assert doctype.lower() == "doctype html"
    assert root.find("head").find("title").text() == "test archive"
    assert not root.find_all("script") and not root.find_all("link") and not root.find_all("img")
    for node in root.iter():
        for name, value in node.attrs.items():
            assert name not in ("src", "href") and not name.startswith("on"), (node.tag, name, value)
    csp = root.find("meta", http_equiv="Content-Security-Policy").attrs["content"]
    assert "default-src 'none'" in csp
    assert len(root.find_all("svg")) == 3
    assert {s.attrs["data-testid"] for s in root.find_all("svg")} == {
        "plot-status",
        "plot-archived",
        "plot-throughput",
    }
    for svg in root.find_all("svg"):
        assert svg.attrs["viewbox"].startswith("0 0 ") and svg.attrs["width"] == "100%"


def test_dataset_table_counts_bytes_and_progress() -> None:
    root, _ = parse(render_report(base_data()))
    table = root.find("table", data_testid="table-datasets")
    assert header(table)[:4] == ["Dataset", "Files", "Transferred", "Plaintext"]
    body = rows(table)
    assert [r[0] for r in body] == ["DS-A", "DS-B"]
    assert body[0][1:3] == ["3", "3.0 GiB"]
    assert body[1][1:3] == ["2", "3.0 MiB"]
    tr_a = table.find("tbody").find_all("tr")[0]
    cells = {td.attrs["data-status"]: td.text() for td in tr_a.find_all("td") if "data-status" in td.attrs}
    assert cells["available"] == "22.0 GiB" and cells["failed"] == "11.0 GiB" and cells["pending"] == "00 B"
    assert body[0][-1] == "66.7%"
    status_plot = root.find("svg", data_testid="plot-status")
    segs = {(r.attrs["data-category"], r.attrs["data-value"]) for r in status_plot.find_all("rect")}
    assert segs == {("available", "2"), ("failed", "1"), ("pending", "1"), ("available", "1")}


def test_timeline_durations_between_steps() -> None:
    root, _ = parse(render_report(base_data()))
    table = root.find("table", data_testid="table-timeline")
    assert header(table) == [
        "Dataset",
        "Requested",
        "Wait",
        "Download start",
        "Download",
        "Download end",
        "Processing",
        "Processing end",
        "Total",
    ]
    a, b = rows(table)
    # naive "2024-01-01T05:15:00" is read as UTC
    assert a == [
        "DS-A",
        "2024-01-01 00:00",
        "2 h 00 min",
        "2024-01-01 02:00",
        "30 min 00 s",
        "2024-01-01 02:30",
        "2 h 45 min",
        "2024-01-01 05:15",
        "5 h 15 min",
    ]
    assert b == ["DS-B", "2024-01-02 00:00", "—", "—", "—", "—", "—", "—", "—"]


def test_archived_plot_has_one_step_vertex_pair_per_archived_file() -> None:
    data = base_data()
    root, _ = parse(render_report(data))
    plot = root.find("svg", data_testid="plot-archived")
    lines = {p.attrs["data-series"]: p for p in plot.find_all("polyline")}
    assert set(lines) == {"DS-A", "DS-B", "all datasets"}
    per_ds = {"DS-A": 2, "DS-B": 1}
    for name, poly in lines.items():
        n_entries = per_ds.get(name, len(data["archived"]))
        assert int(poly.attrs["data-n"]) == n_entries + 1  # archived entries + the zero baseline
        pts = [tuple(map(float, p.split(","))) for p in poly.attrs["points"].split()]
        # step line: baseline, then (t, previous) and (t, new) per entry; held flat to the right edge
        # unless the series' last file is the overall last one (DS-A and the total end at 04:00).
        extended = 0 if name in ("DS-A", "all datasets") else 1
        assert len(pts) == 2 * n_entries + 1 + extended
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        assert xs == sorted(xs)
        assert ys == sorted(ys, reverse=True)  # cumulative bytes never decrease (SVG y grows downwards)
    legend = plot.find("g", data_testid="legend").text()
    assert "DS-A" in legend and "all datasets" in legend
    texts = [t.text() for t in plot.find_all("text")]
    assert "archived (GiB)" in texts
    assert any(t.startswith("time (UTC)") for t in texts)
    assert sum(1 for t in plot.find_all("text") if t.attrs.get("class") == "tick") >= 4


def test_single_dataset_single_instant_still_plots() -> None:
    data = base_data()
    data["archived"] = [{"at": "2024-01-01T03:00:00Z", "bytes": 10, "dataset_id": "DS-A"}]
    root, _ = parse(render_report(data))
    polys = root.find("svg", data_testid="plot-archived").find_all("polyline")
    assert [p.attrs["data-series"] for p in polys] == ["DS-A"]
    pts = [tuple(map(float, p.split(","))) for p in polys[0].attrs["points"].split()]
    assert max(p[0] for p in pts) > min(p[0] for p in pts)  # widened around the instant, not a dot
    assert "archived (B)" in [t.text() for t in root.find_all("text")]


def test_many_datasets_draw_only_the_total() -> None:
    data = base_data()
    data["archived"] = [{"at": f"2024-01-01T03:{i:02d}:00Z", "bytes": 1000, "dataset_id": f"D{i}"} for i in range(12)]
    root, _ = parse(render_report(data))
    polys = root.find("svg", data_testid="plot-archived").find_all("polyline")
    assert [p.attrs["data-series"] for p in polys] == ["all datasets"]
    assert "12 datasets: only the total is drawn" in root.find("section", id="archived").text()


def test_throughput_per_rank_is_bytes_over_seconds_in_mb() -> None:
    root, _ = parse(render_report(base_data()))
    plot = root.find("svg", data_testid="plot-throughput")
    bars = {r.find("title").text(): float(r.attrs["data-value"]) for r in plot.find_all("rect")}
    assert bars == {"job 100 · rank 0 (n1): 0.0": 0.0, "job 100 · rank 1 (n1): 100.0": 100.0}
    # rank 2 moved bytes in zero recorded seconds: no bar, an explicit n/a
    assert "n/a" in [t.text() for t in plot.find_all("text")]
    assert "throughput per rank (MB/s" in plot.text()
    ranks = rows(root.find("table", data_testid="table-ranks"))
    assert [r[1] for r in ranks] == ["0", "1", "2"] and [r[-1] for r in ranks] == ["—", "100.0", "—"]
    (run,) = rows(root.find("table", data_testid="table-runs"))
    assert run[0] == "100" and run[3] == "1 h 20 min"
    assert run[-1] == f"{(2 * GIB + MIB) / 4800 / 1e6:.1f}"


def test_only_the_last_runs_are_charted_but_more_are_listed() -> None:
    data = base_data()
    template = data["runs"][0]
    data["runs"] = []
    for k in range(RUNS_IN_CHART + 2):
        run = copy.deepcopy(template)
        run["job_id"] = f"J{k}"
        run["started_at"] = f"2024-01-0{k + 1}T00:00:00Z"
        run["ended_at"] = None if k == RUNS_IN_CHART + 1 else f"2024-01-0{k + 1}T01:00:00Z"
        data["runs"].append(run)
    data["runs"].reverse()  # input order must not matter: runs are sorted by start
    root, _ = parse(render_report(data))
    groups = root.find("svg", data_testid="plot-throughput").find("g", data_testid="legend").text()
    assert "J0" not in groups and "J1" not in groups and "J4" in groups
    listed = rows(root.find("table", data_testid="table-runs"))
    assert [r[0] for r in listed] == [f"J{k}" for k in reversed(range(RUNS_IN_CHART + 2))]
    assert listed[0][2] == "running" and listed[0][-1] == "—"


def test_failed_files_list_reason_newest_first() -> None:
    data = base_data()
    data["failed"].append(
        {
            "file_id": "F9",
            "dataset_id": "DS-B",
            "file_name": "z.cip",
            "error": None,
            "updated_at": "2024-01-02T00:00:00Z",
        }
    )
    root, _ = parse(render_report(data))
    table = root.find("table", data_testid="table-failed")
    assert rows(table) == [
        ["F9", "DS-B", "z.cip", "(no reason recorded)", "2024-01-02 00:00:00"],
        ["F3", "DS-A", "c.bam.c4gh", "md5 mismatch: manifest aa, computed bb", "2024-01-01 04:05:00"],
    ]
    card = [
        c for c in root.find_all("div") if c.attrs.get("class", "").startswith("card") and "Failed files" in c.text()
    ]
    assert card and "2" in card[0].text()


def test_names_from_manifests_render_as_text() -> None:
    evil = "<script>alert(1)</script>.bam"
    data = base_data()
    data["title"] = "<b>title</b>"
    data["failed"][0]["file_name"] = evil
    data["failed"][0]["error"] = "bad & <img src=x onerror=alert(2)>"
    data["datasets"][0]["dataset_id"] = "DS-<i>A</i>"
    data["archived"][0]["dataset_id"] = "DS-<i>A</i>"
    data["runs"][0]["ranks"][1]["host"] = '"><svg onload=alert(3)>'
    data["audits"][1]["details"] = "</td><script>x</script>"
    html = render_report(data)
    root, _ = parse(html)
    assert not root.find_all("script") and not root.find_all("img") and not root.find_all("i")
    assert not root.find_all("b")
    assert len(root.find_all("svg")) == 3  # the host name did not open a fourth one
    assert all(not k.startswith("on") for n in root.iter() for k in n.attrs)
    assert rows(root.find("table", data_testid="table-failed"))[0][2:4] == [
        evil,
        "bad & <img src=x onerror=alert(2)>",
    ]
    assert root.find("h1").text() == "<b>title</b>"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.bam" in html
    assert any(p.attrs["data-series"] == "DS-<i>A</i>" for p in root.find_all("polyline"))
    assert rows(root.find("table", data_testid="table-audits"))[0][-1] == "</td><script>x</script>"


def test_audit_counts_and_problems() -> None:
    data = base_data()
    data["audits"].append(
        {
            "at": "2024-01-02T02:00:00Z",
            "file_id": "F7",
            "dataset_id": "DS-B",
            "result": "missing",
            "details": "no such file",
        }
    )
    root, _ = parse(render_report(data))
    counts = {
        s.attrs["data-result"]: s.text()
        for s in root.find("p", data_testid="audit-counts").find_all("span")
        if "data-result" in s.attrs
    }
    assert counts == {"ok": "1 ok", "mismatch": "1 mismatch", "missing": "1 missing"}
    assert [r[1:4] for r in rows(root.find("table", data_testid="table-audits"))] == [
        ["F7", "DS-B", "missing"],
        ["F2", "DS-A", "mismatch"],
    ]


def test_all_ok_audits_say_so() -> None:
    data = base_data()
    data["audits"] = [a for a in data["audits"] if a["result"] == "ok"]
    root, _ = parse(render_report(data))
    section = root.find("section", id="audits")
    assert not section.find_all("table")
    assert "All 1 audited files matched" in section.text()


def test_empty_data_says_nothing_yet_instead_of_empty_plots() -> None:
    html = render_report(
        {
            "generated_at": None,
            "title": "empty",
            "datasets": [],
            "archived": [],
            "runs": [],
            "failed": [],
            "audits": [],
        }
    )
    root, _ = parse(html)
    assert not root.find_all("svg") and not root.find_all("table")
    for section_id in ("datasets", "archived", "runs", "audits"):
        empty = root.find("section", id=section_id).find("p", data_testid="empty")
        assert empty.text().startswith("Nothing yet"), section_id
    assert root.find("section", id="failed").text().endswith("No failed files.")
    assert "no files registered" in root.find("div", data_testid="summary").text()
    assert root.find("p", **{"class": "meta"}).text() == "Generated at an unknown time by legampi"
    # missing lists are the same as empty ones
    assert parse(render_report({"generated_at": "2024-01-01T00:00:00Z", "title": "x"}))[0].find_all("svg") == []


def test_datasets_without_activity_yet() -> None:
    data = base_data()
    data["archived"], data["runs"], data["failed"], data["audits"] = [], [], [], []
    root, _ = parse(render_report(data))
    assert [s.attrs["data-testid"] for s in root.find_all("svg")] == ["plot-status"]
    assert root.find("section", id="archived").find("p", data_testid="empty").text().startswith("Nothing yet")


def test_postgres_decimal_sums_are_accepted() -> None:
    data = base_data()
    data["datasets"][0]["n_bytes"] = Decimal(3 * GIB)
    data["datasets"][0]["by_status"]["available"]["bytes"] = Decimal(2 * GIB)
    root, _ = parse(render_report(data))
    assert rows(root.find("table", data_testid="table-datasets"))[0][2] == "3.0 GiB"


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["datasets"][1].update(date_requested="yesterday"), "datasets[1].date_requested"),
        (lambda d: d["archived"][2].pop("bytes"), "archived[2] has no 'bytes'"),
        (lambda d: d["archived"][0].update(at=None), "archived[0].at is None"),
        (
            lambda d: d["runs"][0]["ranks"][1].update(seconds="fast"),
            "runs[0].ranks[1].seconds must be a number",
        ),
        (lambda d: d["datasets"][0].update(n_files=1.5), "datasets[0].n_files must be an integer"),
        (lambda d: d["audits"][0].update(result="great"), "audits[0].result must be one of"),
        (lambda d: d.update(runs={"job": 1}), "'runs' must be a list"),
    ],
)
def test_bad_input_names_the_field(mutate, message: str) -> None:
    data = base_data()
    mutate(data)
    with pytest.raises(ValueError, match=r"report data: ") as info:
        render_report(data)
    assert message in str(info.value)


def test_human_bytes() -> None:
    assert human_bytes(0) == "0 B"
    assert human_bytes(1023) == "1023 B"
    assert human_bytes(1024) == "1.0 KiB"
    assert human_bytes(int(1.2 * GIB)) == "1.2 GiB"
    assert human_bytes(1024**2 - 1) == "1.0 MiB"  # not "1024.0 KiB"
    assert human_bytes(5 * 1024**5) == "5.0 PiB"


def test_fmt_duration() -> None:
    from datetime import datetime, timedelta, timezone

    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    assert fmt_duration(t, None) == "—"
    assert fmt_duration(t, t + timedelta(seconds=2.5)) == "2.5 s"
    assert fmt_duration(t, t + timedelta(seconds=75)) == "1 min 15 s"
    assert fmt_duration(t, t + timedelta(hours=3, minutes=4)) == "3 h 04 min"
    assert fmt_duration(t, t + timedelta(days=2, hours=5)) == "2 d 5 h"
    assert fmt_duration(t + timedelta(minutes=1), t) == "−1 min 00 s"


def test_axis_helpers() -> None:
    ticks = nice_ticks(0, 55.4)
    assert ticks[0] == 0 and ticks[-1] >= 55.4 and len(ticks) <= 8
    assert nice_ticks(0, 0)[-1] > 0
    ticks, fmt = time_ticks(0, 3 * 3600)
    assert all(t % 1800 == 0 for t in ticks) and fmt == "%H:%M"
    assert time_ticks(0, 3 * 86400)[1] != "%H:%M"
    assert step_points([(0, 0), (1, 5), (2, 7)], 3) == [(0, 0), (1, 0), (1, 5), (2, 5), (2, 7), (3, 7)]


def test_the_status_chart_has_one_colour_per_status() -> None:
    assert sorted(STATUS_COLOURS) == sorted(STATUSES)


def test_dataset_table_and_summary_show_transferred_and_plaintext_sizes() -> None:
    """Issue 17: both sizes, named; data saved before plaintext_bytes existed still renders."""
    data = base_data()
    data["datasets"][0]["by_status"]["available"] = {"files": 2, "bytes": 2 * GIB, "plaintext_bytes": GIB}
    root, _ = parse(render_report(data))
    table = root.find("table", data_testid="table-datasets")
    body = rows(table)
    assert body[0][2:4] == ["3.0 GiB", "1.0 GiB"]  # transferred, plaintext
    assert body[1][2:4] == ["3.0 MiB", "0 B"]  # archived, plaintext size not in the saved data
    summary = root.find("div", data_testid="summary").text()
    assert "transferred" in summary and "plaintext" in summary


def copy_row(file_id: str, name: str, path: str | None, dataset: str = "DS-A", size: int | None = MIB) -> dict:
    return {"file_id": file_id, "dataset_id": dataset, "file_name": name, "size": size, "archive_path": path}


POSIX_PATH = "/srv/archive/end_storage/DS-A/a & <b>.bam.c4gh"
S3_PATH = "s3://ega-archive/legampi/DS-A/x<y>&z.bam.c4gh"


def test_archived_files_show_where_they_live_escaped() -> None:
    """Issue 16: each archived file's location (a folder path or s3://bucket/key) is on the page, as text."""
    data = base_data()
    data["archived_files"] = [
        copy_row("F2", "x<y>&z.bam.c4gh", S3_PATH),
        copy_row("F1", "a & <b>.bam.c4gh", POSIX_PATH),
        copy_row("F7", "later.bam.c4gh", None, dataset="DS-B", size=None),
    ]
    html = render_report(data)
    root, _ = parse(html)
    assert not root.find_all("b") and not root.find_all("y")
    table = root.find("section", id="files").find("table", data_testid="table-files")
    assert header(table) == ["File", "Dataset", "Name", "Transferred", "Location"]
    assert rows(table) == [
        ["F1", "DS-A", "a & <b>.bam.c4gh", "1.0 MiB", POSIX_PATH],
        ["F2", "DS-A", "x<y>&z.bam.c4gh", "1.0 MiB", S3_PATH],
        ["F7", "DS-B", "later.bam.c4gh", "—", "(not recorded)"],
    ]
    assert "/srv/archive/end_storage/DS-A/a &amp; &lt;b&gt;.bam.c4gh" in html
    assert "s3://ega-archive/legampi/DS-A/x&lt;y&gt;&amp;z.bam.c4gh" in html
    assert [s.attrs["id"] for s in root.find_all("section")][:3] == ["datasets", "archived", "files"]


def test_long_locations_are_shortened_in_the_middle_with_the_whole_one_as_title() -> None:
    long_key = "s3://bucket/" + "/".join(f"level-{i:03d}" for i in range(120)) + "/<the file>.bam.c4gh"
    short = shorten(long_key)
    assert len(short) == MAX_LOCATION_CHARS and "…" in short
    assert short.startswith("s3://bucket/level-000") and short.endswith("/<the file>.bam.c4gh")
    assert shorten("s3://b/k.c4gh") == "s3://b/k.c4gh"
    data = base_data()
    data["archived_files"] = [copy_row("F1", "f.c4gh", long_key), copy_row("F2", "g.c4gh", S3_PATH)]
    html = render_report(data)
    root, _ = parse(html)
    cells = [tr.find_all("td")[-1] for tr in root.find("table", data_testid="table-files").find_all("tr")[1:]]
    assert [c.text() for c in cells] == [short, S3_PATH]
    assert cells[0].attrs["title"] == long_key and "title" not in cells[1].attrs
    assert len(html) < 60_000


def test_many_archived_files_list_a_bounded_number_and_say_where_the_rest_are() -> None:
    data = base_data()
    n = MAX_ROWS + 7
    data["archived_files"] = [copy_row(f"F{i:05d}", f"d/f{i:05d}.c4gh", f"/a/d/f{i:05d}.c4gh") for i in range(n)]
    html = render_report(data)
    root, _ = parse(html)
    section = root.find("section", id="files")
    assert len(rows(section.find("table", data_testid="table-files"))) == MAX_ROWS
    assert f"Showing {MAX_ROWS} of {n}; 7 more not shown." in section.text()
    assert "legampi status --json" in section.text()
    assert "/a/d/f00499.c4gh" in html and "/a/d/f00500.c4gh" not in html
    assert len(html) < 200_000


def test_no_archived_files_no_files_section_and_bad_rows_name_the_field() -> None:
    root, _ = parse(render_report(base_data()))  # data saved before archived_files existed
    assert not root.find_all("section", id="files")
    data = base_data()
    data["archived_files"] = [copy_row("F1", "f.c4gh", "/a/f.c4gh", size="big")]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"archived_files\[0\]\.size must be an integer"):
        render_report(data)
    data["archived_files"] = [{"file_id": "F1"}]
    with pytest.raises(ValueError, match=r"archived_files\[0\] has no 'dataset_id'"):
        render_report(data)


class FakeRows:
    """The database's answers collect asks for, as plain rows."""

    def datasets(self, dataset_id: str | None = None) -> list[dict]:
        return [{"dataset_id": "DS-A", "n_files": 2, "n_bytes": 300} | {k: None for k in DATASET_DATES}]

    def status_counts(self, dataset_id: str | None = None) -> list[dict]:
        return [{"dataset_id": "DS-A", "status": s, "files": 1, "bytes": 100} for s in ("available", "failed")]

    def files(self, dataset_id: str | None = None) -> list[dict]:
        none = {k: None for k in FILE_FIELDS}
        return [
            none | copy_row("F1", "a.c4gh", "s3://bkt/pre/a.c4gh", size=100) | {"status": "available"},
            none | copy_row("F2", "b.c4gh", None, size=200) | {"status": "failed", "error": "checksum: md5"},
        ]

    def jobs(self, limit: int = 20) -> list[dict]:
        return []

    def job_ranks(self, job_ids: list[str]) -> list[dict]:
        return []

    def job_failures(self, job_ids: list[str]) -> dict[str, int]:
        return {}

    def events(self, file_id: str | None = None, dataset_id: str | None = None) -> list[dict]:
        return []

    def archived_timeline(self, dataset_id: str | None = None) -> list[dict]:
        return [{"at": "2024-01-01T00:00:00Z", "bytes": 100, "dataset_id": "DS-A"}]


def test_collect_gathers_the_archive_path_of_each_available_file() -> None:
    data = collect(FakeRows())
    assert data["archived_files"] == [copy_row("F1", "a.c4gh", "s3://bkt/pre/a.c4gh", size=100)]
    table = parse(render_report(data))[0].find("table", data_testid="table-files")
    assert rows(table) == [["F1", "DS-A", "a.c4gh", "100 B", "s3://bkt/pre/a.c4gh"]]
