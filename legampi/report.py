"""Render the tracking state as one self-contained HTML page (inline CSS and SVG, no scripts).

The report is read by archive operators on laptops and attached to tickets, so it must open offline,
fetch nothing (a Content-Security-Policy forbids it), and show file names from manifests as text,
never markup. ``report_data`` gathers and checks the input, ``report_sections`` draws each section
(``report_files`` the list of archived files and where each lives),
``report_html`` holds the cells and tables they share; this module assembles the page.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

from .report_data import ReportData
from .report_files import files_section
from .report_html import fmt_ts
from .report_sections import (
    archived_section,
    audits_section,
    datasets_section,
    failed_section,
    runs_section,
    summary_cards,
)

# The page, top to bottom.
SECTIONS = (
    summary_cards,
    datasets_section,
    archived_section,
    files_section,
    runs_section,
    failed_section,
    audits_section,
)

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
td.loc{min-width:18em;max-width:480px;overflow-wrap:anywhere}
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


def render_report(data: Mapping[str, Any]) -> str:
    """Return one self-contained HTML document (inline CSS + inline SVG, no scripts or network fetches)
    from the plain dict ``report_data.collect`` returns; a ValueError names a malformed field."""
    checked = ReportData.check(data)
    generated = checked.generated_at
    when = "at an unknown time" if generated is None else escape(fmt_ts(generated)) + " UTC"
    body = [
        f'<header><h1>{escape(checked.title)}</h1><p class="meta">Generated {when} by legampi</p></header>',
        *(html for section in SECTIONS if (html := section(checked))),
        "<footer>Sizes in binary units (1 GiB = 2<sup>30</sup> bytes); throughput in MB/s "
        "(10<sup>6</sup> bytes per second). All times UTC.</footer>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(checked.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )
