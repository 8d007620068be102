"""docs/operations.md covers every failure kind and exit status, and the README links it."""

from __future__ import annotations

import re
from pathlib import Path

from legampi.formats.base import ERROR_KINDS

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")


def _section(title: str) -> str:
    start = DOC.index(f"\n## {title}\n")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end != -1 else None]


def test_every_failure_kind_has_a_row_with_a_command() -> None:
    rows = {
        m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| .*? \| (.*) \|$", _section("Failure kinds"), re.M)
    }
    assert set(rows) == set(ERROR_KINDS)
    for kind, action in rows.items():
        assert "`" in action or "re-transfer" in action, f"{kind}: no command that moves it on"


def test_every_exit_status_has_a_row() -> None:
    section = _section("Exit statuses")
    statuses = re.findall(r"^\| (\d+|other[^|]*) \|", section, re.M)
    assert statuses[:7] == ["0", "1", "2", "3", "4", "5", "130"] and statuses[7].startswith("other")


def test_runbook_sections_and_readme_link() -> None:
    for title in (
        "Periodic jobs",
        "How recover decides",
        "Rotating the archive key",
        "Backing up the tracking database",
    ):
        assert f"\n## {title}\n" in DOC
    assert "sqlite3" in DOC and ".backup" in DOC and "pg_dump" in DOC
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/operations.md)" in readme
