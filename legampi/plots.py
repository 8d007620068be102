"""Small inline-SVG chart helpers for the HTML report.

Hand-written SVG keeps the report a single self-contained file that opens offline on an HPC login
node or in a mail attachment: no plotting library, no JavaScript, no fonts or images to fetch.
Every chart uses a fixed ``viewBox`` and ``width:100%`` so it scales with the page, and carries a
``data-testid`` so tests can find it. All text that may come from manifests is HTML-escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape

WIDTH = 960
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"
AXIS_COLOUR = "#555"
GRID_COLOUR = "#e3e6ea"
CHAR_PX = 7.3  # rough average glyph width at 12 px, to size label columns and legends

BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


@dataclass(frozen=True)
class Series:
    """One line of a time chart: ``points`` are (POSIX seconds, bytes), already cumulative."""

    name: str
    colour: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False


@dataclass(frozen=True)
class Bar:
    """One bar of a horizontal bar chart; ``value`` None means "not measurable" and draws no bar."""

    label: str
    value: float | None
    colour: str
    group: str = ""


def human_bytes(n: float) -> str:
    """Format a byte count in binary units (``1.2 GiB``) because archive sizes are read by humans."""
    if n < 0:
        return "-" + human_bytes(-n)
    if n < 1024:
        return f"{int(n)} B"
    exp = min(int(math.log(n, 1024)), len(BINARY_UNITS) - 1)
    value = n / 1024**exp
    if value >= 1023.95 and exp < len(BINARY_UNITS) - 1:  # avoid "1024.0 MiB" from rounding
        exp += 1
        value = n / 1024**exp
    return f"{value:.1f} {BINARY_UNITS[exp]}"


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 × 10^k) covering [lo, hi], so axis labels are readable."""
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    k = 0
    while True:
        t = start + k * step
        ticks.append(round(t, 10))
        if t >= hi - step * 1e-9:
            break
        k += 1
    return ticks


_TIME_STEPS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    2 * 86400,
    7 * 86400,
    14 * 86400,
    28 * 86400,
    91 * 86400,
    182 * 86400,
    364 * 86400,
)


def time_ticks(lo: float, hi: float, target: int = 6) -> tuple[list[float], str]:
    """Ticks on round UTC instants inside [lo, hi] and the strftime format that suits their spacing."""
    span = max(hi - lo, 1.0)
    step = next(
        (s for s in _TIME_STEPS if span / s <= target),
        _TIME_STEPS[-1] * math.ceil(span / target / _TIME_STEPS[-1]),
    )
    first = math.ceil(lo / step) * step
    ticks = []
    t = first
    while t <= hi + 1e-6:
        ticks.append(float(t))
        t += step
    if step < 60:
        fmt = "%H:%M:%S"
    elif step < 86400:
        fmt = "%m-%d %H:%M" if span >= 86400 else "%H:%M"
    else:
        fmt = "%Y-%m-%d"
    return ticks, fmt


def _fmt_tick(v: float) -> str:
    """Tick numbers without trailing zeros (``2.5``, ``10``)."""
    return f"{v:.2f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def _open_svg(height: float, testid: str, title: str) -> list[str]:
    return [
        f'<svg class="chart" data-testid="{escape(testid)}" viewBox="0 0 {WIDTH} {height:.0f}" '
        f'width="100%" preserveAspectRatio="xMidYMin meet" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg" font-family="{escape(FONT)}" font-size="12">',
        f"<title>{escape(title)}</title>",
    ]


def _legend(items: Sequence[tuple[str, str, bool]], x0: float, y: float, max_x: float) -> tuple[list[str], float]:
    """Swatch + label per item, wrapping lines; returns the SVG parts and the y below the legend."""
    parts = ['<g class="legend" data-testid="legend">']
    x = x0
    for name, colour, dashed in items:
        w = 26 + CHAR_PX * len(name) + 22
        if x + w > max_x and x > x0:
            x = x0
            y += 18
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        parts.append(
            f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 20:.1f}" y2="{y - 4:.1f}" '
            f'stroke="{escape(colour)}" stroke-width="6"{dash}/>'
        )
        parts.append(f'<text x="{x + 26:.1f}" y="{y:.1f}" fill="#222">{escape(name)}</text>')
        x += w
    parts.append("</g>")
    return parts, y + 10


def step_points(points: Sequence[tuple[float, float]], x_end: float) -> list[tuple[float, float]]:
    """Expand cumulative points into a step-after line held flat to ``x_end``.

    Bytes become archived at an instant, so a straight segment between two completions would
    invent a gradual arrival; the step keeps each level until the next file lands. n input points
    give 2n-1 vertices, plus one when the line is extended to the right edge.
    """
    out: list[tuple[float, float]] = []
    for i, (t, v) in enumerate(points):
        if i:
            out.append((t, points[i - 1][1]))
        out.append((t, v))
    if points and points[-1][0] < x_end:
        out.append((x_end, points[-1][1]))
    return out


def time_bytes_chart(series: Sequence[Series], *, testid: str, title: str, height: int = 360) -> str:
    """Cumulative bytes against UTC time as step lines, one polyline per series, with a legend."""
    all_pts = [p for s in series for p in s.points]
    if not all_pts:
        raise ValueError(f"chart {testid!r}: no points to plot")
    x_lo = min(p[0] for p in all_pts)
    x_hi = max(p[0] for p in all_pts)
    if x_hi - x_lo < 1.0:  # everything at one instant: widen so the line is visible
        x_lo -= 30.0
        x_hi += 30.0
    y_max = max(p[1] for p in all_pts)
    exp = 0 if y_max < 1024 else min(int(math.log(y_max, 1024)), len(BINARY_UNITS) - 1)
    scale = 1024**exp
    unit = BINARY_UNITS[exp]
    y_ticks = nice_ticks(0.0, max(y_max / scale, 1e-9) if y_max else 1.0)
    y_top = y_ticks[-1] * scale

    parts = _open_svg(height, testid, title)
    legend, top = _legend([(s.name, s.colour, s.dashed) for s in series], 72, 18, WIDTH - 10)
    parts += legend
    left, right, bottom = 72.0, WIDTH - 24.0, height - 52.0
    top = max(top + 8, 40.0)

    def px(t: float) -> float:
        return left + (t - x_lo) / (x_hi - x_lo) * (right - left)

    def py(v: float) -> float:
        return bottom - (v / y_top) * (bottom - top) if y_top else bottom

    parts.append('<g class="grid">')
    for v in y_ticks:
        y = py(v * scale)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="{GRID_COLOUR}"/>')
        parts.append(
            f'<text class="tick" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end" '
            f'fill="{AXIS_COLOUR}">{_fmt_tick(v)}</text>'
        )
    ticks, fmt = time_ticks(x_lo, x_hi)
    for t in ticks:
        x = px(t)
        label = datetime.fromtimestamp(t, tz=timezone.utc).strftime(fmt)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom + 5}" stroke="{GRID_COLOUR}"/>')
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{bottom + 19}" text-anchor="middle" '
            f'fill="{AXIS_COLOUR}">{escape(label)}</text>'
        )
    parts.append("</g>")
    parts.append(f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="{AXIS_COLOUR}"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="{AXIS_COLOUR}"/>')
    start = datetime.fromtimestamp(x_lo, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
    end = datetime.fromtimestamp(x_hi, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
    parts.append(
        f'<text class="axis-label" x="{(left + right) / 2:.1f}" y="{height - 10}" text-anchor="middle" '
        f'fill="#222">time (UTC), {escape(start)} to {escape(end)}</text>'
    )
    parts.append(
        f'<text class="axis-label" transform="translate(16 {(top + bottom) / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" fill="#222">archived ({unit})</text>'
    )
    for s in series:
        pts = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in step_points(s.points, x_hi))
        dash = ' stroke-dasharray="7 4"' if s.dashed else ""
        parts.append(
            f'<polyline class="series" data-series="{escape(s.name)}" data-n="{len(s.points)}" '
            f'points="{pts}" fill="none" '
            f'stroke="{escape(s.colour)}" stroke-width="2.2" stroke-linejoin="round"{dash}>'
            f"<title>{escape(s.name)}: {escape(human_bytes(s.points[-1][1]))}</title></polyline>"
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _label_width(labels: Sequence[str]) -> float:
    return min(max((len(label) for label in labels), default=4) * CHAR_PX + 24, 300.0)


def _clip(label: str, width_px: float) -> str:
    n = int((width_px - 20) / CHAR_PX)
    return label if len(label) <= n else label[: max(n - 1, 1)] + "…"


def hbar_chart(bars: Sequence[Bar], *, testid: str, title: str, x_label: str, value_fmt: str = "{:.1f}") -> str:
    """Horizontal bars with the value printed at the end; a legend of groups (e.g. one per run)."""
    if not bars:
        raise ValueError(f"chart {testid!r}: no bars to plot")
    groups: dict[str, str] = {}
    for b in bars:
        if b.group:
            groups.setdefault(b.group, b.colour)
    label_w = _label_width([b.label for b in bars])
    left, right = label_w + 8, WIDTH - 70.0
    bar_h, gap = 18.0, 6.0
    parts: list[str] = []
    top = 14.0
    if groups:
        legend, top = _legend([(g, c, False) for g, c in groups.items()], left, 18, WIDTH - 10)
        parts += legend
        top += 6
    height = top + len(bars) * (bar_h + gap) + 50
    values = [b.value for b in bars if b.value is not None]
    ticks = nice_ticks(0.0, max(values) if values and max(values) > 0 else 1.0)
    x_top = ticks[-1]
    bottom = top + len(bars) * (bar_h + gap)

    def px(v: float) -> float:
        return left + v / x_top * (right - left)

    out = _open_svg(height, testid, title) + parts
    for v in ticks:
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{bottom + 4}" stroke="{GRID_COLOUR}"/>')
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{bottom + 18}" text-anchor="middle" '
            f'fill="{AXIS_COLOUR}">{_fmt_tick(v)}</text>'
        )
    for i, b in enumerate(bars):
        y = top + i * (bar_h + gap)
        out.append(
            f'<text class="bar-label" x="{left - 8}" y="{y + bar_h - 5:.1f}" text-anchor="end" '
            f'fill="#222">{escape(_clip(b.label, label_w))}<title>{escape(b.label)}</title></text>'
        )
        if b.value is None:
            out.append(f'<text x="{left + 4}" y="{y + bar_h - 5:.1f}" fill="{AXIS_COLOUR}">n/a</text>')
            continue
        w = max(px(b.value) - left, 0.0)
        shown = value_fmt.format(b.value)
        out.append(
            f'<rect class="bar" data-value="{b.value:.6g}" x="{left}" y="{y:.1f}" width="{w:.1f}" '
            f'height="{bar_h}" fill="{escape(b.colour)}" rx="2">'
            f"<title>{escape(b.label)}: {escape(shown)}</title></rect>"
        )
        out.append(
            f'<text class="bar-value" x="{left + w + 5:.1f}" y="{y + bar_h - 5:.1f}" fill="#222">{escape(shown)}</text>'
        )
    out.append(f'<line x1="{left}" y1="{top - 2}" x2="{left}" y2="{bottom + 4}" stroke="{AXIS_COLOUR}"/>')
    out.append(
        f'<text class="axis-label" x="{(left + right) / 2:.1f}" y="{height - 12:.1f}" '
        f'text-anchor="middle" fill="#222">{escape(x_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)


def stacked_hbar_chart(
    rows: Sequence[tuple[str, Mapping[str, int]]],
    categories: Sequence[tuple[str, str]],
    *,
    testid: str,
    title: str,
    x_label: str,
) -> str:
    """One horizontal bar per row split into category segments (e.g. files by status per dataset)."""
    if not rows:
        raise ValueError(f"chart {testid!r}: no rows to plot")
    label_w = _label_width([r[0] for r in rows])
    left, right = label_w + 8, WIDTH - 70.0
    bar_h, gap = 22.0, 8.0
    legend, top = _legend([(name, colour, False) for name, colour in categories], left, 18, WIDTH - 10)
    top += 6
    bottom = top + len(rows) * (bar_h + gap)
    height = bottom + 46
    totals = [sum(counts.get(name, 0) for name, _ in categories) for _, counts in rows]
    ticks = nice_ticks(0.0, max(max(totals), 1))
    x_top = ticks[-1]

    def px(v: float) -> float:
        return left + v / x_top * (right - left)

    out = _open_svg(height, testid, title) + legend
    for v in ticks:
        x = px(v)
        out.append(f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{bottom + 4}" stroke="{GRID_COLOUR}"/>')
        out.append(
            f'<text class="tick" x="{x:.1f}" y="{bottom + 18}" text-anchor="middle" '
            f'fill="{AXIS_COLOUR}">{_fmt_tick(v)}</text>'
        )
    for i, ((label, counts), total) in enumerate(zip(rows, totals, strict=True)):
        y = top + i * (bar_h + gap)
        out.append(
            f'<text class="bar-label" x="{left - 8}" y="{y + bar_h - 7:.1f}" text-anchor="end" '
            f'fill="#222">{escape(_clip(label, label_w))}<title>{escape(label)}</title></text>'
        )
        acc = 0
        for name, colour in categories:
            n = counts.get(name, 0)
            if n <= 0:
                continue
            x0, x1 = px(acc), px(acc + n)
            out.append(
                f'<rect class="segment" data-category="{escape(name)}" data-value="{n}" x="{x0:.1f}" '
                f'y="{y:.1f}" width="{x1 - x0:.1f}" height="{bar_h}" fill="{escape(colour)}">'
                f"<title>{escape(label)}: {n} {escape(name)}</title></rect>"
            )
            if x1 - x0 >= CHAR_PX * len(str(n)) + 6:
                out.append(
                    f'<text x="{(x0 + x1) / 2:.1f}" y="{y + bar_h - 7:.1f}" text-anchor="middle" '
                    f'fill="#fff" font-weight="600">{n}</text>'
                )
            acc += n
        out.append(f'<text class="bar-value" x="{px(acc) + 5:.1f}" y="{y + bar_h - 7:.1f}" fill="#222">{total}</text>')
    out.append(f'<line x1="{left}" y1="{top - 2}" x2="{left}" y2="{bottom + 4}" stroke="{AXIS_COLOUR}"/>')
    out.append(
        f'<text class="axis-label" x="{(left + right) / 2:.1f}" y="{height - 10:.1f}" '
        f'text-anchor="middle" fill="#222">{escape(x_label)}</text>'
    )
    out.append("</svg>")
    return "\n".join(out)
