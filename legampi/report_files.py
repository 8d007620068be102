"""The report's list of archived files and where each one lives (its archive path: a folder path or
``s3://bucket/key``), so a reader of the page can find any archived copy without the database."""

from __future__ import annotations

from html import escape

from .plots import human_bytes
from .report_data import ArchivedCopy, ReportData
from .report_html import more, table, td
from .report_sections import MAX_ROWS

# Longer locations are shortened in the middle on the page (the full one is the cell's tooltip): keys
# can be 1024 bytes and paths longer still, which would make one row fill the screen.
MAX_LOCATION_CHARS = 160


def shorten(text: str, limit: int = MAX_LOCATION_CHARS) -> str:
    """TEXT cut in the middle to LIMIT characters, keeping more of the end: the root or bucket is at the
    start and the file's own name at the end, the parts a reader looks for."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 3
    return text[:head] + "…" + text[len(text) - (limit - 1 - head) :]


def location_td(path: str | None) -> str:
    """The location as code that wraps anywhere; a shortened one carries the whole path as its title."""
    if path is None:
        return td("(not recorded)", "loc")
    shown = shorten(path)
    title = f' title="{escape(path)}"' if shown != path else ""
    return f'<td class="loc"{title}><code>{escape(shown)}</code></td>'


def _row(c: ArchivedCopy) -> str:
    size = td("—", "num") if c.size is None else td(human_bytes(c.size), "num", f"{c.size} bytes")
    return "".join(
        [
            td(c.file_id),
            td(c.dataset_id),
            f'<td class="name"><code>{escape(c.file_name)}</code></td>',
            size,
            location_td(c.archive_path),
        ]
    )


def files_section(data: ReportData) -> str:
    """The first MAX_ROWS archived files by dataset and name; nothing when none are listed (the archived
    section already says so)."""
    copies = data.copies
    if not copies:
        return ""
    head = [("File", ""), ("Dataset", ""), ("Name", ""), ("Transferred", "num"), ("Location", "")]
    note = (
        f"{len(copies)} archived file{'s' if len(copies) != 1 else ''} by dataset and name. Location: the "
        "archived copy's path in end_storage, or s3://bucket/key in an S3 archive."
    )
    parts = [
        '<section id="files" data-testid="files"><h2>Archived files and where they live</h2>',
        f'<p class="note">{escape(note)}</p>',
        table("table-files", head, [_row(c) for c in copies[:MAX_ROWS]]),
        more(min(len(copies), MAX_ROWS), len(copies)),
    ]
    if len(copies) > MAX_ROWS:
        parts.append('<p class="note"><code>legampi status --json</code> lists every file with its archive_path.</p>')
    parts.append("</section>")
    return "\n".join(p for p in parts if p)
