"""The report's HTML building blocks: table cells, tables, notes, and how times and rates are written.

Every text goes through ``html.escape``: file names come from manifests and must show as text, never markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape


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


def mbps(nbytes: int, seconds: float) -> float | None:
    """MB/s in decimal megabytes (what disks and networks are rated in); None when time is not positive."""
    return nbytes / seconds / 1e6 if seconds > 0 else None


def td(text: str, cls: str = "", title: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    t = f' title="{escape(title)}"' if title else ""
    return f"<td{c}{t}>{escape(text)}</td>"


def ts_td(t: datetime | None) -> str:
    """Minute precision keeps the wide timeline table on one laptop screen; seconds stay in the tooltip."""
    if t is None:
        return td("—", "ts")
    return td(t.strftime("%Y-%m-%d %H:%M"), "ts", fmt_ts(t) + " UTC")


def table(testid: str, head: Sequence[tuple[str, str]], rows: Iterable[str]) -> str:
    """A scrollable table; HEAD is (title, css class) per column, ROWS are the <tr> contents."""
    ths = "".join(f'<th class="{cls}">{escape(h)}</th>' if cls else f"<th>{escape(h)}</th>" for h, cls in head)
    body = "\n".join(f"<tr>{r}</tr>" for r in rows)
    return (
        f'<div class="scroll"><table data-testid="{testid}"><thead><tr>{ths}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def empty(text: str) -> str:
    return f'<p class="empty" data-testid="empty">{escape(text)}</p>'


def more(shown: int, total: int) -> str:
    if total <= shown:
        return ""
    return f'<p class="note">Showing {shown} of {total}; {total - shown} more not shown.</p>'
