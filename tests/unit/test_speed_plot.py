"""benchmarks/speed_plot.py draws docs/speed.svg from docs/speed.json: valid SVG, one bar per entry,
coloured by whether the entry reaches its goal; a malformed entry is refused by name."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def speed_plot(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("speed_plot", None)
    import speed_plot

    yield speed_plot
    sys.modules.pop("speed_plot", None)


def entry(name: str, ratio: float, goal_ratio: float | None) -> dict:
    return {
        "name": name, "setup": "2 x 1 KiB", "unit": "files/s", "legampi": 100.0 * ratio, "baseline": 100.0,
        "baseline_name": "ideal <script>", "ratio": ratio, "goal": ">= 0.8 x ideal", "goal_ratio": goal_ratio,
        "command": "python benchmarks/x.py --files 2", "date": "2026-12-02",
    }  # fmt: skip


def bars(svg: str) -> list[ET.Element]:
    root = ET.fromstring(svg)  # raises on anything that is not well-formed XML
    assert root.tag == f"{SVG}svg"
    return [r for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"]


def test_one_bar_per_entry_coloured_by_goal(speed_plot: ModuleType, tmp_path: Path) -> None:
    data = {"title": "t", "entries": [entry("a", 0.9, 0.8), entry("b", 0.5, 0.8), entry("c", 2.0, None)]}
    src, out = tmp_path / "speed.json", tmp_path / "speed.svg"
    src.write_text(json.dumps(data), encoding="utf-8")
    assert speed_plot.main(["--json", str(src), "--svg", str(out)]) == 0
    got = bars(out.read_text(encoding="utf-8"))
    assert [(b.get("data-name"), float(b.get("data-value") or 0)) for b in got] == [("a", 0.9), ("b", 0.5), ("c", 2.0)]
    assert [b.get("fill") for b in got] == [speed_plot.MET, speed_plot.MISSED, speed_plot.MET]
    widths = [float(b.get("width") or 0) for b in got]
    assert widths[1] < widths[0] < widths[2]  # drawn to one scale
    assert "ideal &lt;script&gt;" in out.read_text(encoding="utf-8")  # text from the JSON is escaped


def test_the_repository_figures_render(speed_plot: ModuleType) -> None:
    data = json.loads((ROOT / "docs" / "speed.json").read_text(encoding="utf-8"))
    assert len(bars(speed_plot.render(data))) == len(data["entries"]) >= 4


@pytest.mark.parametrize(
    ("change", "drop", "message"),
    [({"ratio": "fast"}, None, r"entry 1 \(a\): ratio must be a number"), ({}, "goal", r"entry 1 \(a\): missing goal")],
)
def test_a_bad_entry_is_refused_by_name(
    speed_plot: ModuleType, tmp_path: Path, change: dict, drop: str | None, message: str
) -> None:
    e = entry("a", 1.0, 0.8)
    e.update(change)
    if drop:
        del e[drop]
    with pytest.raises(ValueError, match=message):
        speed_plot.render({"entries": [e]})
    src = tmp_path / "bad.json"
    src.write_text(json.dumps({"entries": [e]}), encoding="utf-8")
    assert speed_plot.main(["--json", str(src), "--svg", str(tmp_path / "x.svg")]) == 1
    assert not (tmp_path / "x.svg").exists()
