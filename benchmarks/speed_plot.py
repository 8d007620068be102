#!/usr/bin/env python3
"""Draw docs/speed.svg from docs/speed.json: legampi against its baseline, one bar per figure.

The figures live in the JSON so they can be updated after a new measurement and the plot drawn
again, without matplotlib (hand-written SVG, like docs/scaling.svg). Each entry of "entries":

  name           what is measured (e.g. "small files")
  setup          the inputs and ranks, one line
  unit           of the two figures (files/s, MB/s)
  legampi        legampi's figure
  baseline       the baseline's figure, measured in the same run
  baseline_name  what the baseline is (the ideal script, legampi before a change...)
  ratio          legampi / baseline as the benchmark reports it (a median of per-round ratios can
                 differ from the ratio of the medians)
  goal           the goal, as text
  goal_ratio     the goal on the bar's scale (a ratio goal as is; an absolute one over the baseline);
                 null when it has none
  command        the command that measured it
  date           when (YYYY-MM-DD), and the machine load if known

A bar is green when it reaches its goal_ratio, orange when not; a dashed mark shows the goal and a
grey line the baseline (1.0).

    python benchmarks/speed_plot.py                      # docs/speed.json -> docs/speed.svg
    python benchmarks/speed_plot.py --json other.json --svg /tmp/speed.svg
"""

from __future__ import annotations

import argparse
import json
import sys
from html import escape
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 1200
LEFT = 330.0  # labels
RIGHT = WIDTH - 400.0  # figures and goal
ROW = 54.0
TOP = 52.0
MET, MISSED, GOAL, BASE = "#2e7d32", "#ef6c00", "#c62828", "#777"
FIELDS = (
    "name",
    "setup",
    "unit",
    "legampi",
    "baseline",
    "baseline_name",
    "ratio",
    "goal",
    "goal_ratio",
    "command",
    "date",
)


def check(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries, or ValueError naming the entry and field that is missing or not a number."""
    entries = data.get("entries")
    if not isinstance(entries, list) or not entries:
        raise ValueError("no entries")
    for i, e in enumerate(entries, 1):
        missing = [f for f in FIELDS if f not in e]
        if missing:
            raise ValueError(f"entry {i} ({e.get('name', '?')}): missing {', '.join(missing)}")
        for f in ("legampi", "baseline", "ratio"):
            if not isinstance(e[f], (int, float)) or e[f] < 0:
                raise ValueError(f"entry {i} ({e['name']}): {f} must be a number >= 0, not {e[f]!r}")
        if e["goal_ratio"] is not None and not isinstance(e["goal_ratio"], (int, float)):
            raise ValueError(f"entry {i} ({e['name']}): goal_ratio must be a number or null")
    return entries


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def render(data: dict[str, Any]) -> str:
    """The SVG text for DATA (see the module docstring): one <rect class="bar"> per entry."""
    entries = check(data)
    top_value = max(max(e["ratio"], e["goal_ratio"] or 0.0, 1.0) for e in entries) * 1.1
    height = TOP + ROW * len(entries) + 40 + 16 * len(entries)

    def px(v: float) -> float:
        return LEFT + v / top_value * (RIGHT - LEFT)

    title = str(data.get("title", "legampi against its baselines"))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{height:.0f}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="20" text-anchor="middle" font-size="15" fill="#222">{escape(title)}</text>',
        f'<text x="{WIDTH / 2}" y="38" text-anchor="middle" fill="#555">bar: legampi / baseline '
        f"(1.0 = the baseline); dashed mark: the goal</text>",
    ]
    bottom = TOP + ROW * len(entries)
    out.append(f'<line x1="{px(1.0):.1f}" y1="{TOP - 6}" x2="{px(1.0):.1f}" y2="{bottom}" stroke="{BASE}"/>')
    out.append(f'<text x="{px(1.0):.1f}" y="{bottom + 14}" text-anchor="middle" fill="{BASE}">1.0</text>')
    for i, e in enumerate(entries):
        y = TOP + i * ROW
        goal = e["goal_ratio"]
        met = goal is None or e["ratio"] >= goal
        out.append(f'<text x="{LEFT - 8}" y="{y + 14}" text-anchor="end" fill="#222" font-weight="bold">'
                   f"{escape(e['name'])}</text>")  # fmt: skip
        out.append(f'<text x="{LEFT - 8}" y="{y + 30}" text-anchor="end" fill="#555" font-size="11">'
                   f"{escape(e['setup'])}</text>")  # fmt: skip
        w = max(px(e["ratio"]) - LEFT, 0.0)
        out.append(
            f'<rect class="bar" data-name="{escape(e["name"])}" data-value="{e["ratio"]:.6g}" x="{LEFT}" '
            f'y="{y + 4}" width="{w:.1f}" height="22" fill="{MET if met else MISSED}" rx="2">'
            f"<title>{escape(e['command'])} ({escape(str(e['date']))})</title></rect>"
        )
        if goal is not None:
            gx = px(goal)
            out.append(f'<line class="goal" x1="{gx:.1f}" y1="{y}" x2="{gx:.1f}" y2="{y + 30}" stroke="{GOAL}" '
                       'stroke-width="2" stroke-dasharray="4 3"/>')  # fmt: skip
        out.append(f'<text x="{LEFT + w + 6:.1f}" y="{y + 20}" fill="#222">{e["ratio"]:.2f}×</text>')
        figures = f"legampi {_num(e['legampi'])} {e['unit']}, {e['baseline_name']} {_num(e['baseline'])} {e['unit']}"
        out.append(f'<text x="{RIGHT + 12}" y="{y + 14}" fill="#222">{escape(figures)}</text>')
        out.append(f'<text x="{RIGHT + 12}" y="{y + 30}" fill="{GOAL if not met else "#555"}">'
                   f"goal {escape(e['goal'])}{'' if met else ' (not yet)'}</text>")  # fmt: skip
    y = bottom + 34
    for i, e in enumerate(entries):
        out.append(f'<text x="10" y="{y + 16 * i}" fill="#555" font-size="11">{escape(e["name"])}: '
                   f"{escape(e['command'])} ({escape(str(e['date']))})</text>")  # fmt: skip
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speed_plot.py", description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "speed.json", help="figures (default docs/speed.json)")
    p.add_argument("--svg", type=Path, default=ROOT / "docs" / "speed.svg", help="output (default docs/speed.svg)")
    a = p.parse_args(argv)
    try:
        data = json.loads(a.json.read_text(encoding="utf-8"))
        svg = render(data)
    except (OSError, ValueError) as exc:
        print(f"error: {a.json}: {exc}", file=sys.stderr)
        return 1
    a.svg.write_text(svg, encoding="utf-8")
    print(f"SVG: {a.svg} ({len(data['entries'])} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
