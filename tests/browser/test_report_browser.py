"""The HTML report in headless Chromium: the DOM it builds and the pixels it paints.

Run as a script to refresh the documentation screenshot:
``python tests/browser/test_report_browser.py docs/report.png``
"""

from __future__ import annotations

import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

from legampi.report import render_report

WIDTH, HEIGHT = 1280, 2000
EVIL_NAME = "<script>document.title='pwned'</script>.bam.c4gh"
DOCS_HEIGHT = 2780


class DomSummary(HTMLParser):
    """Counts elements and data-testids in Chromium's serialised DOM and keeps its text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.testids: Counter[str] = Counter()
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        for k, v in attrs:
            if k == "data-testid" and v:
                self.testids[v] += 1

    handle_startendtag = handle_starttag

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def write_report(data: dict, path: Path) -> str:
    path.write_text(render_report(data), encoding="utf-8")
    return path.resolve().as_uri()


def test_chromium_dom_has_plots_tables_and_escaped_names(chromium_run, report_sample, tmp_path: Path) -> None:
    report_sample["failed"][0]["file_name"] = EVIL_NAME
    url = write_report(report_sample, tmp_path / "report.html")
    result = chromium_run(["--dump-dom"], url)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    dom = DomSummary()
    dom.feed(result.stdout.decode("utf-8"))
    for testid in (
        "plot-status",
        "plot-archived",
        "plot-throughput",
        "table-datasets",
        "table-timeline",
        "table-runs",
        "table-ranks",
        "table-failed",
        "table-audits",
        "summary",
    ):
        assert dom.testids[testid] == 1, testid
    assert dom.tags["svg"] == 3
    assert dom.tags["polyline"] == 4  # three datasets and the total
    assert dom.tags["script"] == 0
    text = "".join(dom.text)
    assert EVIL_NAME in text  # shown to the reader as a literal file name
    assert "<title>legampi archive report</title>" in result.stdout.decode("utf-8")  # not 'pwned'
    assert "md5 mismatch: manifest" in text


def test_chromium_renders_empty_report(chromium_run, tmp_path: Path) -> None:
    url = write_report({"generated_at": None, "title": "empty"}, tmp_path / "empty.html")
    result = chromium_run(["--dump-dom"], url)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    dom = DomSummary()
    dom.feed(result.stdout.decode("utf-8"))
    assert dom.tags["svg"] == 0 and dom.tags["table"] == 0
    assert "".join(dom.text).count("Nothing yet") == 4


def test_chromium_screenshot_is_a_painted_page(chromium_run, report_sample, png_decode, tmp_path: Path) -> None:
    url = write_report(report_sample, tmp_path / "report.html")
    png = tmp_path / "report.png"
    result = chromium_run([f"--screenshot={png}", f"--window-size={WIDTH},{HEIGHT}"], url)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    width, height, rows = png_decode(png.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    channels = len(rows[0]) // width
    colours: Counter[bytes] = Counter()
    for row in rows[::4]:  # every 4th row is plenty to see what was painted
        for x in range(0, len(row), channels):
            colours[row[x : x + 3]] += 1
    assert len(colours) > 200, f"only {len(colours)} distinct colours: the page looks blank"
    background, n_background = colours.most_common(1)[0]
    assert n_background / sum(colours.values()) < 0.9
    # the inline SVG really painted: the 'available' segment green and the first dataset's line blue
    for hex_colour in ("2e8b57", "0072b2", "d1362f"):
        assert bytes.fromhex(hex_colour) in colours, f"#{hex_colour} not painted"


def main(argv: list[str]) -> int:
    """Write the documentation screenshot from the sample state, refusing one that cuts the page off."""
    from conftest import decode_png, find_chromium, run_chromium, sample_report_data

    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTPUT.png", file=sys.stderr)
        return 2
    out = Path(argv[1]).resolve()
    binary = find_chromium()
    if binary is None:
        print("chromium is not installed", file=sys.stderr)
        return 1
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        url = write_report(sample_report_data(), work / "report.html")
        result = run_chromium(binary, work, [f"--screenshot={out}", f"--window-size={WIDTH},{DOCS_HEIGHT}"], url)
    if result.returncode != 0:
        print(result.stderr.decode(errors="replace")[-2000:], file=sys.stderr)
        return 1
    width, _, rows = decode_png(out.read_bytes())
    ch = len(rows[0]) // width
    if any(row != row[:ch] * width for row in rows[-40:]):  # the bottom must be bare background
        print(f"{out}: page is taller than {DOCS_HEIGHT} px; raise DOCS_HEIGHT", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
